import { describe, expect, test } from 'vitest';
import { qemuArgs } from '../../../src/runtime/vm/qemu.js';
import { ninepShares, shareSetupLines } from '../../../src/runtime/vm/shares.js';
import type { EnvironmentConfig } from '../../../src/runtime/types.js';

const config: EnvironmentConfig = {
  id: 'e',
  hostname: 'e',
  rootfs: { layers: [] },
  mounts: [
    { type: 'bind', source: '/home/u/proj,x', target: '/workspace', vm: '9p' },
    { type: 'bind', source: '/home/u/other', target: '/src', vm: 'sync' },
    { type: 'bind', source: '/home/u/data', target: '/data' },
  ],
  network: 'none',
  user: { uid: 1000, gid: 1000, name: 'u', home: '/home/u' },
  resources: {},
};

const plan = {
  arch: 'x86_64' as const,
  accel: 'tcg' as const,
  kernel: '/k',
  initrd: '/i',
  disk: '/d.qcow2',
  memory: 1024 ** 3,
  cpus: 2,
  hostname: 'h',
  agentSockets: ['/a.sock'],
  qmpSocket: '/q.sock',
  serialLog: '/console.log',
  pidFile: '/q.pid',
  ports: [],
  network: false,
};

describe('VM shares', () => {
  test('9p: one local fsdev per share, security_model=none (rootless qemu), commas in paths escaped', () => {
    const shares = ninepShares(config);
    expect(shares).toEqual([{ tag: 'envy.fs0', path: '/home/u/proj,x', target: '/workspace', readonly: false }]);
    const args = qemuArgs({ ...plan, shares });
    expect(args).toContain('local,id=fs0,path=/home/u/proj,,x,security_model=none');
    expect(args).toContain('virtio-9p-pci,fsdev=fs0,mount_tag=envy.fs0');
    expect(qemuArgs(plan).join(' ')).not.toContain('9p');
  });

  test('the sync port envy-sync sits beside the agent port when asked for', () => {
    const args = qemuArgs({ ...plan, syncSocket: '/s.sock' });
    expect(args).toContain('socket,id=sync0,path=/s.sock,server=on,wait=off');
    expect(args).toContain('virtserialport,chardev=sync0,name=envy-sync');
    expect(qemuArgs(plan).join(' ')).not.toContain('envy-sync');
  });

  test('boot lines: a synced mount point is the env user\'s, a 9p share is mounted uncached or the boot fails', () => {
    const lines = shareSetupLines(config);
    expect(lines).toContain("mkdir -p '/src' && chown 1000:1000 '/src'");
    const mount = lines.find((l) => l.includes('mount -t 9p'))!;
    expect(mount).toContain('trans=virtio,version=9p2000.L');
    expect(mount).toContain('cache=none');
    expect(mount).toContain("envy.fs0 '/workspace'");
    expect(mount).toContain('exit 1');
    expect(lines.join('\n')).not.toContain('/data');
  });
});
