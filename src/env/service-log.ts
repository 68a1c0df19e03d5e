/**
 * Service logs: append-only files under the environment's logs dir, rotated by size
 * (`NAME.log` -> `NAME.log.1` -> ... -> `NAME.log.KEEP`, the oldest dropped), and a reader that
 * follows a file across rotation. Written only by the environment's supervisor, so no locking.
 */
import { closeSync, existsSync, fstatSync, openSync, readSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';

export const DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024;
export const LOG_KEEP = 3;

/** The rotation size: ENVY_LOG_MAX_BYTES overrides the default (tests use a few KB). */
export function logMaxBytes(): number {
  const value = Number(process.env.ENVY_LOG_MAX_BYTES);
  return Number.isInteger(value) && value > 0 ? value : DEFAULT_LOG_MAX_BYTES;
}

/** Oldest first: NAME.log.3, .2, .1, NAME.log (those that exist). */
export function logGenerations(path: string): string[] {
  const files: string[] = [];
  for (let i = LOG_KEEP; i >= 1; i--) if (existsSync(`${path}.${i}`)) files.push(`${path}.${i}`);
  if (existsSync(path)) files.push(path);
  return files;
}

export class RotatingLog {
  private fd: number;
  private size: number;

  constructor(
    private readonly path: string,
    private readonly maxBytes = logMaxBytes(),
  ) {
    this.fd = openSync(path, 'a', 0o644);
    this.size = fstatSync(this.fd).size;
  }

  /** Append whole lines; rotation happens between writes, so a line is never split across files. */
  write(data: Buffer): void {
    if (this.size > 0 && this.size + data.length > this.maxBytes) this.rotate();
    let offset = 0;
    while (offset < data.length) offset += writeSync(this.fd, data, offset, data.length - offset);
    this.size += data.length;
  }

  close(): void {
    closeSync(this.fd);
  }

  private rotate(): void {
    closeSync(this.fd);
    rotateFiles(this.path);
    this.fd = openSync(this.path, 'a', 0o644);
    this.size = 0;
  }
}

/** NAME.log -> NAME.log.1 -> ... -> NAME.log.KEEP; the oldest is dropped. */
export function rotateFiles(path: string): void {
  rmSync(`${path}.${LOG_KEEP}`, { force: true });
  for (let i = LOG_KEEP - 1; i >= 1; i--) {
    if (existsSync(`${path}.${i}`)) renameSync(`${path}.${i}`, `${path}.${i + 1}`);
  }
  if (existsSync(path)) renameSync(path, `${path}.1`);
}

/** Splits a byte stream into whole lines (the last, unterminated one is held back until more comes or flush). */
export class LineSplitter {
  private rest = Buffer.alloc(0);

  push(chunk: Buffer): Buffer[] {
    const data = this.rest.length > 0 ? Buffer.concat([this.rest, chunk]) : chunk;
    const lines: Buffer[] = [];
    let start = 0;
    for (let i = data.indexOf(10); i >= 0; i = data.indexOf(10, start)) {
      lines.push(data.subarray(start, i + 1));
      start = i + 1;
    }
    this.rest = Buffer.from(data.subarray(start));
    // A process that never prints a newline must not grow memory without bound.
    if (this.rest.length > 64 * 1024) return [...lines, ...this.flush()];
    return lines;
  }

  flush(): Buffer[] {
    if (this.rest.length === 0) return [];
    const last = Buffer.concat([this.rest, Buffer.from('\n')]);
    this.rest = Buffer.alloc(0);
    return [last];
  }
}

/**
 * Follows a log file like `tail -F`: reads what is appended, and when the file is rotated
 * (another inode at the path, or a shorter file) finishes the old one, then continues with the new.
 */
export class LogFollower {
  private fd: number | undefined;
  private ino = -1;
  private offset = 0;

  constructor(
    private readonly path: string,
    fromEnd: boolean,
  ) {
    this.open(fromEnd);
  }

  private open(fromEnd: boolean): void {
    try {
      this.fd = openSync(this.path, 'r');
      const stat = fstatSync(this.fd);
      this.ino = stat.ino;
      this.offset = fromEnd ? stat.size : 0;
    } catch {
      this.fd = undefined;
    }
  }

  /** Everything new since the last call. */
  read(): Buffer {
    const chunks: Buffer[] = [];
    if (this.fd === undefined) this.open(false);
    if (this.fd === undefined) return Buffer.alloc(0);
    chunks.push(this.drain());
    let current: { ino: number; size: number } | undefined;
    try {
      current = statSync(this.path);
    } catch {
      current = undefined;
    }
    if (current && (current.ino !== this.ino || current.size < this.offset)) {
      closeSync(this.fd);
      this.open(false);
      if (this.fd !== undefined) chunks.push(this.drain());
    }
    return Buffer.concat(chunks);
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  private drain(): Buffer {
    const chunks: Buffer[] = [];
    const buffer = Buffer.alloc(64 * 1024);
    for (;;) {
      const n = readSync(this.fd!, buffer, 0, buffer.length, this.offset);
      if (n <= 0) break;
      chunks.push(Buffer.from(buffer.subarray(0, n)));
      this.offset += n;
    }
    return Buffer.concat(chunks);
  }
}
