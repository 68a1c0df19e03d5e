/** argv for dist/envy-ns, built from the Runtime's typed config. Pure, so it is unit-testable. */
import { EnvyError } from '../../errors.js';
import type { EnvironmentConfig, Identity, ProcessSpec } from '../types.js';

// overlayfs mount data uses ':' and ',' as separators, and the helper's --bind uses ':'.
const UNSAFE_PATH = /[:,\\\n]/;

function checkPath(path: string, what: string): string {
  if (!path.startsWith('/')) throw new EnvyError('RUNTIME', `${what} must be an absolute path: ${path}`);
  if (UNSAFE_PATH.test(path)) {
    throw new EnvyError('RUNTIME', `${what} contains ':', ',', '\\' or a newline, which overlayfs and bind mounts cannot take: ${path}`, {
      hint: 'move or rename the directory',
    });
  }
  return path;
}

/** The environment half: rootfs, mounts, hostname, network, keep-id map. */
export function environmentArgs(config: EnvironmentConfig, user: Identity, options: { identityFiles?: boolean } = {}): string[] {
  const args: string[] = [];
  if (config.rootfs.layers.length === 0) throw new EnvyError('RUNTIME', `environment ${config.id} has no layers`);
  for (const layer of config.rootfs.layers) args.push('--layer', checkPath(layer, 'layer dir'));
  if ((config.rootfs.upper === undefined) !== (config.rootfs.work === undefined)) {
    throw new EnvyError('INTERNAL', `environment ${config.id}: rootfs.upper and rootfs.work go together`);
  }
  if (config.rootfs.upper !== undefined && config.rootfs.work !== undefined) {
    args.push('--upper', checkPath(config.rootfs.upper, 'upper dir'), '--work', checkPath(config.rootfs.work, 'work dir'));
  }
  args.push('--hostname', config.hostname, '--net', config.network);
  for (const mount of config.mounts) {
    const target = checkPath(mount.target, 'mount target');
    if (mount.type === 'bind') {
      if (mount.source === undefined) throw new EnvyError('INTERNAL', `bind mount on ${target} has no source`);
      args.push('--bind', `${checkPath(mount.source, 'mount source')}:${target}${mount.readonly ? ':ro' : ''}`);
    } else {
      args.push('--tmpfs', mount.size !== undefined ? `${target}:${mount.size}` : target);
    }
  }
  args.push('--keep-id', `${user.uid}:${user.gid}`);
  // A generated line is bound over /etc/passwd or /etc/group, and a bound file cannot be replaced:
  // groupadd and adduser (package maintainer scripts run as root) fail on it. Root needs no name.
  if (options.identityFiles !== false) {
    args.push('--passwd', `${user.name}:x:${user.uid}:${user.gid}:${user.name}:${user.home}:/bin/sh`, '--group', `${user.name}:x:${user.gid}:`);
  }
  args.push('--mkhome', user.home);
  if (config.binfmt !== undefined) args.push('--binfmt', config.binfmt);
  return args;
}

/** The process half: identity, cwd, environment (exactly these variables), tty, then the command. */
export function processArgs(spec: ProcessSpec, user: Identity): string[] {
  if (spec.argv.length === 0) throw new EnvyError('INTERNAL', 'no command to run');
  const identity = spec.root ? { uid: 0, gid: 0 } : (spec.identity ?? user);
  const args = ['--uid', String(identity.uid), '--gid', String(identity.gid), '--cwd', spec.cwd];
  for (const [key, value] of Object.entries(spec.env)) {
    if (key.includes('=') || key.length === 0) throw new EnvyError('RUNTIME', `invalid environment variable name: ${JSON.stringify(key)}`);
    args.push('--env', `${key}=${value}`);
  }
  if (spec.tty) args.push('--tty');
  args.push('--', ...spec.argv);
  return args;
}
