/**
 * One side of a sync pair inside a VM guest, reached over the guest agent's channel: the sync engine
 * (src/sync/engine.ts) runs on the host and moves files to and from the guest through this transport.
 *
 * Safety is the agent's: it resolves every path below the root one component at a time with
 * O_NOFOLLOW (openat), so a guest process that swaps a directory for a symlink cannot make sync
 * read or write outside the tree, and writes land in a temp file renamed over the target.
 */
import type { Readable } from 'node:stream';
import { EnvyError } from '../../errors.js';
import { checkRelativePath } from '../../sync/local-transport.js';
import type { ChangeEvent, DirEntry, EntryInfo, EntryType, SyncTransport, WatchHandle, WatchOptions, WriteOptions } from '../../sync/transport.js';
import { AgentErrnoError, type AgentClient } from './agent-client.js';
import { EventKind, Op, Reader, Writer } from './agent-protocol.js';

const TYPES: Record<number, EntryType | undefined> = { 1: 'file', 2: 'dir', 3: 'symlink' };

/** Nanoseconds to the milliseconds the engine compares, keeping microseconds (as Node's stat does). */
function nsToMs(ns: bigint): number {
  return Number(ns / 1000n) / 1000;
}

/** Whole microseconds, as LocalTransport's utimes keeps them, so both sides store the same time. */
function msToNs(ms: number): bigint {
  return BigInt(Math.round(ms * 1000)) * 1000n;
}

function readEntry(r: Reader): EntryInfo & { rawType: number } {
  const rawType = r.u8();
  const mode = r.u32();
  const size = Number(r.u64());
  const mtimeMs = nsToMs(r.u64());
  const target = r.str();
  const type = TYPES[rawType] ?? 'file';
  const info: EntryInfo & { rawType: number } = { rawType, type, mode, size, mtimeMs };
  if (type === 'symlink') info.linkTarget = target;
  return info;
}

function plain(info: EntryInfo & { rawType?: number }): EntryInfo {
  const { rawType: _ignored, ...rest } = info;
  return rest;
}

function isMissing(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException | null)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

export class AgentTransport implements SyncTransport {
  readonly description: string;

  /** `root`: the absolute directory in the guest; `vmName` only names it in messages. */
  constructor(
    private readonly client: AgentClient,
    readonly root: string,
    vmName = 'guest',
  ) {
    if (!root.startsWith('/')) throw new EnvyError('INTERNAL', `sync: the guest root must be absolute, not "${root}"`);
    this.description = `vm:${vmName}:${root}`;
  }

  private request(op: number, path: string): Writer {
    checkRelativePath(path);
    return new Writer().u8(op).str(this.root).str(path);
  }

  private refuseLinkOnTheWay(error: unknown, path: string): never {
    if ((error as NodeJS.ErrnoException).code === 'ELOOP') {
      throw new EnvyError('RUNTIME', `sync: refusing "${path}" in ${this.description}: a directory on the way is a symlink`, {
        hint: 'sync never follows symlinks; replace the link with a directory if the files should sync',
      });
    }
    throw error;
  }

  async init(): Promise<void> {
    try {
      await this.client.fileOp(this.request(Op.mkdir, '').u32(0o755).done(), `mkdir ${this.root}`);
    } catch (error) {
      throw new EnvyError('RUNTIME', `sync: cannot make ${this.description}: ${(error as Error).message}`, {
        hint: 'the guest path must be a directory (or creatable)',
      });
    }
  }

  async stat(path: string): Promise<EntryInfo | null> {
    try {
      const { result } = await this.client.fileOp(this.request(Op.stat, path).done(), `stat ${path}`);
      return plain(readEntry(result));
    } catch (error) {
      if (isMissing(error)) return null;
      this.refuseLinkOnTheWay(error, path);
    }
  }

  async readDir(path: string): Promise<DirEntry[]> {
    let data: Buffer[];
    try {
      ({ data } = await this.client.fileOp(this.request(Op.readDir, path).done(), `list ${path}`));
    } catch (error) {
      if (isMissing(error)) return [];
      this.refuseLinkOnTheWay(error, path);
    }
    const entries: DirEntry[] = [];
    for (const payload of data) {
      const r = new Reader(payload);
      while (r.remaining > 0) {
        const name = r.str();
        const info = readEntry(r);
        if (info.rawType >= 1 && info.rawType <= 3) entries.push({ name, ...plain(info) });
      }
    }
    return entries;
  }

  async hash(path: string): Promise<string> {
    try {
      const { result } = await this.client.fileOp(this.request(Op.hash, path).done(), `hash ${path}`);
      return result.str();
    } catch (error) {
      this.refuseLinkOnTheWay(error, path);
    }
  }

  async readFile(path: string): Promise<Buffer> {
    const stream = await this.openRead(path);
    const chunks: Buffer[] = [];
    for await (const chunk of stream) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  }

  async openRead(path: string): Promise<Readable> {
    try {
      return await this.client.openRead(this.request(Op.read, path).done(), `read ${path}`);
    } catch (error) {
      this.refuseLinkOnTheWay(error, path);
    }
  }

  async writeFile(path: string, data: Buffer | Readable, options: WriteOptions): Promise<EntryInfo> {
    let result: Reader;
    try {
      result = await this.client.writeStream(this.request(Op.write, path).u32(options.mode & 0o7777).u64(msToNs(options.mtimeMs)).done(), data, `write ${path}`);
    } catch (error) {
      this.refuseLinkOnTheWay(error, path);
    }
    return plain(readEntry(result));
  }

  async mkdir(path: string, mode: number): Promise<void> {
    try {
      await this.client.fileOp(this.request(Op.mkdir, path).u32(mode & 0o7777).done(), `mkdir ${path}`);
    } catch (error) {
      this.refuseLinkOnTheWay(error, path);
    }
  }

  async symlink(path: string, target: string): Promise<EntryInfo> {
    try {
      const { result } = await this.client.fileOp(this.request(Op.symlink, path).str(target).done(), `symlink ${path}`);
      return plain(readEntry(result));
    } catch (error) {
      this.refuseLinkOnTheWay(error, path);
    }
  }

  async remove(path: string): Promise<void> {
    if (path === '') throw new EnvyError('INTERNAL', 'sync: refusing to remove the root of the tree');
    try {
      await this.client.fileOp(this.request(Op.remove, path).done(), `remove ${path}`);
    } catch (error) {
      this.refuseLinkOnTheWay(error, path);
    }
  }

  async rename(from: string, to: string): Promise<void> {
    checkRelativePath(to);
    try {
      await this.client.fileOp(this.request(Op.rename, from).str(to).done(), `rename ${from}`);
    } catch (error) {
      this.refuseLinkOnTheWay(error, from);
    }
  }

  async chmod(path: string, mode: number): Promise<void> {
    try {
      await this.client.fileOp(this.request(Op.chmod, path).u32(mode & 0o7777).done(), `chmod ${path}`);
    } catch (error) {
      this.refuseLinkOnTheWay(error, path);
    }
  }

  async setMtime(path: string, mtimeMs: number): Promise<void> {
    try {
      await this.client.fileOp(this.request(Op.setMtime, path).u64(msToNs(mtimeMs)).done(), `set the time of ${path}`);
    } catch (error) {
      this.refuseLinkOnTheWay(error, path);
    }
  }

  /**
   * inotify in the guest. The agent cannot evaluate the ignore rules, so it watches the whole tree and
   * this side filters; an ignored directory that appears is pruned from the agent's watch set, so a
   * node_modules being filled costs one event, not one per file.
   */
  async watch(options: WatchOptions): Promise<WatchHandle> {
    let handle: { prune(rel: string): void; close(): void };
    const onData = (payload: Buffer): void => {
      const events: ChangeEvent[] = [];
      try {
        const r = new Reader(payload);
        while (r.remaining > 0) {
          const kind = EventKind[r.u8() as keyof typeof EventKind];
          const path = r.str();
          if (!kind) continue;
          const isDir = kind === 'addDir' || kind === 'unlinkDir' ? true : undefined;
          if (path !== '' && options.ignored(path, isDir)) {
            if (kind === 'addDir') handle.prune(path);
            continue;
          }
          events.push({ kind, path });
        }
      } catch (error) {
        options.onError(error as Error);
        return;
      }
      if (events.length > 0) options.onEvents(events);
    };
    let closing = false;
    try {
      handle = await this.client.watch(this.root, onData, (error) => {
        if (!closing) options.onError(error);
      });
    } catch (error) {
      if (error instanceof AgentErrnoError && (error.code === 'ENOSPC' || error.code === 'EMFILE')) {
        throw new EnvyError('RUNTIME', `sync: the guest ran out of inotify watches for ${this.description} (${error.code})`, {
          hint: 'raise fs.inotify.max_user_watches in the guest image (a sysctl.d file), or add large directories to workspace.ignore',
        });
      }
      throw error;
    }
    return {
      mode: 'inotify',
      close: async () => {
        closing = true;
        handle.close();
      },
      // The agent adds a watch for every directory it sees created or moved in, as it happens.
      rewatch: () => undefined,
    };
  }
}
