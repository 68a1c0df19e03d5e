/**
 * Reading env.yaml defensively: it may be huge, a FIFO, a directory, binary or
 * unreadable, and each of those must end in a clear error rather than a hang,
 * a crash or an attempt to parse megabytes of garbage.
 */
import { createHash } from 'node:crypto';
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { EnvyError } from '../errors.js';

/** Far beyond any real env.yaml; anything bigger is a mistake (a wrong file), not a config. */
export const MAX_SPEC_BYTES = 1024 * 1024;

export interface SpecText {
  text: string;
  /** sha256 (hex) of the file's bytes as read. */
  digest: string;
}

/** A problem found in the raw bytes, located by 1-based line and column. */
export interface TextProblem {
  line: number;
  col: number;
  message: string;
  hint: string;
}

export class SpecTextError extends Error {
  constructor(readonly problem: TextProblem) {
    super(problem.message);
  }
}

export function readSpecText(file: string, label: string): SpecText {
  let fd: number;
  try {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
    fd = openSync(file, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (error) {
    throw readError(error, label);
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) {
      throw new EnvyError('CONFIG_READ', `${label}: not a regular file`, { hint: 'point envy at an env.yaml file (-f FILE)' });
    }
    // Checked before reading a single byte, so a 50 MB file costs one fstat.
    if (stat.size > MAX_SPEC_BYTES) {
      throw new EnvyError('CONFIG_READ', `${label}: file is ${formatBytes(stat.size)}; env.yaml may be at most 1 MiB`, {
        hint: 'is this the right file? env.yaml describes an environment in a few dozen lines',
      });
    }
    const bytes = readAtMost(fd, MAX_SPEC_BYTES + 1);
    if (bytes.length > MAX_SPEC_BYTES) {
      throw new EnvyError('CONFIG_READ', `${label}: file grew beyond 1 MiB while being read`, { hint: 'is something writing to it?' });
    }
    const digest = createHash('sha256').update(bytes).digest('hex');
    return { text: decode(bytes), digest };
  } finally {
    closeSync(fd);
  }
}

function readAtMost(fd: number, limit: number): Buffer {
  const buffer = Buffer.alloc(limit);
  let length = 0;
  while (length < limit) {
    let n: number;
    try {
      n = readSync(fd, buffer, length, limit - length, null);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EAGAIN') continue;
      throw error;
    }
    if (n === 0) break;
    length += n;
  }
  return buffer.subarray(0, length);
}

function decode(bytes: Buffer): string {
  if (bytes[0] === 0xfe || bytes[0] === 0xff || (bytes[0] === 0 && bytes[1] === 0)) {
    throw problemAt(bytes, 0, 'file is not UTF-8 (it looks like UTF-16 or UTF-32)', 'save env.yaml as UTF-8');
  }
  const nul = bytes.indexOf(0);
  if (nul !== -1) {
    throw problemAt(bytes, nul, 'file contains a NUL byte; it looks binary, not YAML', 'is this the right file? env.yaml is a UTF-8 text file');
  }
  const bad = firstInvalidUtf8(bytes);
  if (bad !== -1) {
    throw problemAt(bytes, bad, `invalid UTF-8 (byte 0x${bytes[bad]!.toString(16).padStart(2, '0')})`, 'save env.yaml as UTF-8');
  }
  const text = bytes.toString('utf8');
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

function problemAt(bytes: Buffer, offset: number, message: string, hint: string): SpecTextError {
  const before = bytes.subarray(0, offset).toString('utf8').split('\n');
  return new SpecTextError({ line: before.length, col: before[before.length - 1]!.length + 1, message, hint });
}

/** Byte offset of the first invalid UTF-8 sequence (overlong, surrogate, truncated, out of range), or -1. */
export function firstInvalidUtf8(bytes: Uint8Array): number {
  let i = 0;
  while (i < bytes.length) {
    const b = bytes[i]!;
    let extra: number;
    let min: number;
    if (b < 0x80) {
      i++;
      continue;
    } else if (b >= 0xc2 && b <= 0xdf) [extra, min] = [1, 0x80];
    else if (b >= 0xe0 && b <= 0xef) [extra, min] = [2, 0x800];
    else if (b >= 0xf0 && b <= 0xf4) [extra, min] = [3, 0x10000];
    else return i;
    if (i + extra >= bytes.length) return i;
    let codePoint = b & (0x3f >> extra);
    for (let k = 1; k <= extra; k++) {
      const c = bytes[i + k]!;
      if ((c & 0xc0) !== 0x80) return i;
      codePoint = (codePoint << 6) | (c & 0x3f);
    }
    if (codePoint < min || codePoint > 0x10ffff || (codePoint >= 0xd800 && codePoint <= 0xdfff)) return i;
    i += extra + 1;
  }
  return -1;
}

function readError(error: unknown, label: string): EnvyError {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') {
    return new EnvyError('CONFIG_NOT_FOUND', `${label}: no such file`, { hint: 'create one with `envy init`, or name another with -f FILE' });
  }
  if (code === 'EACCES' || code === 'EPERM') {
    return new EnvyError('CONFIG_READ', `${label}: permission denied`, { hint: `make it readable: chmod u+r ${label}` });
  }
  if (code === 'EISDIR') {
    return new EnvyError('CONFIG_READ', `${label}: is a directory`, { hint: 'point envy at the env.yaml file inside it' });
  }
  return new EnvyError('CONFIG_READ', `${label}: cannot read (${code ?? String(error)})`, { cause: error });
}

function formatBytes(bytes: number): string {
  return bytes >= 1024 * 1024 ? `${(bytes / (1024 * 1024)).toFixed(1)} MiB` : `${(bytes / 1024).toFixed(1)} KiB`;
}
