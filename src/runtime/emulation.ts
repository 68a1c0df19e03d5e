/**
 * Running another architecture's programs on this host (an arm64 image's build steps on x86_64):
 * qemu-user through binfmt_misc, which envy registers rootlessly in the build's own user namespace.
 *
 * In order of preference:
 * 1. Linux >= 6.7 gives each user namespace that mounts binfmt_misc an instance of its own (and a
 *    process uses the instance of its nearest user namespace that has one): envy-ns `--binfmt` mounts
 *    it and registers qemu-user with the F flag (the interpreter is opened at registration, from the
 *    host, so it runs after the pivot into an image that has no qemu). The host's handlers are neither
 *    seen nor changed.
 * 2. Older kernels: a host-wide registration with the F flag (binfmt-support or systemd-binfmt after
 *    `apt install qemu-user-static`) serves every user namespace without one of its own.
 * 3. Neither: one error naming what is missing.
 */
import { existsSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import type { Arch } from '../config/types.js';
import { hostArch } from '../config/normalize.js';
import { EnvyError } from '../errors.js';

/** How programs of a foreign architecture run here. */
export type Emulation =
  | { arch: Arch; via: 'userns'; interpreter: string; register: string }
  | { arch: Arch; via: 'host'; interpreter: string };

/** qemu's names and ELF magic/mask (qemu's scripts/qemu-binfmt-conf.sh; Debian's /usr/share/binfmts). */
const HANDLERS: Record<Arch, { qemu: string; magic: string; mask: string }> = {
  aarch64: {
    qemu: 'aarch64',
    magic: '\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00',
    mask: '\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff',
  },
  x86_64: {
    qemu: 'x86_64',
    magic: '\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\x3e\\x00',
    mask: '\\xff\\xff\\xff\\xff\\xff\\xfe\\xfe\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff',
  },
};

/** Debian's names for the two architectures (mmdebstrap, apt). */
export function debianArchOf(arch: Arch): string {
  return arch === 'aarch64' ? 'arm64' : 'amd64';
}

/** Whether this kernel gives user namespaces binfmt_misc instances of their own (Linux 6.7). */
export function kernelHasUsernsBinfmt(kernelRelease: string = release()): boolean {
  const m = /^(\d+)\.(\d+)/.exec(kernelRelease);
  if (!m) return false;
  const [major, minor] = [Number(m[1]), Number(m[2])];
  return major > 6 || (major === 6 && minor >= 7);
}

/**
 * The interpreter to register: Debian's `-binfmt-P` name of qemu-user-static makes qemu take the
 * preserved argv[0] (the P flag), so multi-call programs (busybox) see the name they were run by.
 */
function interpreterFor(arch: Arch, exists: (path: string) => boolean): { path: string; flags: string } | undefined {
  const { qemu } = HANDLERS[arch];
  const debian = `/usr/libexec/qemu-binfmt/${qemu}-binfmt-P`;
  if (exists(debian)) return { path: debian, flags: 'POF' };
  const plain = `/usr/bin/qemu-${qemu}-static`;
  if (exists(plain)) return { path: plain, flags: 'OF' };
  return undefined;
}

/** A host-wide handler usable from inside an image: enabled, with the F flag. */
function hostRegistration(arch: Arch, read: (path: string) => string | undefined): string | undefined {
  const text = read(`/proc/sys/fs/binfmt_misc/qemu-${HANDLERS[arch].qemu}`);
  if (!text || !/^enabled$/m.test(text)) return undefined;
  const flags = /^flags: *([A-Z]*)$/m.exec(text)?.[1] ?? '';
  if (!flags.includes('F')) return undefined;
  return /^interpreter (.+)$/m.exec(text)?.[1] ?? 'qemu-user';
}

export interface EmulationProbe {
  host?: Arch;
  kernelRelease?: string;
  exists?: (path: string) => boolean;
  read?: (path: string) => string | undefined;
}

function readOrUndefined(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** How `arch` runs here: undefined when it is the host's own; an EnvyError saying what is missing when it cannot. */
export function emulationFor(arch: Arch, probe: EmulationProbe = {}): Emulation | undefined {
  const host = probe.host ?? hostArch();
  if (arch === host) return undefined;
  const exists = probe.exists ?? existsSync;
  const interpreter = interpreterFor(arch, exists);
  const kernel = probe.kernelRelease ?? release();
  if (interpreter && kernelHasUsernsBinfmt(kernel)) {
    const { qemu, magic, mask } = HANDLERS[arch];
    return { arch, via: 'userns', interpreter: interpreter.path, register: `:qemu-${qemu}:M::${magic}:${mask}:${interpreter.path}:${interpreter.flags}` };
  }
  const registered = hostRegistration(arch, probe.read ?? readOrUndefined);
  if (registered) return { arch, via: 'host', interpreter: registered };
  const what = `building an ${arch} image on this ${host} host runs its programs under qemu-user`;
  if (!interpreter) {
    throw new EnvyError('HOST', `${what}, and qemu-${HANDLERS[arch].qemu}-static is not installed`, { hint: 'sudo apt-get install -y qemu-user-static' });
  }
  throw new EnvyError('HOST', `${what}: Linux ${kernel} cannot register it per user namespace (needs 6.7 or later) and the host has no qemu-${HANDLERS[arch].qemu} binfmt handler with the F flag`, {
    hint: 'sudo apt-get install -y binfmt-support (it registers qemu-user-static host-wide with the F flag), or use a kernel >= 6.7',
  });
}

/** The envy-ns arguments that make `emulation` available in a namespace it creates. */
export function binfmtArgs(emulation: Emulation | undefined): string[] {
  return emulation?.via === 'userns' ? ['--binfmt', emulation.register] : [];
}
