/**
 * A kernel file named by `backend.kernel` (a path relative to env.yaml): what it is, for which
 * architecture, and which version it says it is. Loading env.yaml checks the format and architecture
 * from the first bytes (so a wrong file is a file:line error, not a guest that never boots); the plan
 * reads the whole file once for its content digest and its version banner.
 *
 * Accepted: x86_64 a bzImage ("HdrS" boot header) or an uncompressed vmlinux (ELF, EM_X86_64);
 * aarch64 an Image ("ARM\x64" header) or the same gzip-compressed (Debian's vmlinuz).
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { constants, gunzipSync } from 'node:zlib';
import type { Arch } from './types.js';

export type KernelFormat = 'bzImage' | 'elf' | 'Image' | 'Image.gz';

export interface KernelFileInfo {
  format: KernelFormat;
  arch: Arch;
}

const HEAD = 64 * 1024;
const EM_X86_64 = 62;
const EM_AARCH64 = 183;

function readHead(path: string): Buffer {
  const fd = openSync(path, 'r');
  try {
    const head = Buffer.alloc(HEAD);
    return head.subarray(0, readSync(fd, head, 0, HEAD, 0));
  } finally {
    closeSync(fd);
  }
}

/** What the bytes say, or a sentence for the user saying why it is not a bootable kernel. */
export function identifyKernel(head: Buffer): KernelFileInfo | string {
  if (head.length >= 20 && head.readUInt32BE(0) === 0x7f454c46) {
    const machine = head.readUInt16LE(18);
    if (machine === EM_X86_64) return { format: 'elf', arch: 'x86_64' };
    // qemu loads an arm64 ELF as a bare-metal program, without the Linux boot protocol (no device tree).
    if (machine === EM_AARCH64) return 'an arm64 vmlinux (ELF); qemu boots arm64 Linux from the Image (arch/arm64/boot/Image), not vmlinux';
    return `an ELF file for machine ${machine}, neither x86_64 (${EM_X86_64}) nor aarch64 (${EM_AARCH64})`;
  }
  if (head.length >= 0x206 && head.toString('latin1', 0x202, 0x206) === 'HdrS') return { format: 'bzImage', arch: 'x86_64' };
  if (head.length >= 0x40 && head.toString('latin1', 0x38, 0x3c) === 'ARM\x64') return { format: 'Image', arch: 'aarch64' };
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) {
    let inner: Buffer;
    try {
      // Only the start is needed: a truncated stream decompresses as far as it goes.
      inner = gunzipSync(head, { finishFlush: constants.Z_SYNC_FLUSH });
    } catch {
      return 'a gzip file that does not decompress';
    }
    const found = identifyKernel(inner);
    if (typeof found !== 'string' && found.format === 'Image') return { format: 'Image.gz', arch: 'aarch64' };
    return 'a gzip file without an arm64 kernel Image inside';
  }
  return 'not a kernel envy can boot (x86_64: a bzImage or vmlinux; aarch64: an Image or Image.gz)';
}

/** Read the start of `path` and identify it; throws the fs error when it cannot be read. */
export function inspectKernelFile(path: string): KernelFileInfo | string {
  return identifyKernel(readHead(path));
}

const BANNER = Buffer.from('Linux version ');

/**
 * The kernel's release (`uname -r`) as the file states it: a bzImage's boot header points at its
 * version string; an uncompressed kernel carries the `Linux version X ...` banner; a gzip'd Image is
 * decompressed to find it. Undefined when none is found.
 */
export function kernelRelease(bytes: Buffer, format: KernelFormat): string | undefined {
  if (format === 'bzImage' && bytes.length > 0x210) {
    const at = bytes.readUInt16LE(0x20e) + 0x200;
    const end = bytes.indexOf(0, at);
    const text = bytes.toString('latin1', at, end < 0 ? at + 256 : end);
    return /^(\S+)/.exec(text)?.[1];
  }
  const plain = format === 'Image.gz' ? gunzipSync(bytes) : bytes;
  // The banner may appear first inside a format string (`Linux version %s`): take one with a release.
  for (let at = plain.indexOf(BANNER); at >= 0; at = plain.indexOf(BANNER, at + 1)) {
    const release = /^([0-9][^\s\0%]*)/.exec(plain.toString('latin1', at + BANNER.length, at + BANNER.length + 128))?.[1];
    if (release) return release;
  }
  return undefined;
}
