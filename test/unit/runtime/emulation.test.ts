import { describe, expect, test } from 'vitest';
import { binfmtArgs, emulationFor, kernelHasUsernsBinfmt } from '../../../src/runtime/emulation.js';
import { environmentArgs } from '../../../src/runtime/namespace/args.js';
import { EnvyError } from '../../../src/errors.js';

const DEBIAN_QEMU = '/usr/libexec/qemu-binfmt/aarch64-binfmt-P';
const HOST_HANDLER = `enabled\ninterpreter ${DEBIAN_QEMU}\nflags: POCF\noffset 0\nmagic 7f454c46\n`;

function thrown(fn: () => unknown): EnvyError {
  try {
    fn();
  } catch (error) {
    if (error instanceof EnvyError) return error;
    throw error;
  }
  throw new Error('expected an EnvyError');
}

describe('emulationFor: how another architecture runs here', () => {
  test('the host architecture needs none', () => {
    expect(emulationFor('x86_64', { host: 'x86_64' })).toBeUndefined();
    expect(emulationFor('aarch64', { host: 'aarch64' })).toBeUndefined();
  });

  test('Linux >= 6.7 with qemu-user-static: registered in the build user namespace, F flag, Debian P wrapper preferred', () => {
    const emulation = emulationFor('aarch64', { host: 'x86_64', kernelRelease: '6.18.44-fc', exists: (p) => p === DEBIAN_QEMU || p === '/usr/bin/qemu-aarch64-static', read: () => undefined });
    expect(emulation).toMatchObject({ via: 'userns', interpreter: DEBIAN_QEMU });
    const register = emulation?.via === 'userns' ? emulation.register : '';
    expect(register).toBe(
      ':qemu-aarch64:M::\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:POF',
    );
    // Only the plain static binary: no P (upstream qemu does not read the preserved argv[0] from it).
    const plain = emulationFor('aarch64', { host: 'x86_64', kernelRelease: '6.7.0', exists: (p) => p === '/usr/bin/qemu-aarch64-static' });
    expect(plain?.via === 'userns' && plain.register.endsWith(':/usr/bin/qemu-aarch64-static:OF')).toBe(true);
    expect(binfmtArgs(plain)).toEqual(['--binfmt', plain?.via === 'userns' ? plain.register : '']);
  });

  test('an older kernel uses a host-wide handler with the F flag, and nothing is registered', () => {
    const emulation = emulationFor('aarch64', { host: 'x86_64', kernelRelease: '6.1.0-18-amd64', exists: () => true, read: () => HOST_HANDLER });
    expect(emulation).toEqual({ arch: 'aarch64', via: 'host', interpreter: DEBIAN_QEMU });
    expect(binfmtArgs(emulation)).toEqual([]);
  });

  test('what is missing is said in one line: qemu-user-static, or a kernel >= 6.7 / a host registration', () => {
    const missing = thrown(() => emulationFor('aarch64', { host: 'x86_64', kernelRelease: '6.18.0', exists: () => false, read: () => undefined }));
    expect(missing.message).toMatch(/qemu-aarch64-static is not installed/);
    expect(missing.hint).toMatch(/apt-get install -y qemu-user-static/);
    // A host handler without F would be opened inside the image, which has no qemu: not usable.
    const old = thrown(() => emulationFor('aarch64', { host: 'x86_64', kernelRelease: '5.10.0', exists: () => true, read: () => HOST_HANDLER.replace('POCF', 'POC') }));
    expect(old.message).toMatch(/Linux 5\.10\.0 .*needs 6\.7 or later.*F flag/);
    expect(old.message).not.toContain('\n');
    const disabled = thrown(() => emulationFor('aarch64', { host: 'x86_64', kernelRelease: '5.10.0', exists: () => true, read: () => HOST_HANDLER.replace('enabled', 'disabled') }));
    expect(disabled.code).toBe('HOST');
  });

  test('kernel releases', () => {
    expect(kernelHasUsernsBinfmt('6.6.30')).toBe(false);
    expect(kernelHasUsernsBinfmt('6.7.0-rc1')).toBe(true);
    expect(kernelHasUsernsBinfmt('7.0.1')).toBe(true);
    expect(kernelHasUsernsBinfmt('garbage')).toBe(false);
  });

  test('the namespace helper gets the register line', () => {
    const config = { id: 'b', hostname: 'h', rootfs: { layers: ['/l'] }, mounts: [], network: 'host' as const, resources: {}, binfmt: ':qemu-aarch64:M::x:y:/q:F' };
    const args = environmentArgs(config, { uid: 1000, gid: 1000, name: 'u', home: '/home/u' });
    expect(args.slice(args.indexOf('--binfmt'), args.indexOf('--binfmt') + 2)).toEqual(['--binfmt', ':qemu-aarch64:M::x:y:/q:F']);
    expect(environmentArgs({ ...config, binfmt: undefined }, { uid: 1000, gid: 1000, name: 'u', home: '/home/u' })).not.toContain('--binfmt');
  });
});
