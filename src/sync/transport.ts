/**
 * What the sync engine needs from one side of a sync pair. The engine never touches a filesystem
 * itself, so the same engine runs against a local directory (LocalTransport), and the VM backend's
 * guest-agent channel. Paths are relative to the side's root, `/`-separated, never `..`, never absolute.
 */
import type { Readable } from 'node:stream';

export type EntryType = 'file' | 'dir' | 'symlink';

export interface EntryInfo {
  type: EntryType;
  /** Permission bits (mode & 0o7777). */
  mode: number;
  size: number;
  mtimeMs: number;
  /** The link's target string, for symlinks (never resolved). */
  linkTarget?: string;
}

export interface DirEntry extends EntryInfo {
  name: string;
}

export type ChangeKind = 'add' | 'change' | 'unlink' | 'addDir' | 'unlinkDir';

export interface ChangeEvent {
  kind: ChangeKind;
  path: string;
}

export interface WatchHandle {
  close(): Promise<void>;
  /** How changes are observed: kernel notifications or periodic polling. */
  readonly mode: 'inotify' | 'polling';
  /**
   * Make sure a directory is watched. Watchers lose track when a path changes type in quick
   * succession (a file replaced by a directory); the engine calls this when it finds a directory
   * where the event did not announce one.
   */
  rewatch(path: string): void;
}

export interface WatchOptions {
  /** Return true for paths the watcher should not descend into or report. */
  ignored: (path: string, isDir: boolean | undefined) => boolean;
  onEvents: (events: ChangeEvent[]) => void;
  onError: (error: Error) => void;
  /** Warnings meant for the user (e.g. falling back to polling), one line each. */
  onWarning: (message: string) => void;
  forcePolling: boolean;
  pollIntervalMs: number;
}

export interface WriteOptions {
  mode: number;
  mtimeMs: number;
}

export interface SyncTransport {
  /** Human-readable location for messages (a directory, `vm:NAME:/workspace`). */
  readonly description: string;
  /** Make sure the root exists; called once before anything else. */
  init(): Promise<void>;
  /** lstat semantics: a symlink is reported as a symlink. null when the path does not exist. */
  stat(path: string): Promise<EntryInfo | null>;
  /** Children of a directory with their lstat info; [] when the directory is gone. */
  readDir(path: string): Promise<DirEntry[]>;
  /** Hex content digest of a regular file (the same algorithm on every transport). */
  hash(path: string): Promise<string>;
  /** Whole contents of a small file (ignore files, files under the streaming threshold). */
  readFile(path: string): Promise<Buffer>;
  /** A stream of a file's bytes, for large files. */
  openRead(path: string): Promise<Readable>;
  /** Replace `path` atomically with these bytes: readers see the old file or the new, never a torn one. */
  writeFile(path: string, data: Buffer | Readable, options: WriteOptions): Promise<EntryInfo>;
  /**
   * Optional fast path: replace `path` atomically with a copy of the same path on `from`, without the
   * bytes passing through the engine. Returns null when this transport cannot read `from` directly
   * (another kind of transport); the engine then streams. Only used when no content digest is needed.
   */
  copyFrom?(from: SyncTransport, path: string, options: WriteOptions): Promise<EntryInfo | null>;
  mkdir(path: string, mode: number): Promise<void>;
  /** Replace `path` atomically with a symlink pointing at `target` (stored verbatim). */
  symlink(path: string, target: string): Promise<EntryInfo>;
  /** Remove a file, link or directory tree. No error when it is already gone. */
  remove(path: string): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  chmod(path: string, mode: number): Promise<void>;
  /** Set a file's modification time (after a hash showed equal content), so later scans skip hashing. */
  setMtime(path: string, mtimeMs: number): Promise<void>;
  /** Report changes made on this side by someone else (needed for two-way sync). */
  watch(options: WatchOptions): Promise<WatchHandle>;
}

/** Files at or above this size are streamed, never held in memory whole. */
export const STREAM_THRESHOLD_BYTES = 1 << 20;

export const HASH_ALGORITHM = 'sha256';
