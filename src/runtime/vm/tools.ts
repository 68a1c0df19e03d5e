/**
 * The host programs the VM backend drives, found where Debian puts them: an unprivileged user's
 * PATH on Debian lacks /usr/sbin, where mke2fs lives.
 */
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { EnvyError } from '../../errors.js';

const PACKAGES: Record<string, string> = {
  mke2fs: 'e2fsprogs',
  'qemu-img': 'qemu-utils',
  'qemu-system-x86_64': 'qemu-system-x86',
  'qemu-system-aarch64': 'qemu-system-arm',
  xz: 'xz-utils',
  unshare: 'util-linux',
  mount: 'mount',
  umount: 'mount',
  du: 'coreutils',
};

export function findProgram(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter).filter(Boolean), '/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];
  for (const dir of dirs) {
    const path = join(dir, name);
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {
      // next
    }
  }
  return undefined;
}

export function requireProgram(name: string): string {
  const path = findProgram(name);
  if (path) return path;
  const pkg = PACKAGES[name];
  throw new EnvyError('HOST', `backend: vm needs ${name}, which is not installed`, {
    hint: pkg ? `install it (Debian/Ubuntu: sudo apt-get install -y ${pkg}); envy doctor lists what the VM backend needs` : 'install it; envy doctor lists what the VM backend needs',
  });
}
