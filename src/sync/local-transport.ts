/**
 * One side of a sync pair as a directory on this machine: the host project tree, or the private copy
 * the runtime bind-mounts into an environment.
 *
 * Safety: the other side of the pair is not trusted (a process in the environment can replace any
 * directory with a symlink to /home/you at any moment), so no operation ever goes through a symlink.
 * Every path is checked component by component with lstat before use, files are opened with
 * O_NOFOLLOW, and writes land in a temp file in the same directory that is renamed over the target,
 * which replaces a symlink rather than writing through it. Node has no openat(2), so a swap between
 * the check and the use remains possible; the check narrows that window to microseconds.
 */
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, constants, copyFileSync, existsSync, fstatSync, lstatSync, lutimesSync, openSync, readlinkSync, renameSync, rmSync, type Stats } from 'node:fs';
import { chmod, copyFile, lstat, type FileHandle, mkdir, open, readdir, readlink, rename, rm, symlink, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { EnvyError } from '../errors.js';
import { SYNC_TEMP_PREFIX } from './ignore.js';
import {
  HASH_ALGORITHM,
  type DirEntry,
  type EntryInfo,
  type SyncTransport,
  type WatchHandle,
  type WatchOptions,
  type WriteOptions,
} from './transport.js';
import { watchTree } from './watcher.js';

const READ_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW;
const CREATE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
/** Files at least this large are copied in the thread pool; smaller ones take less than the round trip. */
const ASYNC_COPY_BYTES = 256 * 1024;
/** The fast copy path reads through /proc/self/fd; without /proc the engine streams instead. */
const PROC_FD_AVAILABLE = existsSync('/proc/self/fd');

/**
 * Seconds for utimes from a millisecond time. libuv keeps microseconds and truncates, and ms / 1000 as
 * a double often lands just below the intended microsecond (…122.999 ms became …122.998): aim at the
 * middle of the microsecond so the copy's time equals the source's.
 */
export function utimeSeconds(mtimeMs: number): number {
  return (Math.round(mtimeMs * 1000) + 0.5) / 1e6;
}

export function infoFromStats(stats: Stats, linkTarget?: string): EntryInfo {
  const type = stats.isDirectory() ? 'dir' : stats.isSymbolicLink() ? 'symlink' : 'file';
  const info: EntryInfo = { type, mode: stats.mode & 0o7777, size: stats.size, mtimeMs: stats.mtimeMs };
  if (linkTarget !== undefined) info.linkTarget = linkTarget;
  return info;
}

function isMissing(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/** Reject anything that is not a plain relative path inside the tree. */
export function checkRelativePath(path: string): string[] {
  if (path === '') return [];
  const parts = path.split('/');
  if (path.startsWith('/') || path.includes('\0') || parts.some((p) => p === '' || p === '.' || p === '..')) {
    throw new EnvyError('RUNTIME', `sync: refusing the path "${path}": not a plain path inside the tree`, {
      hint: 'this is a bug in the sync peer or a hostile environment; the path was not touched',
    });
  }
  return parts;
}

export class LocalTransport implements SyncTransport {
  readonly description: string;

  constructor(readonly root: string) {
    this.description = root;
  }

  async init(): Promise<void> {
    await mkdir(this.root, { recursive: true });
    const stats = await lstat(this.root);
    if (!stats.isDirectory()) {
      throw new EnvyError('RUNTIME', `sync: ${this.root} is not a directory`, {
        hint: 'remove it or point the sync at a directory',
      });
    }
  }

  /**
   * Absolute path for `path` after checking that no directory on the way is a symlink. A missing
   * component is fine (the caller gets ENOENT from its own operation).
   */
  async resolve(path: string): Promise<string> {
    const parts = checkRelativePath(path);
    let current = this.root;
    for (let i = 0; i < parts.length - 1; i++) {
      current = join(current, parts[i]!);
      // Synchronous: an lstat of a cached inode takes microseconds, far less than the promise round
      // trip through the thread pool, which made the main thread the bottleneck of the initial copy.
      const stats = lstatSync(current, { throwIfNoEntry: false });
      if (!stats) break;
      if (stats.isSymbolicLink()) {
        throw new EnvyError('RUNTIME', `sync: refusing "${path}" in ${this.root}: "${parts.slice(0, i + 1).join('/')}" is a symlink`, {
          hint: 'sync never follows symlinks; replace the link with a directory if the files should sync',
        });
      }
    }
    return parts.length === 0 ? this.root : join(this.root, ...parts);
  }

  async stat(path: string): Promise<EntryInfo | null> {
    const abs = await this.resolve(path);
    try {
      const stats = await lstat(abs);
      return infoFromStats(stats, stats.isSymbolicLink() ? await readlink(abs) : undefined);
    } catch (error) {
      if (isMissing(error)) return null;
      throw error;
    }
  }

  async readDir(path: string): Promise<DirEntry[]> {
    const abs = await this.resolve(path);
    let names: string[];
    try {
      const stats = await lstat(abs);
      if (!stats.isDirectory()) return [];
      names = await readdir(abs);
    } catch (error) {
      if (isMissing(error)) return [];
      throw error;
    }
    // Synchronous lstats (see resolve): one per child, the bulk of a scan's system calls.
    const entries: DirEntry[] = [];
    for (const name of names) {
      const child = join(abs, name);
      try {
        const stats = lstatSync(child, { throwIfNoEntry: false });
        if (!stats) continue;
        if (!stats.isFile() && !stats.isDirectory() && !stats.isSymbolicLink()) continue; // sockets, fifos, devices
        entries.push({ name, ...infoFromStats(stats, stats.isSymbolicLink() ? readlinkSync(child) : undefined) });
      } catch (error) {
        if (isMissing(error)) continue;
        throw error;
      }
    }
    return entries;
  }

  async hash(path: string): Promise<string> {
    const handle = await open(await this.resolve(path), READ_FLAGS);
    try {
      const digest = createHash(HASH_ALGORITHM);
      for await (const chunk of handle.createReadStream({ autoClose: false, highWaterMark: 1 << 16 })) digest.update(chunk as Buffer);
      return digest.digest('hex');
    } finally {
      await handle.close();
    }
  }

  async readFile(path: string): Promise<Buffer> {
    const handle = await open(await this.resolve(path), READ_FLAGS);
    try {
      return await handle.readFile();
    } finally {
      await handle.close();
    }
  }

  async openRead(path: string): Promise<Readable> {
    const handle = await open(await this.resolve(path), READ_FLAGS);
    return handle.createReadStream({ highWaterMark: 1 << 19 });
  }

  private tempCounter = 0;

  private tempPathFor(abs: string): string {
    const slash = abs.lastIndexOf('/');
    // Unique per process and call; O_EXCL catches a stale file left by a crashed run with the same pid.
    return `${abs.slice(0, slash)}/${SYNC_TEMP_PREFIX}${this.tempTag}.${++this.tempCounter}`;
  }

  private readonly tempTag = `${process.pid}.${randomBytes(3).toString('hex')}`;

  async writeFile(path: string, data: Buffer | Readable, options: WriteOptions): Promise<EntryInfo> {
    const abs = await this.resolve(path);
    const temp = this.tempPathFor(abs);
    let handle: FileHandle;
    try {
      handle = await open(temp, CREATE_FLAGS, options.mode & 0o777);
    } catch (error) {
      if (!Buffer.isBuffer(data)) data.destroy();
      throw error;
    }
    let info: EntryInfo;
    try {
      if (Buffer.isBuffer(data)) {
        await handle.writeFile(data);
      } else {
        for await (const chunk of data) await handle.write(chunk as Buffer);
      }
      // Seconds as a number keep sub-millisecond precision, which a Date would drop.
      await handle.utimes(utimeSeconds(options.mtimeMs), utimeSeconds(options.mtimeMs));
      info = infoFromStats(await handle.stat());
      // The umask may have narrowed the mode given to open(); set exactly what the source has.
      if (info.mode !== (options.mode & 0o7777)) {
        await handle.chmod(options.mode & 0o7777);
        info.mode = options.mode & 0o7777;
      }
    } catch (error) {
      await handle.close();
      await unlink(temp).catch(() => undefined);
      if (!Buffer.isBuffer(data)) data.destroy();
      throw error;
    }
    await handle.close();
    try {
      await rename(temp, abs);
    } catch (error) {
      await unlink(temp).catch(() => undefined);
      throw error;
    }
    return info;
  }

  /**
   * Copy in the kernel (copy_file_range, or a reflink where the filesystem shares extents): one
   * thread-pool round trip for the data instead of a read and a write through JS. copyFile() opens its
   * source by path and would follow a symlink swapped in after our lstat, so the source is opened here
   * with O_NOFOLLOW and copied through /proc/self/fd, which names that very file. O_NONBLOCK keeps a
   * FIFO swapped in from blocking a pool thread; the fstat then refuses anything but a regular file.
   * The temp file is created O_EXCL (never through a planted link); copyFile gives it the source's
   * mode with fchmod, so no umask narrows it, and lutimes sets its time without following a link.
   */
  async copyFrom(from: SyncTransport, path: string, options: WriteOptions): Promise<EntryInfo | null> {
    if (!(from instanceof LocalTransport) || !PROC_FD_AVAILABLE) return null;
    // The metadata calls are synchronous (see resolve); only copying the bytes of a large file goes to
    // the thread pool, where it runs beside the main thread's work on the next files.
    const fd = openSync(await from.resolve(path), READ_FLAGS | constants.O_NONBLOCK);
    let temp: string | undefined;
    let info: EntryInfo;
    try {
      const stats = fstatSync(fd);
      if (!stats.isFile()) {
        // Reported as vanished: the engine then looks at the path again and finds what is there now.
        throw Object.assign(new Error(`sync: ${path} in ${from.root} is no longer a regular file`), { code: 'ENOENT' });
      }
      const abs = await this.resolve(path);
      temp = this.tempPathFor(abs);
      const flags = constants.COPYFILE_EXCL | constants.COPYFILE_FICLONE;
      if (stats.size >= ASYNC_COPY_BYTES) await copyFile(`/proc/self/fd/${fd}`, temp, flags);
      else copyFileSync(`/proc/self/fd/${fd}`, temp, flags);
      lutimesSync(temp, utimeSeconds(options.mtimeMs), utimeSeconds(options.mtimeMs));
      renameSync(temp, abs);
      // What was written: copyFile copies the whole open file and gives it that file's mode; the time is ours.
      info = { type: 'file', mode: stats.mode & 0o7777, size: stats.size, mtimeMs: options.mtimeMs };
    } catch (error) {
      if (temp) rmSync(temp, { force: true });
      throw error;
    } finally {
      closeSync(fd);
    }
    return info;
  }


  async mkdir(path: string, mode: number): Promise<void> {
    const abs = await this.resolve(path);
    try {
      await mkdir(abs, mode & 0o7777);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const stats = await lstat(abs);
      if (!stats.isDirectory()) throw error;
    }
    await this.chmod(path, mode);
  }

  async symlink(path: string, target: string): Promise<EntryInfo> {
    const abs = await this.resolve(path);
    const temp = this.tempPathFor(abs);
    await symlink(target, temp);
    try {
      await rename(temp, abs);
    } catch (error) {
      await unlink(temp).catch(() => undefined);
      throw error;
    }
    return infoFromStats(await lstat(abs), target);
  }

  async remove(path: string): Promise<void> {
    if (path === '') throw new EnvyError('INTERNAL', 'sync: refusing to remove the root of the tree');
    // rm does not follow symlinks: a link is unlinked, never its target's contents.
    await rm(await this.resolve(path), { recursive: true, force: true });
  }

  async rename(from: string, to: string): Promise<void> {
    await rename(await this.resolve(from), await this.resolve(to));
  }

  async chmod(path: string, mode: number): Promise<void> {
    const abs = await this.resolve(path);
    const stats = await lstat(abs);
    // Link permissions mean nothing on Linux, and chmod on a link would change its target.
    if (stats.isSymbolicLink()) return;
    if ((stats.mode & 0o7777) === (mode & 0o7777)) return;
    await chmod(abs, mode & 0o7777);
  }

  async setMtime(path: string, mtimeMs: number): Promise<void> {
    const handle = await open(await this.resolve(path), READ_FLAGS);
    try {
      const stats = await handle.stat();
      await handle.utimes(utimeSeconds(stats.atimeMs), utimeSeconds(mtimeMs));
    } finally {
      await handle.close();
    }
  }

  async watch(options: WatchOptions): Promise<WatchHandle> {
    return watchTree(this.root, options);
  }
}
