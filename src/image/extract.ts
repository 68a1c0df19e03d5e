/**
 * Safe layer unpacking. A layer is untrusted input: every entry is confined to
 * the layer root (no absolute paths, no `..`, nothing through a symlink the
 * layer itself placed, hard links only to earlier entries), and the result
 * appears at `dest` only when the whole tar was read: extraction happens in a
 * temp dir that is renamed into place on success and removed on failure.
 *
 * OCI whiteouts become what overlayfs reads in a lower layer (docs/images.md):
 * `.wh.NAME` → a 0/0 character device (mknod(2) allows that one device to
 * unprivileged users since Linux 5.8), `.wh..wh..opq` → the xattr
 * `user.overlay.opaque=y` (the runtime mounts with `userxattr`). Node has no
 * mknod/setxattr, so both are made in one batched `mknod`/`setfattr` call each.
 */
import {
  chmodSync,
  closeSync,
  constants as fsConstants,
  createReadStream,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  renameSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeSync,
  fchownSync,
  fchmodSync,
  futimesSync,
} from 'node:fs';
import { createHash } from 'node:crypto';
import { dirname, join } from 'node:path';
import { pipeline as pipelineCallback, Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { EnvyError } from '../errors.js';
import { filterThrough, runPlain } from '../exec.js';
import { sniffCompression, type Compression } from './media-types.js';
import { TarParser, type TarEntrySink, type TarHeader } from './tar-parse.js';
import { tempName } from './temp.js';

export interface ExtractOptions {
  /** Names the layer (its digest) in every error. */
  label: string;
  /**
   * Give entries the tar's uid/gid and keep setuid/setgid bits. Only meaningful
   * as root in a user namespace (the unpack worker under `envy-ns userns`);
   * otherwise the invoking user keeps ownership and the intended owners are recorded.
   */
  chown?: boolean;
  /** The layer's known diff_id (from the image config); a different tar is rejected. */
  expectedDiffId?: string;
}

export interface ExtractResult {
  /** sha256 of the uncompressed tar: the OCI diff_id. */
  diffId: string;
  /** Bytes of the uncompressed tar. */
  tarSize: number;
  compression: Compression;
  entries: number;
  /** Whether the tar's owners and setuid bits were applied (else they are recorded below). */
  chowned: boolean;
  /** Device nodes left out (mknod is refused rootlessly). */
  skippedDevices: number;
  /** Paths hidden from lower layers (relative to the layer root). */
  whiteouts: string[];
  /** Directories whose lower-layer contents are hidden. */
  opaqueDirs: string[];
  /** Owners the tar asked for but that were not applied (without chown), path → [uid, gid]; root-owned entries omitted. */
  owners: Record<string, [number, number]>;
  /** Modes with setuid/setgid bits that were stripped (without chown), path → mode. */
  strippedModes: Record<string, number>;
}

/** A layer blob: a stream, or a file path (lets zstd read the file directly). */
export type LayerSource = Readable | string;

const SETID_BITS = 0o6000;
/** Files up to this size are read whole from the tar and written with one call. */
const SMALL_FILE = 256 * 1024;
/**
 * zlib's default output chunk is 16 KiB: every chunk is a round trip to the thread pool plus a stream push
 * on the unpacking thread. Bigger chunks cut those round trips; small files are sliced out of them either way.
 */
const GUNZIP_CHUNK = 256 * 1024;
const WHITEOUT_PREFIX = '.wh.';
const OPAQUE_MARKER = '.wh..wh..opq';

export async function extractLayer(source: LayerSource, dest: string, options: ExtractOptions): Promise<ExtractResult> {
  const temp = join(dirname(dest), tempName('extract'));
  let decompressed: Decompressed | undefined;
  try {
    decompressed = await openDecompressed(source);
    mkdirSync(temp, { mode: 0o700 });
    const result = await new LayerWriter(temp, options, decompressed.compression).write(decompressed.stream);
    await decompressed.done;
    if (options.expectedDiffId && options.expectedDiffId !== result.diffId) {
      throw new EnvyError('IMAGE', `layer ${options.label}: its content has diff_id ${result.diffId}, but the image config says ${options.expectedDiffId}`, {
        hint: 'the image is corrupt or was tampered with; pull or export it again',
      });
    }
    renameSync(temp, dest);
    return result;
  } catch (error) {
    // A decompressor still running (we stopped reading early) ends on the closed pipe; wait for it.
    decompressed?.stream.destroy();
    await decompressed?.done.catch(() => undefined);
    removeTree(temp);
    throw error;
  }
}

/** Remove a tree even where the layer made directories read-only. */
export function removeTree(path: string): void {
  try {
    rmSync(path, { recursive: true, force: true });
  } catch {
    makeWritable(path);
    rmSync(path, { recursive: true, force: true });
  }
}

function makeWritable(path: string): void {
  let stat;
  try {
    stat = lstatSync(path);
  } catch {
    return;
  }
  if (!stat.isDirectory()) return;
  chmodSync(path, 0o700);
  for (const name of readdirNames(path)) makeWritable(join(path, name));
}

function readdirNames(path: string): string[] {
  try {
    return readdirSync(path);
  } catch {
    return [];
  }
}

interface Decompressed {
  stream: Readable;
  compression: Compression;
  /** Settles when a decompressing program (zstd) exited; rejects when it failed. */
  done: Promise<void>;
}

async function openDecompressed(source: LayerSource): Promise<Decompressed> {
  let stream: Readable;
  let head: Buffer;
  if (typeof source === 'string') {
    head = readHead(source, 4);
    stream = createReadStream(source);
  } else {
    ({ head, stream } = await peek(source, 4));
  }
  const compression = sniffCompression(head);
  if (compression === 'gzip') {
    // Not pipe(), which does not forward errors: a source that fails (a download whose digest does not
    // match) must fail the gunzip, not go unhandled. The reader sees the error on the gunzip.
    return { stream: chain(stream, createGunzip({ chunkSize: GUNZIP_CHUNK })), compression, done: Promise.resolve() };
  }
  if (compression === 'none') return { stream, compression, done: Promise.resolve() };
  // zstd: Node 20 has none; the zstd program decompresses as a stream filter (no spill file).
  const { output, done } = await filterThrough('zstd', ['-d', '-q', '-c'], stream, {
    errorCode: 'IMAGE',
    hint: 'zstd layers need the zstd program (Debian: apt-get install zstd); a failure here means a corrupt blob',
  });
  return { stream: output as Readable, compression, done };
}

/** `source` piped into `next`, a failure of either destroying both (`next` is what the caller reads). */
export function chain<T extends NodeJS.ReadWriteStream>(source: NodeJS.ReadableStream, next: T): T {
  return pipelineCallback(source, next, () => undefined) as unknown as T;
}

function readHead(path: string, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const buffer = Buffer.alloc(length);
    const read = readSync(fd, buffer, 0, length, 0);
    return buffer.subarray(0, read);
  } finally {
    closeSync(fd);
  }
}

async function peek(stream: Readable, length: number): Promise<{ head: Buffer; stream: Readable }> {
  const iterator = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  const seen: Buffer[] = [];
  let size = 0;
  let finished = false;
  while (size < length) {
    const next = await iterator.next();
    if (next.done) {
      finished = true;
      break;
    }
    const chunk = Buffer.isBuffer(next.value) ? next.value : Buffer.from(next.value);
    seen.push(chunk);
    size += chunk.length;
  }
  const head = Buffer.concat(seen);
  async function* replay(): AsyncGenerator<Buffer> {
    yield head;
    if (finished) return;
    for (;;) {
      const next = await iterator.next();
      if (next.done) return;
      yield next.value;
    }
  }
  return { head, stream: Readable.from(replay(), { objectMode: false }) };
}


interface PendingDir {
  path: string;
  mode: number;
  mtime: Date;
  uid: number;
  gid: number;
}

class LayerWriter {
  private readonly symlinks = new Set<string>();
  /** Entries that a hard link may point at: regular files, symlinks and earlier hard links. */
  private readonly linkable = new Set<string>();
  private readonly dirs = new Map<string, PendingDir>();
  /** Hidden path → the whiteout entry's mtime (the device node gets it: an export re-tars it as it came). */
  private readonly whiteouts = new Map<string, Date>();
  private readonly opaque = new Set<string>();
  private readonly fifos: { rel: string; mode: number; mtime: Date; uid: number; gid: number }[] = [];
  /** Non-directory paths this layer created (the dest started empty). */
  private readonly placed = new Set<string>();
  private readonly result: Omit<ExtractResult, 'diffId' | 'tarSize' | 'whiteouts' | 'opaqueDirs'>;

  constructor(
    private readonly root: string,
    private readonly options: ExtractOptions,
    compression: Compression,
  ) {
    this.result = { compression, chowned: options.chown ?? false, entries: 0, skippedDevices: 0, owners: {}, strippedModes: {} };
  }

  async write(stream: Readable): Promise<ExtractResult> {
    const hash = createHash('sha256');
    let size = 0;
    const parser = new TarParser((header) => this.entry(header));
    try {
      // Each chunk is hashed and unpacked before the next is read: the loop is the backpressure.
      for await (const chunk of stream) {
        hash.update(chunk as Buffer);
        size += (chunk as Buffer).length;
        parser.push(chunk as Buffer);
      }
      parser.end();
      await this.finish();
    } catch (error) {
      parser.abort();
      stream.destroy();
      throw this.wrap(error);
    }
    return {
      ...this.result,
      diffId: `sha256:${hash.digest('hex')}`,
      tarSize: size,
      whiteouts: [...this.whiteouts.keys()].sort(),
      opaqueDirs: [...this.opaque].sort(),
    };
  }

  private wrap(error: unknown): unknown {
    if (error instanceof EnvyError) return error;
    const message = error instanceof Error ? error.message : String(error);
    return new EnvyError('IMAGE', `layer ${this.options.label} could not be unpacked: ${message}`, {
      hint: 'the blob is not a valid (gzip/zstd) tar; it may be corrupt or truncated',
      cause: error,
    });
  }

  private reject(name: string, why: string): EnvyError {
    return new EnvyError('IMAGE', `layer ${this.options.label}: entry "${name}" ${why}`, {
      hint: 'the image contains an unsafe archive entry and was not unpacked; use an image from a trusted source',
    });
  }

  /** The entry's path relative to the root ('' is the root itself), after confinement checks. */
  private confine(name: string, path = name, what = 'path'): string {
    const shown = path === name ? what : `${what} "${path}"`;
    if (path.startsWith('/')) throw this.reject(name, `has an absolute ${shown}`);
    const parts = path.split('/').filter((part) => part !== '' && part !== '.');
    if (parts.includes('..')) throw this.reject(name, `has a ".." component in its ${shown}`);
    if (parts.some((part) => part.includes('\0'))) throw this.reject(name, `has a NUL byte in its ${shown}`);
    return parts.join('/');
  }

  /** Refuse paths whose parents include a symlink placed by this layer, then make the parents. */
  private prepareParent(name: string, rel: string, mtime: Date): void {
    const parts = rel.split('/');
    let prefix = '';
    for (let i = 0; i < parts.length - 1; i += 1) {
      prefix = prefix === '' ? parts[i]! : `${prefix}/${parts[i]}`;
      if (this.symlinks.has(prefix)) throw this.reject(name, `goes through the symlink "${prefix}" placed by an earlier entry`);
      if (!this.dirs.has(prefix)) {
        try {
          mkdirSync(join(this.root, prefix), { mode: 0o755 });
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
          if (!lstatSync(join(this.root, prefix)).isDirectory()) throw this.reject(name, `needs "${prefix}" to be a directory, but an earlier entry made it a file`);
        }
        // A parent the tar never lists gets root, 0755 and its child's mtime: deterministic, like the rest.
        this.dirs.set(prefix, { path: prefix, mode: 0o755, mtime, uid: 0, gid: 0 });
      }
    }
  }

  /**
   * A later entry replaces an earlier one of the same path (directories merge).
   * The dest started empty, so what exists is exactly what this layer made:
   * the bookkeeping answers without a syscall per entry.
   */
  private clearForEntry(rel: string, isDir: boolean): void {
    const wasDir = this.dirs.has(rel);
    if (!wasDir && !this.placed.has(rel)) return;
    if (isDir && wasDir) return;
    const under = `${rel}/`;
    removeTree(join(this.root, rel));
    for (const set of [this.symlinks, this.linkable, this.placed]) {
      for (const path of set) if (path === rel || path.startsWith(under)) set.delete(path);
    }
    for (const path of [...this.dirs.keys()]) if (path === rel || path.startsWith(under)) this.dirs.delete(path);
  }

  private noteOwner(rel: string, uid: number, gid: number): void {
    if (!this.options.chown && (uid !== 0 || gid !== 0)) this.result.owners[rel] = [uid, gid];
  }

  private finalMode(rel: string, mode: number): number {
    if (this.options.chown || (mode & SETID_BITS) === 0) return mode & 0o7777;
    this.result.strippedModes[rel] = mode & 0o7777;
    return mode & 0o1777;
  }

  /** One tar entry: made at once, or (a regular file with data) through the sink its data flows into. */
  private entry(header: TarHeader): TarEntrySink | undefined {
    const name = header.name;
    this.result.entries += 1;
    const type = header.type ?? 'file';
    const rel = this.confine(name);
    const base = rel.split('/').pop() ?? '';
    const mode = header.mode ?? (type === 'directory' ? 0o755 : 0o644);
    const mtime = header.mtime ?? new Date(0);
    const uid = header.uid ?? 0;
    const gid = header.gid ?? 0;

    if (base.startsWith(WHITEOUT_PREFIX)) {
      this.prepareParent(name, rel, mtime);
      const parent = rel.includes('/') ? rel.slice(0, rel.lastIndexOf('/')) : '';
      if (base === OPAQUE_MARKER) {
        this.opaque.add(parent);
        return undefined;
      }
      // Other .wh..wh.* names are aufs bookkeeping (hard-link dirs), not content.
      if (base.startsWith(`${WHITEOUT_PREFIX}${WHITEOUT_PREFIX}`)) return undefined;
      const hidden = base.slice(WHITEOUT_PREFIX.length);
      if (hidden === '' || hidden === '.' || hidden === '..') throw this.reject(name, 'is a whiteout without a name');
      this.whiteouts.set(parent === '' ? hidden : `${parent}/${hidden}`, mtime);
      return undefined;
    }

    if (rel === '') {
      if (type !== 'directory') throw this.reject(name, 'replaces the layer root with a non-directory');
      this.dirs.set('', { path: '', mode, mtime, uid, gid });
      return undefined;
    }

    this.prepareParent(name, rel, mtime);
    const abs = join(this.root, rel);
    switch (type) {
      case 'directory': {
        this.clearForEntry(rel, true);
        try {
          mkdirSync(abs, { mode: 0o700 });
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
        }
        this.dirs.set(rel, { path: rel, mode, mtime, uid, gid });
        return undefined;
      }
      case 'file':
      case 'contiguous-file': {
        this.clearForEntry(rel, false);
        this.placed.add(rel);
        this.linkable.add(rel);
        if (header.size <= SMALL_FILE) {
          const owner = this.options.chown ? { uid, gid } : undefined;
          if (!owner) this.noteOwner(rel, uid, gid);
          const finalMode = this.finalMode(rel, mode);
          const chunks: Buffer[] = [];
          return {
            data: (chunk) => void chunks.push(chunk),
            end: () => writeSmallFile(abs, chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks), finalMode, mtime, owner),
          };
        }
        // O_NOFOLLOW and O_EXCL: never write through a link, even one the checks missed.
        let fd: number | undefined = openSync(abs, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW, 0o600);
        const close = (): void => {
          if (fd !== undefined) closeSync(fd);
          fd = undefined;
        };
        return {
          data: (chunk) => {
            let offset = 0;
            while (offset < chunk.length) offset += writeSync(fd!, chunk, offset, chunk.length - offset);
          },
          end: () => {
            close();
            this.applyAttributes(rel, abs, mode, mtime, uid, gid);
          },
          abort: close,
        };
      }
      case 'symlink': {
        const target = header.linkname ?? '';
        if (target === '') throw this.reject(name, 'is a symlink without a target');
        this.clearForEntry(rel, false);
        // Symlinks may point anywhere: they are resolved inside the environment's root, never while unpacking.
        symlinkSync(target, abs);
        this.placed.add(rel);
        if (this.options.chown) {
          if (!ownedByUs(uid, gid)) lchownSync(abs, uid, gid);
        } else this.noteOwner(rel, uid, gid);
        lutimesSync(abs, mtime, mtime);
        this.symlinks.add(rel);
        this.linkable.add(rel);
        return undefined;
      }
      case 'link': {
        const target = this.confine(name, header.linkname ?? '', 'hard link target');
        if (target === '' || !this.linkable.has(target)) {
          throw this.reject(name, `is a hard link to "${header.linkname ?? ''}", which is not an earlier file of this layer`);
        }
        if (target === rel) return undefined;
        this.clearForEntry(rel, false);
        linkSync(join(this.root, target), abs);
        this.placed.add(rel);
        if (this.symlinks.has(target)) this.symlinks.add(rel);
        this.linkable.add(rel);
        return undefined;
      }
      case 'character-device':
      case 'block-device': {
        this.result.skippedDevices += 1;
        return undefined;
      }
      case 'fifo': {
        this.clearForEntry(rel, false);
        this.placed.add(rel);
        this.fifos.push({ rel, mode, mtime, uid, gid });
        return undefined;
      }
    }
  }

  private applyAttributes(rel: string, abs: string, mode: number, mtime: Date, uid: number, gid: number): void {
    if (this.options.chown) {
      if (!ownedByUs(uid, gid)) lchownSync(abs, uid, gid);
    } else this.noteOwner(rel, uid, gid);
    // chmod after chown: chown clears setuid bits.
    chmodSync(abs, this.finalMode(rel, mode));
    utimesSync(abs, mtime, mtime);
  }

  private async finish(): Promise<void> {
    // A whiteout next to a same-named entry of the same layer hides nothing of this layer (OCI spec): the entry stays.
    const whiteouts = [...this.whiteouts.keys()].filter((rel) => !exists(join(this.root, rel)));
    if (whiteouts.length > 0) {
      await runPlain('sh', ['-c', 'for p do mknod -- "$p" c 0 0 || exit 1; done', 'sh', ...whiteouts.map((rel) => join(this.root, rel))], {
        errorCode: 'IMAGE',
        hint: 'overlay whiteouts are 0/0 character devices, which Linux lets unprivileged users create since 5.8',
      });
      for (const rel of whiteouts) {
        const mtime = this.whiteouts.get(rel)!;
        lutimesSync(join(this.root, rel), mtime, mtime);
      }
    }
    if (this.opaque.size > 0) {
      for (const rel of this.opaque) mkdirSync(join(this.root, rel), { recursive: true });
      await runPlain('sh', ['-c', 'for p do setfattr -n user.overlay.opaque -v y -- "$p" || exit 1; done', 'sh', ...[...this.opaque].map((rel) => join(this.root, rel))], {
        errorCode: 'IMAGE',
        hint: 'opaque directories need setfattr (Debian: apt-get install attr) and a filesystem with user xattrs',
      });
    }
    if (this.fifos.length > 0) {
      await runPlain('mkfifo', ['--', ...this.fifos.map((fifo) => join(this.root, fifo.rel))], { errorCode: 'IMAGE' });
      for (const fifo of this.fifos) {
        const abs = join(this.root, fifo.rel);
        this.applyAttributes(fifo.rel, abs, fifo.mode, fifo.mtime, fifo.uid, fifo.gid);
      }
    }
    // Deepest first, after every child exists: a read-only directory would refuse its children, and each write moves its mtime.
    const dirs = [...this.dirs.values()].sort((a, b) => depth(b.path) - depth(a.path));
    for (const dir of dirs) {
      const abs = dir.path === '' ? this.root : join(this.root, dir.path);
      this.applyAttributes(dir.path === '' ? '.' : dir.path, abs, dir.mode, dir.mtime, dir.uid, dir.gid);
    }
  }
}

function depth(rel: string): number {
  return rel === '' ? 0 : rel.split('/').length;
}

function exists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}



// The open(2) mode passes through the umask; fchmod only when that changed it.
const UMASK = process.umask();
// What a file we create is owned by (root, in the layer worker's user namespace): most of a layer is.
const OWN_UID = process.getuid?.() ?? -1;
const OWN_GID = process.getgid?.() ?? -1;

/**
 * Whether a new entry already has this owner, so chown can be skipped. Parents are made without the
 * setgid bit (modes are applied last), so a new entry's group is always ours.
 */
function ownedByUs(uid: number, gid: number): boolean {
  return uid === OWN_UID && gid === OWN_GID;
}
/** One open, one write, fd-based attributes: a layer is mostly small files, and path lookups add up. */
function writeSmallFile(abs: string, data: Buffer, mode: number, mtime: Date, owner: { uid: number; gid: number } | undefined): void {
  const fd = openSync(abs, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW, mode & 0o777);
  try {
    let offset = 0;
    while (offset < data.length) offset += writeSync(fd, data, offset, data.length - offset);
    const chown = owner !== undefined && !ownedByUs(owner.uid, owner.gid);
    if (chown) fchownSync(fd, owner.uid, owner.gid);
    // chown clears setuid/setgid; open(2) cannot set them, and the umask may have cleared other bits.
    if (chown || (mode & ~UMASK & 0o777) !== mode) fchmodSync(fd, mode);
    futimesSync(fd, mtime, mtime);
  } finally {
    closeSync(fd);
  }
}

