import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { kernelCommandLine, qemuArgs } from '../../../src/runtime/vm/qemu.js';
import { bootStateKey, bootStateSupported, incomingArgs } from '../../../src/runtime/vm/snapshot.js';

const dir = mkdtempSync(join(tmpdir(), 'envy-snapshot-unit-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const kernel = join(dir, 'kernel');
const qemu = join(dir, 'qemu');
writeFileSync(kernel, 'kernel');
writeFileSync(qemu, 'qemu');

const plan = (env: string, overrides: Partial<Parameters<typeof qemuArgs>[0]> = {}): Parameters<typeof qemuArgs>[0] => ({
  arch: 'x86_64',
  accel: 'tcg',
  kernel,
  initrd: `/envs/${env}/run/initramfs.cpio`,
  disk: `/envs/${env}/vm/disk.qcow2`,
  memory: 1024 ** 3,
  cpus: 2,
  hostname: env,
  agentSockets: [`/envs/${env}/run/agent.sock`, `/envs/${env}/run/agent-1.sock`],
  qmpSocket: `/envs/${env}/run/qmp.sock`,
  serialLog: `/envs/${env}/logs/vm-console.log`,
  pidFile: `/envs/${env}/run/qemu.pid`,
  ports: env === 'a' ? [{ container: 80, host: 8080, protocol: 'tcp' }] : [],
  network: true,
  syncSocket: `/envs/${env}/run/sync.sock`,
  bootSocket: `/envs/${env}/run/boot.sock`,
  ...overrides,
});
const parts = { qemu, initramfs: Buffer.from('cpio'), diskSize: 4 * 1024 ** 3 };

describe('saved boot state key', () => {
  test("per-environment paths, hostname and forwarded ports do not change it; what the guest saw does", () => {
    const a = bootStateKey(plan('a'), parts);
    expect(bootStateKey(plan('b'), parts)).toBe(a);
    expect(bootStateKey(plan('a', { memory: 2 * 1024 ** 3 }), parts)).not.toBe(a);
    expect(bootStateKey(plan('a', { cpus: 1 }), parts)).not.toBe(a);
    expect(bootStateKey(plan('a', { network: false }), parts)).not.toBe(a);
    expect(bootStateKey(plan('a', { agentSockets: ['/x.sock'] }), parts)).not.toBe(a);
    expect(bootStateKey(plan('a', { accel: 'kvm' }), parts)).not.toBe(a);
    expect(bootStateKey(plan('a'), { ...parts, initramfs: Buffer.from('other cpio') })).not.toBe(a);
    expect(bootStateKey(plan('a'), { ...parts, diskSize: 8 * 1024 ** 3 })).not.toBe(a);
    // A replaced kernel file (same path) is another kernel.
    rmSync(kernel);
    writeFileSync(kernel, 'another kernel');
    expect(bootStateKey(plan('a'), parts)).not.toBe(a);
  });

  test('with the gate, the hostname leaves the kernel command line (it comes through the gate)', () => {
    expect(kernelCommandLine(plan('a'))).not.toContain('ENVY_HOSTNAME');
    expect(kernelCommandLine({ arch: 'x86_64', hostname: 'a' })).toContain('ENVY_HOSTNAME=a');
    expect(qemuArgs(plan('a'))).toContain('virtserialport,chardev=boot0,name=envy-boot');
    expect(incomingArgs("/s/it's.vmstate")).toEqual(['-incoming', `exec:cat '/s/it'\\''s.vmstate'`]);
  });

  test('not for arm64, 9p shares or ENVY_VM_SNAPSHOT=0', () => {
    expect(bootStateSupported({ arch: 'x86_64' }, {}).ok).toBe(true);
    expect(bootStateSupported({ arch: 'aarch64' }, {}).ok).toBe(false);
    expect(bootStateSupported({ arch: 'x86_64', shares: [{ tag: 't', path: '/p', target: '/w', readonly: false }] }, {}).ok).toBe(false);
    expect(bootStateSupported({ arch: 'x86_64' }, { ENVY_VM_SNAPSHOT: '0' }).ok).toBe(false);
  });
});
