/**
 * How host directories reach a VM beyond the copy made at boot (MountRequest.vm):
 *
 * - `sync`: the workspace sync process (src/env/workspace-sync.ts) keeps the guest's copy live over a
 *   second virtio-serial port, `envy-sync`, served by a second agent running as the env user
 *   (guest-sync.ts). The runtime only makes the mount point and hands it to that user.
 * - `9p`: a virtio-9p share, mounted at boot. Every access goes to the host (no cache), so a host
 *   edit is visible in the guest at once; the price is a round trip per file operation.
 *
 * Why `security_model=none` for 9p: qemu runs as the user, so `passthrough` (chown to the guest's
 * ids) fails for anything but the user's own uid, and `mapped-xattr` would store the guest's owners
 * and modes in user.virtfs.* xattrs, create files 0600 on the host and need xattr support on the
 * host's filesystem (tmpfs before Linux 6.6 has none). With `none` the guest sees the host's own
 * owners and modes, and files made in the guest belong to the host user with the modes they were
 * given; a chown in the guest is ignored. The env user's uid is the host user's (one uid map
 * everywhere), so the project's files are the env user's in the guest as on the host.
 */
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { EnvironmentConfig } from '../types.js';
import type { VmImage } from './image.js';
import { moduleLoadOrder } from './kernel.js';

export interface NinepShare {
  /** The 9p mount tag (what the guest mounts). */
  tag: string;
  /** Host directory. */
  path: string;
  /** Guest directory. */
  target: string;
  readonly: boolean;
}

/** The modules a 9p share needs in the guest (their dependencies, netfs among them, come from .modinfo). */
export const NINEP_MODULES = ['9pnet_virtio', '9p'];

/** 9p's largest message for virtio in Linux 6.1 is 512 KiB; bigger messages mean fewer round trips for large reads. */
const NINEP_MSIZE = 512 * 1024;

export function ninepShares(config: EnvironmentConfig): NinepShare[] {
  return config.mounts
    .filter((m) => m.type === 'bind' && m.vm === '9p' && m.source)
    .map((m, index) => ({ tag: `envy.fs${index}`, path: m.source!, target: m.target, readonly: m.readonly ?? false }));
}

/** qemu arguments for the shares: a `local` fsdev each, on a virtio-9p device. */
export function ninepQemuArgs(shares: NinepShare[]): string[] {
  return shares.flatMap((share, index) => [
    '-fsdev',
    `local,id=fs${index},path=${share.path.replace(/,/g, ',,')},security_model=none${share.readonly ? ',readonly=on' : ''}`,
    '-device',
    `virtio-9p-pci,fsdev=fs${index},mount_tag=${share.tag}`,
  ]);
}

function moduleNameOf(file: string): string {
  return basename(file).replace(/^\d+-/, '').replace(/\.ko$/, '').replace(/-/g, '_');
}

/**
 * Module files (host paths) the guest needs for the shares beyond those the image's initramfs loads
 * anyway, in load order. They come from the image's own /lib/modules (the kernel step's layer), so
 * images prepared before 9p existed need no new disk. `layerRoots`: the image's layers, lowest first.
 */
export function ninepModules(config: EnvironmentConfig, image: VmImage, layerRoots: string[]): string[] {
  if (ninepShares(config).length === 0) return [];
  const modulesDir = [...layerRoots]
    .reverse()
    .flatMap((root) => [join(root, 'usr/lib/modules', image.kernelVersion), join(root, 'lib/modules', image.kernelVersion)])
    .find((dir) => existsSync(join(dir, 'kernel')));
  if (!modulesDir) return []; // a kernel with 9p built in has nothing to load (moduleLoadOrder says so otherwise)
  const loaded = new Set(image.modules.map(moduleNameOf));
  return moduleLoadOrder({ version: image.kernelVersion, vmlinuz: '', modulesDir }, NINEP_MODULES).filter((file) => !loaded.has(moduleNameOf(file)));
}

function quote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

/**
 * Shell lines (run as root in the guest at boot) for the mount points of `sync` and `9p` mounts:
 * a synced directory is made and given to the env user (the sync agent runs as that user); a 9p
 * share is mounted, without a cache, so host edits are seen at once.
 */
export function shareSetupLines(config: EnvironmentConfig): string[] {
  const lines: string[] = [];
  const user = config.user;
  for (const mount of config.mounts) {
    if (mount.vm === 'sync') {
      lines.push(`mkdir -p ${quote(mount.target)}${user ? ` && chown ${user.uid}:${user.gid} ${quote(mount.target)}` : ''}`);
    }
  }
  for (const share of ninepShares(config)) {
    const options = `trans=virtio,version=9p2000.L,msize=${NINEP_MSIZE},cache=none${share.readonly ? ',ro' : ''}`;
    // A failed mount fails the boot: an environment whose sources are silently missing is worse.
    lines.push(`mkdir -p ${quote(share.target)} && mount -t 9p -o ${options} ${share.tag} ${quote(share.target)} || { echo "envy: cannot mount the 9p share ${share.tag} at ${share.target}" >&2; exit 1; }`);
  }
  return lines;
}
