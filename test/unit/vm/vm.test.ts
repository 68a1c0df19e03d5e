import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { compilePlan } from '../../../src/plan/compile.js';
import { kernelScript } from '../../../src/plan/kernel.js';
import { lockFromSpec, parseLock, refreshLock, renderLock } from '../../../src/plan/lock.js';
import type { KernelStep } from '../../../src/plan/types.js';
import { cpio } from '../../../src/runtime/vm/initramfs.js';
import { findImageKernel, moduleDepends, moduleLoadOrder, withoutNetModules, xzOffset } from '../../../src/runtime/vm/kernel.js';
import { kernelCommandLine, qemuArgs, QBOOT } from '../../../src/runtime/vm/qemu.js';
import { commandLine } from '../../../src/runtime/vm/shell-channel.js';
import { FIXTURE_PROJECT, HOST_USER, makeSpec } from '../plan/helpers.js';

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

/** A fake module: the .modinfo strings a real .ko carries, NUL-separated. */
function ko(depends: string): Buffer {
  return Buffer.concat([Buffer.from('\x7fELF....'), Buffer.from(`\0license=GPL\0depends=${depends}\0intree=Y\0`)]);
}

function fakeKernelRoot(): string {
  const root = mkdtempSync(join(tmpdir(), 'envy-vm-kernel-'));
  dirs.push(root);
  mkdirSync(join(root, 'boot'));
  writeFileSync(join(root, 'boot/vmlinuz-6.1.0-9-amd64'), 'old');
  writeFileSync(join(root, 'boot/vmlinuz-6.1.0-18-amd64'), Buffer.concat([Buffer.alloc(100, 1), Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), Buffer.alloc(10)]));
  const mods = join(root, 'usr/lib/modules/6.1.0-18-amd64');
  const put = (rel: string, depends: string) => {
    mkdirSync(join(mods, 'kernel', rel, '..'), { recursive: true });
    writeFileSync(join(mods, 'kernel', rel), ko(depends));
  };
  put('drivers/virtio/virtio_ring.ko', '');
  put('drivers/virtio/virtio.ko', 'virtio_ring');
  put('drivers/virtio/virtio_pci.ko', 'virtio_ring,virtio');
  put('drivers/block/virtio_blk.ko', 'virtio,virtio_ring');
  put('drivers/char/virtio_console.ko', 'virtio,virtio_ring');
  put('drivers/net/virtio_net.ko', 'virtio_ring,virtio,net_failover');
  put('drivers/net/net_failover.ko', 'failover');
  put('net/core/failover.ko', '');
  put('crypto/crc32c_generic.ko', '');
  put('fs/ext4/ext4.ko', 'jbd2,mbcache,crc16');
  put('fs/jbd2/jbd2.ko', '');
  put('fs/mbcache.ko', '');
  writeFileSync(join(mods, 'modules.builtin'), 'kernel/lib/crc16.ko\n');
  return root;
}

describe('guest kernel', () => {
  test('the newest kernel in /boot, with its modules under /usr/lib/modules (merged /usr)', () => {
    const kernel = findImageKernel(fakeKernelRoot())!;
    expect(kernel.version).toBe('6.1.0-18-amd64');
    expect(kernel.modulesDir).toMatch(/usr\/lib\/modules\/6.1.0-18-amd64$/);
    expect(xzOffset(kernel.vmlinuz)).toBe(100);
  });

  test('modules load dependencies first, each once; built-in ones are skipped', () => {
    const order = moduleLoadOrder(findImageKernel(fakeKernelRoot())!).map((f) => f.split('/').pop());
    expect(order).toEqual([
      'virtio_ring.ko',
      'virtio.ko',
      'virtio_pci.ko',
      'virtio_blk.ko',
      'virtio_console.ko',
      'failover.ko',
      'net_failover.ko',
      'virtio_net.ko',
      'crc32c_generic.ko',
      'jbd2.ko',
      'mbcache.ko',
      'ext4.ko',
    ]);
    expect(moduleDepends(ko('virtio,virtio_ring'))).toEqual(['virtio', 'virtio_ring']);
    expect(moduleDepends(ko(''))).toEqual([]);
  });

  test('a missing module names itself and who needs it', () => {
    const root = fakeKernelRoot();
    rmSync(join(root, 'usr/lib/modules/6.1.0-18-amd64/kernel/fs/jbd2/jbd2.ko'));
    expect(() => moduleLoadOrder(findImageKernel(root)!)).toThrow(/has no module jbd2 \(needed by ext4\)/);
  });
});

describe('initramfs', () => {
  test('newc entries are 4-byte aligned and end with the trailer', () => {
    const archive = cpio([
      { path: 'init', data: Buffer.from('abc'), mode: 0o755 },
      { path: 'envy', mode: 0o755 },
    ]);
    expect(archive.subarray(0, 6).toString()).toBe('070701');
    const text = archive.toString('latin1');
    expect(text).toContain('init\0');
    expect(text).toContain('TRAILER!!!\0');
    // Mode of the first entry: a regular file, 0755.
    expect(parseInt(text.slice(14, 22), 16)).toBe(0o100755);
    expect(parseInt(text.slice(54, 62), 16)).toBe(3);
    const dataAt = text.indexOf('abc');
    expect(dataAt % 4).toBe(0);
    expect(archive.length % 4).toBe(0);
  });
});

describe('qemu command line', () => {
  const plan = {
    arch: 'x86_64' as const,
    accel: 'tcg' as const,
    kernel: '/k',
    initrd: '/i',
    disk: '/d.qcow2',
    memory: 1024 ** 3,
    cpus: 2,
    hostname: 'my env',
    agentSockets: ['/a.sock', '/a-1.sock'],
    qmpSocket: '/q.sock',
    serialLog: '/console.log',
    pidFile: '/q.pid',
    ports: [{ container: 80, host: 8080, protocol: 'tcp' as const }],
    network: true,
  };

  test('forwards ports on loopback only, sizes the VM, names the agent ports envy.N', () => {
    const args = qemuArgs(plan);
    expect(args.join(' ')).toContain('hostfwd=tcp:127.0.0.1:8080-:80');
    expect(args.join(' ')).not.toMatch(/hostfwd=tcp::|0\.0\.0\.0/);
    expect(args[args.indexOf('-m') + 1]).toBe('1024M');
    expect(args[args.indexOf('-smp') + 1]).toBe('2');
    expect(args).toContain('virtserialport,chardev=agent0,name=envy.0');
    expect(args).toContain('virtserialport,chardev=agent1,name=envy.1');
    expect(args).toContain('socket,id=agent1,path=/a-1.sock,server=on,wait=off');
    expect(args).toContain('-nodefaults');
    expect(args).toContain('-no-reboot');
    expect(qemuArgs({ ...plan, network: false }).join(' ')).not.toContain('netdev');
    // Under TCG an x86-64-v2 CPU, not `max` (slower to boot); KVM passes the host's through.
    expect(args[args.indexOf('-cpu') + 1]).toBe('qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16');
    const kvm = qemuArgs({ ...plan, accel: 'kvm' });
    expect(kvm[kvm.indexOf('-cpu') + 1]).toBe('host');
    // qboot where qemu's data files have it; arm64 keeps its own firmware.
    expect(args.includes('-bios')).toBe(existsSync(QBOOT));
    if (existsSync(QBOOT)) expect(args[args.indexOf('-bios') + 1]).toBe(QBOOT);
    expect(qemuArgs({ ...plan, arch: 'aarch64' })).not.toContain('-bios');
  });

  test('the kernel skips its crypto self-tests and legacy UART probing; arm64 gets no x86-only words', () => {
    expect(kernelCommandLine(plan).split(' ')).toEqual(expect.arrayContaining(['cryptomgr.notests', '8250.nr_uarts=1', 'no_timer_check']));
    expect(kernelCommandLine({ arch: 'aarch64', hostname: 'x' })).not.toMatch(/no_timer_check|8250/);
  });

  test('without a network card the initramfs leaves out virtio_net and what only it needs', () => {
    const files = ['/m/00-virtio_ring.ko', '/m/07-failover.ko', '/m/08-net_failover.ko', '/m/09-virtio_net.ko', '/m/14-ext4.ko'];
    expect(withoutNetModules(files)).toEqual(['/m/00-virtio_ring.ko', '/m/14-ext4.ko']);
  });

  test('arm64 guests get virt + cortex-a57 under TCG and the PL011 console', () => {
    const args = qemuArgs({ ...plan, arch: 'aarch64' });
    expect(args[args.indexOf('-machine') + 1]).toBe('virt,accel=tcg');
    expect(args[args.indexOf('-cpu') + 1]).toBe('cortex-a57');
    expect(kernelCommandLine({ arch: 'aarch64', hostname: 'x' })).toContain('console=ttyAMA0');
    expect(kernelCommandLine(plan)).toContain('ENVY_HOSTNAME=my-env');
    expect(kernelCommandLine(plan)).toContain('panic=-1');
  });
});

describe('kernel plan step', () => {
  test('backend: vm adds a kernel step right after the base; the namespace backend does not', () => {
    const vm = compilePlan(makeSpec({ backend: { type: 'vm', arch: 'x86_64', memory: 1, cpus: 1 }, packages: { apt: ['git'], npm: [], pip: [] } }), FIXTURE_PROJECT, undefined, { hostUser: HOST_USER });
    expect(vm.steps.map((s) => s.kind).slice(0, 3)).toEqual(['base', 'kernel', 'packages']);
    expect((vm.steps[1] as KernelStep).package).toBe('linux-image-amd64');
    const ns = compilePlan(makeSpec(), FIXTURE_PROJECT, undefined, { hostUser: HOST_USER });
    expect(ns.steps.some((s) => s.kind === 'kernel')).toBe(false);
  });

  test('backend.kernel pins a versioned package; nonsense is a config error', () => {
    const pinned = compilePlan(makeSpec({ backend: { type: 'vm', arch: 'aarch64', kernel: '6.1.0-18', memory: 1, cpus: 1 } }), FIXTURE_PROJECT, undefined, { hostUser: HOST_USER });
    expect((pinned.steps[1] as KernelStep).package).toBe('linux-image-6.1.0-18-arm64');
    expect(() => compilePlan(makeSpec({ backend: { type: 'vm', arch: 'x86_64', kernel: 'latest!', memory: 1, cpus: 1 } }), FIXTURE_PROJECT, undefined, { hostUser: HOST_USER })).toThrow(
      /backend.kernel: "latest!" is neither/,
    );
  });

  test('env.lock records what the kernel resolved to, and the pinned plan fetches exactly that', () => {
    const spec = makeSpec({ backend: { type: 'vm', arch: 'x86_64', memory: 1, cpus: 1 } });
    const lock = lockFromSpec(spec);
    expect(lock.kernel).toEqual({ package: 'linux-image-amd64' });
    lock.kernel = { package: 'linux-image-amd64', resolved: 'linux-image-6.1.0-18-amd64', version: '6.1.76-1' };
    const reread = parseLock(renderLock(lock), 'env.lock');
    expect(reread.kernel).toEqual(lock.kernel);
    expect(refreshLock(spec, reread).kernel).toEqual(lock.kernel);
    const plan = compilePlan(spec, FIXTURE_PROJECT, reread, { hostUser: HOST_USER });
    const step = plan.steps[1] as KernelStep;
    expect(step.pinned).toEqual({ package: 'linux-image-6.1.0-18-amd64', version: '6.1.76-1' });
    expect(kernelScript(step)).toContain("real='linux-image-6.1.0-18-amd64' && version='6.1.76-1'");
    expect(step.key).not.toBe(compilePlan(spec, FIXTURE_PROJECT, undefined, { hostUser: HOST_USER }).steps[1]!.key);
  });
});

describe('fallback shell channel', () => {
  test('a process line quotes every word and drops privileges for the env user', () => {
    const line = commandLine({ argv: ['echo', "it's"], env: { A: 'x y', 'BAD NAME': 'z' }, cwd: '/work dir', root: false, identity: { uid: 1000, gid: 1000, name: 'dev', home: '/home/dev' }, tty: false });
    expect(line).toBe("mkdir -p '/work dir' 2>/dev/null; cd '/work dir' && exec env -i 'A=x y' setpriv --reuid=1000 --regid=1000 --init-groups -- 'echo' 'it'\\''s'");
  });
});

describe('VM image gc', () => {
  test('removes disks of images that are gone unless an environment disk is backed by them; leaves in-progress work', async () => {
    const home = mkdtempSync(join(tmpdir(), 'envy-vm-gc-'));
    dirs.push(home);
    const saved = process.env.ENVY_HOME;
    process.env.ENVY_HOME = home;
    try {
      const { gcVmImages, vmImagesDir } = await import('../../../src/runtime/vm/image.js');
      for (const name of ['kept', 'backing', 'gone', `.tmp-busy-${process.pid}`, `.tmp-dead-1`]) {
        mkdirSync(join(vmImagesDir(), name), { recursive: true });
        writeFileSync(join(vmImagesDir(), name, 'rootfs.raw'), Buffer.alloc(8192, 1));
      }
      writeFileSync(join(vmImagesDir(), 'busy.lock'), '');
      const result = gcVmImages((key) => key === 'kept', new Set(['backing']));
      expect(result.removed.sort()).toEqual(['dead', 'gone']);
      expect(result.bytesFreed).toBeGreaterThanOrEqual(2 * 8192);
      expect(readdirSync(vmImagesDir()).sort()).toEqual([`.tmp-busy-${process.pid}`, 'backing', 'busy.lock', 'kept']);
    } finally {
      if (saved === undefined) delete process.env.ENVY_HOME;
      else process.env.ENVY_HOME = saved;
    }
  });
});
