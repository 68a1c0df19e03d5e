/**
 * An image made bootable, cached by image key under `stateDir()/vm/images/<key>/`:
 *   rootfs.raw      ext4 of the flattened layers (the read-only backing file of every env's disk)
 *   kernel          what qemu boots: x86_64's vmlinux pulled out of vmlinuz (PVH entry, no
 *                   in-guest decompression), arm64's uncompressed Image
 *   modules/        the initramfs's modules, NN- prefixed in load order
 *   vm.json         kernel version, arch, sizes; written last, so its presence means complete
 * The initramfs is not cached here: it is packed per boot (milliseconds) from these modules and
 * the current init and agent binaries, so a new envy needs no new disk.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { vmDiskInUserNamespace, removeInUserNamespace } from '../../build/userns.js';
import type { Arch } from '../../config/types.js';
import { EnvyError } from '../../errors.js';
import { run } from '../../exec.js';
import type { ImageRecord, LayerStore } from '../../image/store.js';
import { writeFileAtomic } from '../../state/atomic.js';
import { acquireLock } from '../../state/lock.js';
import { stateDir } from '../../state/paths.js';
import type { Identity } from '../types.js';
import { xzOffset } from './kernel.js';
import { requireProgram } from './tools.js';

export interface VmImage {
  dir: string;
  key: string;
  arch: Arch;
  kernelVersion: string;
  rootfs: string;
  kernel: string;
  /** Module files in load order. */
  modules: string[];
  diskSize: number;
}

interface VmImageMeta {
  key: string;
  arch: Arch;
  kernelVersion: string;
  modules: string[];
  diskSize: number;
}

export function vmImagesDir(): string {
  return join(stateDir(), 'vm', 'images');
}

function fromMeta(dir: string, meta: VmImageMeta): VmImage {
  return {
    dir,
    key: meta.key,
    arch: meta.arch,
    kernelVersion: meta.kernelVersion,
    rootfs: join(dir, 'rootfs.raw'),
    kernel: join(dir, 'kernel'),
    modules: meta.modules.map((name) => join(dir, 'modules', name)),
    diskSize: meta.diskSize,
  };
}

export function cachedVmImage(key: string): VmImage | undefined {
  const dir = join(vmImagesDir(), key);
  try {
    return fromMeta(dir, JSON.parse(readFileSync(join(dir, 'vm.json'), 'utf8')) as VmImageMeta);
  } catch {
    return undefined;
  }
}

/** The uncompressed kernel qemu boots fastest: vmlinux from x86's bzImage, Image from arm64's gzip. */
async function uncompressKernel(vmlinuz: string, out: string, arch: Arch): Promise<void> {
  const head = readFileSync(vmlinuz).subarray(0, 4);
  if (head.readUInt32BE(0) === 0x7f454c46) {
    // Already an uncompressed ELF (a vmlinux from the project): booted as it is.
    renameSync(vmlinuz, out);
    return;
  }
  if (arch === 'aarch64' && head[0] === 0x1f && head[1] === 0x8b) {
    await run('sh', ['-c', 'gzip -dc < "$1" > "$2"', 'sh', vmlinuz, out], { errorCode: 'RUNTIME', hint: 'gzip could not unpack the arm64 kernel' });
    return;
  }
  const offset = arch === 'x86_64' ? xzOffset(vmlinuz) : undefined;
  if (offset === undefined) {
    // Not the layout we know (another compressor, or already plain): boot it as it is.
    renameSync(vmlinuz, out);
    return;
  }
  // --single-stream: the bzImage carries data after the xz stream, which is not part of it.
  await run('sh', ['-c', 'tail -c +"$1" < "$2" | "$3" -dc --single-stream > "$4"', 'sh', String(offset + 1), vmlinuz, requireProgram('xz'), out], {
    errorCode: 'RUNTIME',
    hint: 'xz could not unpack the kernel; install xz-utils',
  });
}

/** The bootable form of `image`, built on first use (minutes for a large image, then cached). */
export async function prepareVmImage(
  image: ImageRecord,
  store: LayerStore,
  identity: Identity,
  arch: Arch,
  onMessage: (text: string) => void = () => undefined,
): Promise<VmImage> {
  const cached = cachedVmImage(image.key);
  if (cached) return cached;
  mkdirSync(vmImagesDir(), { recursive: true });
  const lock = await acquireLock(join(vmImagesDir(), `${image.key}.lock`), { purpose: `preparing VM image ${image.key.slice(0, 12)}`, timeoutMs: 30 * 60_000 });
  const tmp = join(vmImagesDir(), `.tmp-${image.key}-${process.pid}`);
  try {
    const again = cachedVmImage(image.key);
    if (again) return again;
    rmSync(tmp, { recursive: true, force: true });
    onMessage(`preparing the VM disk of image ${image.key.slice(0, 12)} (ext4 from ${image.layers.length} layers; once per image)`);
    const lowers = image.layers.map((layer) => store.layerRoot(layer.diffId)).reverse();
    const started = Date.now();
    const disk = await vmDiskInUserNamespace(identity, tmp, lowers);
    await uncompressKernel(join(tmp, 'vmlinuz'), join(tmp, 'kernel'), arch);
    rmSync(join(tmp, 'vmlinuz'), { force: true });
    const meta: VmImageMeta = { key: image.key, arch, kernelVersion: disk.kernelVersion, modules: disk.modules, diskSize: disk.diskSize };
    writeFileAtomic(join(tmp, 'vm.json'), `${JSON.stringify(meta, null, 2)}\n`);
    const dir = join(vmImagesDir(), image.key);
    rmSync(dir, { recursive: true, force: true });
    renameSync(tmp, dir);
    onMessage(`VM disk ready in ${((Date.now() - started) / 1000).toFixed(1)} s (kernel ${disk.kernelVersion}, ${(disk.used / 1024 / 1024).toFixed(0)} MiB of files)`);
    return fromMeta(dir, meta);
  } catch (error) {
    // The worker hands everything to the user even on failure; a half-made tree may still hold
    // namespace-owned leftovers, which only the namespace can remove.
    if (existsSync(tmp)) await removeInUserNamespace(identity, [tmp]).catch(() => rmSync(tmp, { recursive: true, force: true }));
    if (error instanceof EnvyError) throw error;
    throw new EnvyError('RUNTIME', `cannot prepare the VM image: ${(error as Error).message}`, { cause: error });
  } finally {
    lock.release();
  }
}

/** Module files of a prepared image, in load order (the NN- prefix is the order). */
export function listModules(image: VmImage): string[] {
  return readdirSync(join(image.dir, 'modules')).sort().map((name) => join(image.dir, 'modules', name));
}

/**
 * Remove bootable images whose store image is gone and that no environment's disk is backed by
 * (a qcow2 overlay is useless without its backing file). Everything here belongs to the user.
 */
export function gcVmImages(isImageKept: (key: string) => boolean, backingKeys: Set<string>): { removed: string[]; bytesFreed: number } {
  const removed: string[] = [];
  let bytesFreed = 0;
  let names: string[];
  try {
    names = readdirSync(vmImagesDir());
  } catch {
    return { removed, bytesFreed };
  }
  for (const name of names) {
    if (name.endsWith('.lock')) continue;
    const temp = name.startsWith('.tmp-');
    const key = temp ? name.slice(5).replace(/-\d+$/, '') : name;
    if (!temp && (isImageKept(key) || backingKeys.has(key))) continue;
    if (temp && existsSync(join(vmImagesDir(), `${key}.lock`))) continue;
    const dir = join(vmImagesDir(), name);
    for (const file of readdirSync(dir, { recursive: true }) as string[]) {
      try {
        bytesFreed += statSync(join(dir, file)).blocks * 512;
      } catch {
        // raced away
      }
    }
    rmSync(dir, { recursive: true, force: true });
    removed.push(key);
  }
  return { removed, bytesFreed };
}
