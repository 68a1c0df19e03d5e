/**
 * The guest kernel as the image carries it (the plan's kernel step unpacked Debian's package into
 * /boot and /lib/modules): which version, which modules the initramfs needs and in which order,
 * and the uncompressed vmlinux qemu boots directly.
 *
 * Debian's .deb ships no modules.dep (depmod runs at install time), so the order comes from each
 * module's own `.modinfo` section: its `depends=` field names the modules it needs loaded first.
 */
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { EnvyError } from '../../errors.js';

/**
 * What the initramfs loads: the virtio transport, the root disk, the agent's serial port, the
 * network card for `ports`, ext4. ext4 asks the crypto API for crc32c at mount time, which no
 * `depends=` shows, so crc32c_generic is named here.
 */
export const GUEST_MODULES = ['virtio_pci', 'virtio_blk', 'virtio_console', 'virtio_net', 'crc32c_generic', 'ext4'];

/** The modules only the network card needs (virtio_net and what it alone depends on): left out with `network: none`. */
export const NET_ONLY_MODULES = ['virtio_net', 'net_failover', 'failover'];

/** `files` (in load order, NN-name.ko) without the network card's modules. */
export function withoutNetModules(files: string[]): string[] {
  return files.filter((file) => !NET_ONLY_MODULES.includes(moduleName(basename(file).replace(/^\d+-/, ''))));
}

export interface ImageKernel {
  version: string;
  /** The compressed kernel (/boot/vmlinuz-VERSION). */
  vmlinuz: string;
  /** /lib/modules/VERSION (absent for a kernel with everything built in). */
  modulesDir?: string;
}

/** Compare Debian kernel versions well enough to pick the newest of several: numeric runs as numbers. */
function versionCompare(a: string, b: string): number {
  return a.localeCompare(b, 'en', { numeric: true });
}

/**
 * The kernel of a root filesystem: the one /boot/.envy-kernel names (a kernel file from the project,
 * backend.kernel as a path), else the newest /boot/vmlinuz-*; undefined when there is none.
 */
export function findImageKernel(root: string): ImageKernel | undefined {
  let names: string[];
  try {
    names = readdirSync(join(root, 'boot'));
  } catch {
    return undefined;
  }
  let chosen: string | undefined;
  try {
    chosen = readFileSync(join(root, 'boot/.envy-kernel'), 'utf8').trim();
  } catch {
    // no kernel file step: Debian's package
  }
  const versions = names
    .filter((name) => name.startsWith('vmlinuz-'))
    .map((name) => name.slice('vmlinuz-'.length))
    .sort(versionCompare);
  const version = chosen && versions.includes(chosen) ? chosen : versions.at(-1);
  if (!version) return undefined;
  const modulesDir = [join(root, 'lib/modules', version), join(root, 'usr/lib/modules', version)].find((dir) => existsSync(dir));
  return { version, vmlinuz: join(root, 'boot', `vmlinuz-${version}`), ...(modulesDir ? { modulesDir } : {}) };
}

/** Module names treat `-` and `_` alike (virtio-rng.ko is the module virtio_rng). */
function moduleName(file: string): string {
  return file.replace(/\.ko(\.xz|\.zst|\.gz)?$/, '').replace(/-/g, '_');
}

function indexModules(dir: string): Map<string, string> {
  const index = new Map<string, string>();
  const walk = (path: string): void => {
    for (const entry of readdirSync(path, { withFileTypes: true })) {
      const full = join(path, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (/\.ko(\.xz|\.zst|\.gz)?$/.test(entry.name)) index.set(moduleName(entry.name), full);
    }
  };
  walk(dir);
  return index;
}

/** `depends=` from a module's .modinfo (NUL-separated key=value strings); uncompressed modules only. */
export function moduleDepends(bytes: Buffer): string[] {
  const marker = Buffer.from('\0depends=');
  const at = bytes.indexOf(marker);
  if (at < 0) return [];
  const start = at + marker.length;
  const end = bytes.indexOf(0, start);
  const value = bytes.toString('latin1', start, end < 0 ? undefined : end);
  return value === '' ? [] : value.split(',').map((name) => name.replace(/-/g, '_'));
}

function builtinModules(dir: string): Set<string> {
  try {
    return new Set(
      readFileSync(join(dir, 'modules.builtin'), 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((line) => moduleName(line.split('/').pop()!)),
    );
  } catch {
    return new Set();
  }
}

/**
 * The module files to load, dependencies first, for `wanted`. Built-in modules are skipped; a
 * module neither present nor built in is an error naming the kernel.
 */
export function moduleLoadOrder(kernel: ImageKernel, wanted: readonly string[] = GUEST_MODULES): string[] {
  if (!kernel.modulesDir) return [];
  const index = indexModules(kernel.modulesDir);
  const builtin = builtinModules(kernel.modulesDir);
  const order: string[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (name: string, from: string | undefined): void => {
    if (state.get(name) === 'done' || builtin.has(name)) return;
    if (state.get(name) === 'visiting') throw new EnvyError('RUNTIME', `kernel ${kernel.version}: modules depend on each other in a cycle through ${name}`);
    const file = index.get(name);
    if (!file) {
      throw new EnvyError('RUNTIME', `kernel ${kernel.version} has no module ${name}${from ? ` (needed by ${from})` : ''} and does not build it in`, {
        hint: 'the VM needs virtio (pci, blk, console, net) and ext4: use a Debian linux-image package or a kernel with them built in',
      });
    }
    state.set(name, 'visiting');
    if (!/\.ko$/.test(file)) throw new EnvyError('RUNTIME', `kernel ${kernel.version}: compressed modules (${file}) are not supported yet`);
    for (const dep of moduleDepends(readFileSync(file))) visit(dep, name);
    state.set(name, 'done');
    order.push(file);
  };
  for (const name of wanted) visit(name, undefined);
  return order;
}

const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);

/**
 * Where the xz stream inside a bzImage starts (x86's vmlinuz is a decompressor stub plus the
 * compressed ELF). Booting that ELF (PVH entry) skips 4–5 s of in-guest decompression under TCG.
 */
export function xzOffset(vmlinuz: string): number | undefined {
  const size = statSync(vmlinuz).size;
  const fd = openSync(vmlinuz, 'r');
  try {
    const bytes = Buffer.alloc(Math.min(size, 1 << 20));
    readSync(fd, bytes, 0, bytes.length, 0);
    const at = bytes.indexOf(XZ_MAGIC);
    return at < 0 ? undefined : at;
  } finally {
    closeSync(fd);
  }
}
