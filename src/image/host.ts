/**
 * `base: {host: true}`: an instant environment that borrows the host's /usr
 * read-only. The base layer is only the skeleton around it: merged-/usr
 * symlinks, empty top-level dirs and the env's own /etc (the host's passwd,
 * shadow, machine-id and the like stay out). The runtime bind-mounts /usr.
 */
import { accessSync, chmodSync, constants, cpSync, existsSync, lstatSync, mkdirSync, readlinkSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EnvyError } from '../errors.js';
import type { MountRequest } from '../runtime/types.js';

/** /etc entries a userland needs to run the host's programs: the loader, name service, certificates, locale, shells. */
const ETC_ENTRIES = [
  'ld.so.cache',
  'ld.so.conf',
  'ld.so.conf.d',
  'nsswitch.conf',
  'host.conf',
  'gai.conf',
  'protocols',
  'services',
  'ssl',
  'ca-certificates',
  'ca-certificates.conf',
  'alternatives',
  'localtime',
  'timezone',
  'locale.alias',
  'default/locale',
  'profile',
  'profile.d',
  'bash.bashrc',
  'environment',
  'inputrc',
  'shells',
  'login.defs',
  'mime.types',
  'debian_version',
  'os-release',
  'magic',
  'magic.mime',
  'gitconfig',
];

const MERGED_USR_LINKS = ['bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32'];
const EMPTY_DIRS = ['dev', 'proc', 'sys', 'tmp', 'run', 'home', 'root', 'opt', 'mnt', 'media', 'srv', 'var/tmp', 'var/cache', 'var/lib', 'var/log', 'usr', 'etc'];

export interface HostBaseOptions {
  /** The host's root (tests point this at a fixture). */
  hostRoot?: string;
}

/** Write the host base skeleton into `dir` (an empty layer directory). */
export function createHostBaseLayer(dir: string, options: HostBaseOptions = {}): void {
  const hostRoot = options.hostRoot ?? '/';
  for (const name of MERGED_USR_LINKS) {
    const hostPath = join(hostRoot, name);
    if (!existsSync(hostPath) && !isSymlink(hostPath)) continue;
    if (!isSymlink(hostPath)) {
      throw new EnvyError('HOST', `base: host needs a merged-/usr host, but ${hostPath} is a directory`, {
        hint: 'use base: {debian: SUITE} on hosts without merged /usr',
      });
    }
    symlinkSync(readlinkSync(hostPath), join(dir, name));
  }
  for (const sub of EMPTY_DIRS) mkdirSync(join(dir, sub), { recursive: true });
  // Scratch dirs are world-writable and sticky, as on every Linux.
  for (const sub of ['tmp', 'var/tmp']) chmodSync(join(dir, sub), 0o1777);
  for (const entry of ETC_ENTRIES) {
    const source = join(hostRoot, 'etc', entry);
    if (!existsSync(source) && !isSymlink(source)) continue;
    mkdirSync(join(dir, 'etc', entry, '..'), { recursive: true });
    // Symlinks are kept as links (alternatives point into /usr, which the env shares).
    cpSync(source, join(dir, 'etc', entry), { recursive: true, verbatimSymlinks: true, dereference: false, filter: shareable });
  }
  // Accounts are the env's own: root only; the user step adds the env user.
  writeFileSync(join(dir, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n');
  writeFileSync(join(dir, 'etc/group'), 'root:x:0:\nnogroup:x:65534:\n');
  writeFileSync(join(dir, 'etc/shadow'), 'root:*:19000:0:99999:7:::\n', { mode: 0o640 });
}

/** The mounts a host-based environment needs on top of its layers. */
export function hostBaseMounts(hostRoot = '/'): MountRequest[] {
  return [{ type: 'bind', source: join(hostRoot, 'usr'), target: '/usr', readonly: true }];
}

/** Private keys never enter an image, and what the user cannot read was not theirs to share. */
function shareable(source: string): boolean {
  if (/\/ssl\/private(\/|$)/.test(source)) return false;
  if (isSymlink(source)) return true;
  try {
    accessSync(source, constants.R_OK);
    return true;
  } catch {
    return false;
  }
}

function isSymlink(path: string): boolean {
  try {
    return lstatSync(path).isSymbolicLink();
  } catch {
    return false;
  }
}
