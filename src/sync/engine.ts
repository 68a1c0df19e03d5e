/**
 * The sync engine: keeps a target tree (the environment's copy) in step with a source tree (the host
 * project), one-way or two-way, over two SyncTransports. It never touches a filesystem itself.
 *
 * The engine is state-based rather than event-replaying: a watcher event only says "look at this
 * path again". Applying a change re-reads both sides, so coalesced, reordered or duplicated events
 * (rename storms, editor saves that write a temp file and rename it over) all converge on what is on
 * disk now. The same property makes echo harmless in two-way mode: our own write to side B shows up
 * as an event on B, but B then matches the agreed state, so nothing goes back to A.
 */
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { Transform, type Readable } from 'node:stream';
import { AgreedState, type AgreedEntry, type SideStamp } from './agreed-state.js';
import { IGNORE_FILE_NAMES, IgnoreMatcher } from './ignore.js';
import {
  HASH_ALGORITHM,
  STREAM_THRESHOLD_BYTES,
  type ChangeEvent,
  type DirEntry,
  type EntryInfo,
  type SyncTransport,
  type WatchHandle,
} from './transport.js';

export type SyncDirection = 'one-way' | 'two-way';
export type SyncState = 'stopped' | 'starting' | 'syncing' | 'in-sync';

export interface ConflictRecord {
  /** The path both sides changed; it now holds the host's version. */
  path: string;
  /** Where the environment's version was kept. */
  conflictPath: string;
  at: string;
}

export interface SyncStatus {
  state: SyncState;
  direction: SyncDirection;
  /** Paths observed but not yet applied. */
  pending: number;
  conflicts: ConflictRecord[];
  lastError: string | null;
  /** How the host side is watched; null before start. */
  watchMode: 'inotify' | 'polling' | null;
  /** Paths applied (copied, created, removed) since start. */
  applied: number;
}

export interface SyncEngineOptions {
  /** The host side: the project tree. */
  source: SyncTransport;
  /** The environment side. */
  target: SyncTransport;
  direction?: SyncDirection;
  /** workspace.ignore patterns from env.yaml (gitignore syntax, relative to the project root). */
  ignore?: readonly string[];
  /** Directory for this pair's persisted state (the agreed state of two-way sync). */
  stateDir?: string;
  /**
   * How long to gather watcher events before applying them. Short: one save is one event, and
   * the bench (bench/sync/latency.bench.mjs) shows the window is most of the latency.
   */
  batchWindowMs?: number;
  /**
   * Parallel file copies and hashes (the reads and writes of file contents). 64: in interleaved runs
   * against rsync (bench/sync/initial.bench.mjs) it beat 16 every time, by 2–14%.
   */
  concurrency?: number;
  /** Poll instead of inotify (tests, and filesystems without inotify). */
  forcePolling?: boolean;
  pollIntervalMs?: number;
  /** Clock for conflict names (tests). */
  now?: () => Date;
  /** false: one full sync and no watching (a one-shot copy; flush() rescans). Default true. */
  watch?: boolean;
}

export interface SyncEngineEvents {
  warning: [message: string];
  error: [error: Error];
  conflict: [conflict: ConflictRecord];
  applied: [paths: string[]];
  state: [status: SyncStatus];
}

interface PendingChange {
  /** Reconcile the whole subtree, not only the entry. */
  deep: boolean;
}

type Side = 'source' | 'target';

/** Modification times travel through doubles and utimes; closer than this counts as equal. */
const MTIME_TOLERANCE_MS = 1;

function sameTime(a: number, b: number): boolean {
  return Math.abs(a - b) < MTIME_TOLERANCE_MS;
}

function joinPath(dir: string, name: string): string {
  return dir === '' ? name : `${dir}/${name}`;
}

function parentOf(path: string): string {
  const slash = path.lastIndexOf('/');
  return slash === -1 ? '' : path.slice(0, slash);
}

function baseName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

function isMissing(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException | null)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

function asError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}

/**
 * The part of the tree reconciling a path may touch: its own subtree, or for an ignore file, its
 * directory's (new rules make the engine look at the whole directory again).
 */
function reachOf(path: string): string {
  return (IGNORE_FILE_NAMES as readonly string[]).includes(baseName(path)) ? parentOf(path) : path;
}

function conflictStamp(date: Date): string {
  return date.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
}

class Semaphore {
  private active = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(private readonly limit: number) {}

  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.active++;
    try {
      return await task();
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }
}

export class SyncEngine extends EventEmitter<SyncEngineEvents> {
  private readonly source: SyncTransport;
  private readonly target: SyncTransport;
  private readonly direction: SyncDirection;
  private readonly matcher: IgnoreMatcher;
  private readonly batchWindowMs: number;
  private readonly copies: Semaphore;
  private readonly options: SyncEngineOptions;
  private readonly now: () => Date;

  private agreed: AgreedState | null = null;
  private readonly pending = new Map<string, PendingChange>();
  private inFlight = 0;
  private timer: NodeJS.Timeout | null = null;
  private draining: Promise<void> | null = null;
  private saveTimer: NodeJS.Timeout | null = null;
  private readonly watchers: WatchHandle[] = [];
  private sourceWatcher: WatchHandle | null = null;
  private targetWatcher: WatchHandle | null = null;
  private state: SyncState = 'stopped';
  private running = false;
  private readonly conflicts: ConflictRecord[] = [];
  private lastError: string | null = null;
  private appliedCount = 0;
  private batchApplied: string[] = [];

  constructor(options: SyncEngineOptions) {
    super();
    this.options = options;
    this.source = options.source;
    this.target = options.target;
    this.direction = options.direction ?? 'one-way';
    this.matcher = new IgnoreMatcher(options.ignore ?? []);
    this.batchWindowMs = options.batchWindowMs ?? 5;
    this.copies = new Semaphore(options.concurrency ?? 64);
    this.now = options.now ?? (() => new Date());
    if (this.direction === 'two-way' && !options.stateDir) {
      throw new Error('SyncEngine: two-way sync needs a stateDir for its agreed state');
    }
  }

  status(): SyncStatus {
    return {
      state: this.state,
      direction: this.direction,
      pending: this.pending.size + this.inFlight,
      conflicts: [...this.conflicts],
      lastError: this.lastError,
      watchMode: this.sourceWatcher?.mode ?? null,
      applied: this.appliedCount,
    };
  }

  /**
   * Start watching and run the initial full sync at the same time, then compare the trees once more:
   * nothing changed during the initial scan is missed. Events that arrive meanwhile are applied too.
   */
  async start(): Promise<void> {
    if (this.state !== 'stopped') throw new Error('SyncEngine: already started');
    this.setState('starting');
    await this.source.init();
    await this.target.init();
    if (this.direction === 'two-way') this.agreed = await AgreedState.load(this.options.stateDir!);
    await this.loadRootIgnoreFiles();
    const watchOptions = {
      forcePolling: this.options.forcePolling ?? false,
      pollIntervalMs: this.options.pollIntervalMs ?? 100,
      onWarning: (message: string) => this.emit('warning', message),
      onError: (error: Error) => this.recordError(error),
    };
    this.running = true;
    if (this.options.watch === false) {
      this.pending.set('', { deep: true });
      await this.drain();
      this.setState('in-sync');
      return;
    }
    const watching = (async () => {
      this.sourceWatcher = await this.source.watch({
        ...watchOptions,
        ignored: (path, isDir) => this.watchIgnores(path, isDir),
        onEvents: (events) => this.observe(events),
      });
      this.watchers.push(this.sourceWatcher);
      if (this.direction === 'two-way') {
        this.targetWatcher = await this.target.watch({
          ...watchOptions,
          ignored: (path, isDir) => this.watchIgnores(path, isDir),
          onEvents: (events) => this.observe(events),
        });
        this.watchers.push(this.targetWatcher);
      }
    })();
    // The watchers' initial scans (a watch per directory; chokidar also stats every file) run while
    // the initial sync copies, instead of before it: on a 10,000-file tree they took as long as the
    // copy. A change made before its directory was watched and after the copy read it would be
    // missed, so once both are done the trees are compared once more (metadata only, no copies).
    this.pending.set('', { deep: true });
    const copying = this.drain();
    await Promise.all([watching, copying]);
    this.pending.set('', { deep: true });
    await this.drain();
    this.setState(this.pending.size > 0 ? 'syncing' : 'in-sync');
  }

  async stop(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await Promise.all(this.watchers.splice(0).map((w) => w.close()));
    await this.draining;
    this.running = false;
    if (this.saveTimer) clearTimeout(this.saveTimer);
    this.saveTimer = null;
    this.persist();
    this.setState('stopped');
  }

  /**
   * Resolve once everything observed so far is applied. It then rescans both trees, so a change
   * the watcher has not reported yet (inotify delivery, a polling interval) is applied as well:
   * after flush(), the target matches what the source held when flush() was called.
   */
  async flush(): Promise<void> {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    await this.drain();
    this.pending.set('', { deep: true });
    await this.drain();
  }

  private setState(state: SyncState): void {
    if (this.state === state) return;
    this.state = state;
    this.emit('state', this.status());
  }

  private recordError(error: Error): void {
    this.lastError = error.message;
    this.emit('error', error);
  }

  private watchIgnores(path: string, isDir: boolean | undefined): boolean {
    // Without stats chokidar cannot say whether it is a directory; answer for a file, and the
    // directory-only rules get their say when chokidar asks again with stats.
    return this.matcher.ignores(path, isDir ?? false);
  }

  private observe(events: ChangeEvent[]): void {
    for (const event of events) {
      const isDir = event.kind === 'addDir' || event.kind === 'unlinkDir';
      if (this.matcher.ignores(event.path, isDir)) continue;
      const previous = this.pending.get(event.path);
      this.pending.set(event.path, { deep: isDir || (previous?.deep ?? false) });
    }
    if (this.pending.size === 0) return;
    if (this.state === 'in-sync') this.setState('syncing');
    if (!this.timer && !this.draining) {
      this.timer = setTimeout(() => {
        this.timer = null;
        void this.drain();
      }, this.batchWindowMs);
    }
  }

  private drain(): Promise<void> {
    if (this.draining) return this.draining;
    this.draining = (async () => {
      while (this.pending.size > 0) {
        if (this.state !== 'starting') this.setState('syncing');
        const batch = [...this.pending];
        this.pending.clear();
        this.inFlight = batch.length;
        await this.applyBatch(batch);
        this.inFlight = 0;
        const applied = this.batchApplied;
        this.batchApplied = [];
        if (applied.length > 0) this.emit('applied', applied);
        this.schedulePersist();
      }
    })().finally(() => {
      this.draining = null;
      // Events can arrive while start() is still syncing (a watcher falling back to polling asks for
      // a rescan): only start() itself ends the starting state.
      if (this.running && this.state !== 'starting') this.setState(this.pending.size > 0 ? 'syncing' : 'in-sync');
      if (this.pending.size > 0) void this.drain();
    });
    return this.draining;
  }

  /**
   * Apply one batch. Paths run in parallel unless one lies inside the other, and overlapping paths run
   * in the order they were first seen. The kind of event says nothing about how far a reconcile
   * reaches: a plain "change" on a directory whose other side is gone removes the subtree the other
   * side had seen, so it must never interleave with a reconcile of a path below it (two reconciles of
   * one file, each acting on what it read before the other acted, can resurrect a deleted tree).
   */
  private async applyBatch(batch: [string, PendingChange][]): Promise<void> {
    // The task of the item whose scope is exactly this path, and of every item at or below it.
    const atPath = new Map<string, Promise<void>>();
    const atOrBelow = new Map<string, Promise<void>>();
    const tasks: Promise<void>[] = [];
    for (const [path, change] of batch) {
      const scope = reachOf(path);
      const earlier: Promise<void>[] = [];
      const below = atOrBelow.get(scope);
      if (below) earlier.push(below);
      for (let dir = scope; dir !== ''; ) {
        dir = parentOf(dir);
        const above = atPath.get(dir);
        if (above) earlier.push(above);
      }
      const task = Promise.all(earlier).then(() => this.reconcileSafely(path, change.deep));
      tasks.push(task);
      atPath.set(scope, task);
      for (let dir = scope; ; dir = parentOf(dir)) {
        const previous = atOrBelow.get(dir);
        atOrBelow.set(dir, previous ? Promise.all([previous, task]).then(() => undefined) : task);
        if (dir === '') break;
      }
    }
    await Promise.all(tasks);
  }

  private async reconcileSafely(path: string, deep: boolean): Promise<void> {
    await this.lookingAgainOnVanish(path, deep, () => this.reconcile(path, deep));
    if (IGNORE_FILE_NAMES.includes(baseName(path) as (typeof IGNORE_FILE_NAMES)[number])) {
      try {
        // New ignore rules can un-ignore paths never synced: look at the directory again.
        if (await this.reloadIgnoreFile(path)) await this.reconcile(parentOf(path), true);
      } catch (error) {
        this.recordError(asError(error));
      }
    }
  }

  /**
   * Run one reconcile; if an entry vanished under it (deleted on either side while it worked), its
   * decision was made on a stale view, so reconcile the path once more from a fresh look.
   */
  private async lookingAgainOnVanish(path: string, deep: boolean, first: () => Promise<void>): Promise<void> {
    try {
      await first();
      return;
    } catch (error) {
      if (!isMissing(error)) {
        this.recordError(asError(error));
        return;
      }
    }
    try {
      await this.reconcile(path, deep);
    } catch (error) {
      this.recordError(asError(error));
    }
  }

  private async loadRootIgnoreFiles(): Promise<void> {
    for (const name of IGNORE_FILE_NAMES) await this.reloadIgnoreFile(name);
  }

  /** Re-read one ignore file from the source side; true when its rules changed. */
  private async reloadIgnoreFile(path: string): Promise<boolean> {
    const info = await this.source.stat(path);
    const content = info?.type === 'file' ? (await this.source.readFile(path)).toString('utf8') : null;
    const key = `${parentOf(path)}\0${baseName(path)}`;
    const previous = this.ignoreContents.get(key) ?? null;
    if (previous === content) return false;
    if (content === null) this.ignoreContents.delete(key);
    else this.ignoreContents.set(key, content);
    this.matcher.setIgnoreFile(parentOf(path), baseName(path), content);
    return true;
  }

  private readonly ignoreContents = new Map<string, string>();

  private async reconcile(path: string, deep: boolean): Promise<void> {
    const [a, b] = await Promise.all([this.source.stat(path), this.target.stat(path)]);
    if (!deep && path !== '') {
      // A directory behind a plain change event: the watcher may not know it is one.
      if (a?.type === 'dir') this.sourceWatcher?.rewatch(path);
      if (b?.type === 'dir') this.targetWatcher?.rewatch(path);
    }
    await this.reconcileEntry(path, a, b, deep);
  }

  private async reconcileEntry(path: string, a: EntryInfo | null, b: EntryInfo | null, deep: boolean): Promise<void> {
    if (path !== '') {
      const present = a ?? b;
      if (present && this.matcher.ignores(path, present.type === 'dir')) return;
    }
    if (this.direction === 'one-way') await this.reconcileOneWay(path, a, b, deep);
    else await this.reconcileTwoWay(path, a, b, deep);
  }

  // ---------------------------------------------------------------- one-way: the target mirrors the source

  private async reconcileOneWay(path: string, a: EntryInfo | null, b: EntryInfo | null, deep: boolean): Promise<void> {
    if (!a) {
      if (b) {
        await this.target.remove(path);
        this.noteApplied(path);
      }
      return;
    }
    if (a.type === 'dir') {
      if (b && b.type !== 'dir') await this.target.remove(path);
      if (!b || b.type !== 'dir') {
        await this.withParents(this.source, this.target, path, () => this.mkdirOn(this.target, path, a.mode));
        this.noteApplied(path);
        deep = true;
      } else if (b.mode !== a.mode) {
        await this.target.chmod(path, a.mode);
      }
      if (deep) await this.reconcileChildren(path);
      return;
    }
    if (b?.type === 'dir') {
      await this.target.remove(path);
      b = null;
    }
    if (a.type === 'symlink') {
      if (b?.type === 'symlink' && b.linkTarget === a.linkTarget) return;
      await this.withParents(this.source, this.target, path, () => this.target.symlink(path, a.linkTarget!));
      this.noteApplied(path);
      return;
    }
    if (b?.type === 'file' && b.size === a.size) {
      if (sameTime(b.mtimeMs, a.mtimeMs)) {
        if (b.mode !== a.mode) await this.target.chmod(path, a.mode);
        return;
      }
      const [hashA, hashB] = await Promise.all([this.hashOf(this.source, path), this.hashOf(this.target, path)]);
      if (hashA === hashB) {
        if (b.mode !== a.mode) await this.target.chmod(path, a.mode);
        await this.target.setMtime(path, a.mtimeMs);
        return;
      }
    }
    await this.copyFile(this.source, this.target, path, a);
    this.noteApplied(path);
  }

  /** Both sides' children of a directory, reconciled; subdirectories recurse. */
  private async reconcileChildren(dir: string): Promise<void> {
    const [sourceEntries, targetEntries] = await Promise.all([this.source.readDir(dir), this.target.readDir(dir)]);
    const sourceByName = new Map(sourceEntries.map((e) => [e.name, e]));
    const targetByName = new Map(targetEntries.map((e) => [e.name, e]));
    // Rules in this directory's ignore files decide about its children.
    for (const name of IGNORE_FILE_NAMES) {
      const entry = sourceByName.get(name);
      const known = this.ignoreContents.has(`${dir}\0${name}`);
      if ((entry?.type === 'file') || known) await this.reloadIgnoreFile(joinPath(dir, name));
    }
    const names = new Set<string>([...sourceByName.keys(), ...targetByName.keys()]);
    const tasks: Promise<void>[] = [];
    for (const name of names) {
      const path = joinPath(dir, name);
      const a: DirEntry | null = sourceByName.get(name) ?? null;
      const b: DirEntry | null = targetByName.get(name) ?? null;
      // Children are disjoint subtrees; the file I/O inside is bounded by the copy semaphore.
      tasks.push(this.lookingAgainOnVanish(path, true, () => this.reconcileEntry(path, a, b, true)));
    }
    await Promise.all(tasks);
  }

  // ---------------------------------------------------------------- two-way: agreed state and conflicts

  private async reconcileTwoWay(path: string, a: EntryInfo | null, b: EntryInfo | null, deep: boolean): Promise<void> {
    const agreed = this.agreed!;
    if (path === '') {
      await this.reconcileChildren('');
      return;
    }
    const base = agreed.get(path);
    const [sourceChanged, targetChanged] = await Promise.all([
      this.changedSince(this.source, 'source', path, a, base),
      this.changedSince(this.target, 'target', path, b, base),
    ]);
    if (!sourceChanged && !targetChanged) {
      if (deep && a?.type === 'dir' && b?.type === 'dir') await this.reconcileChildren(path);
      return;
    }
    if (sourceChanged && !targetChanged) return this.propagate('source', path, a, b, deep);
    if (targetChanged && !sourceChanged) return this.propagate('target', path, b, a, deep);

    // Both sides changed since they last agreed.
    if (!a && !b) {
      agreed.delete(path);
      return;
    }
    // A deletion against an edit: the edit wins, so no write is lost.
    if (!a) return this.propagate('target', path, b, a, deep);
    if (!b) return this.propagate('source', path, a, b, deep);
    if (a.type === 'dir' && b.type === 'dir') {
      agreed.set(path, { type: 'dir', mode: a.mode });
      if (b.mode !== a.mode) await this.target.chmod(path, a.mode);
      await this.reconcileChildren(path);
      return;
    }
    if (a.type === b.type && a.mode === b.mode) {
      if (a.type === 'symlink' && a.linkTarget === b.linkTarget) {
        agreed.set(path, { type: 'symlink', mode: a.mode, linkTarget: a.linkTarget! });
        return;
      }
      if (a.type === 'file') {
        const [hashA, hashB] = await Promise.all([this.hashOf(this.source, path), this.hashOf(this.target, path)]);
        if (hashA === hashB) {
          agreed.set(path, { type: 'file', mode: a.mode, hash: hashA, source: stamp(a), target: stamp(b) });
          return;
        }
      }
    }
    await this.keepBoth(path, a, deep);
  }

  /**
   * Both sides changed the path differently: the environment's version moves aside to
   * NAME.envy-conflict-TIMESTAMP (and syncs back to the host like any new file), the host's
   * version takes the name.
   */
  private async keepBoth(path: string, a: EntryInfo, deep: boolean): Promise<void> {
    const stampText = conflictStamp(this.now());
    let conflictPath = `${path}.envy-conflict-${stampText}`;
    for (let n = 2; (await this.source.stat(conflictPath)) || (await this.target.stat(conflictPath)); n++) {
      conflictPath = `${path}.envy-conflict-${stampText}-${n}`;
    }
    await this.target.rename(path, conflictPath);
    this.agreed!.delete(path);
    await this.propagate('source', path, a, null, deep);
    await this.reconcile(conflictPath, true);
    const record: ConflictRecord = { path, conflictPath, at: this.now().toISOString() };
    this.conflicts.push(record);
    this.emit('conflict', record);
  }

  /** Did this side change the path since the agreed state? Hashes only when size or time moved. */
  private async changedSince(
    side: SyncTransport,
    sideName: Side,
    path: string,
    info: EntryInfo | null,
    base: AgreedEntry | undefined,
  ): Promise<boolean> {
    if (!info) return base !== undefined;
    if (!base || base.type !== info.type || base.mode !== info.mode) return true;
    if (info.type === 'dir') return false;
    if (info.type === 'symlink') return info.linkTarget !== base.linkTarget;
    const seen = base[sideName];
    if (seen && seen.size === info.size && sameTime(seen.mtimeMs, info.mtimeMs)) return false;
    // Equal content has equal size: a different size is a change without reading the file.
    if (seen && seen.size !== info.size) return true;
    const digest = await this.hashOf(side, path);
    if (digest !== base.hash) return true;
    // Touched but not changed: remember the new stamp so the next look needs no hash.
    this.agreed!.set(path, { ...base, [sideName]: stamp(info) });
    return false;
  }

  /** Make `to` match `from` for one path (from = the side that changed), updating the agreed state. */
  private async propagate(fromName: Side, path: string, fromInfo: EntryInfo | null, toInfo: EntryInfo | null, deep: boolean): Promise<void> {
    const agreed = this.agreed!;
    const from = fromName === 'source' ? this.source : this.target;
    const to = fromName === 'source' ? this.target : this.source;
    if (!fromInfo) {
      if (!toInfo) {
        agreed.delete(path);
        return;
      }
      if (toInfo.type === 'dir') {
        await this.removeDirKeepingUnseen(to, path);
        return;
      }
      await to.remove(path);
      agreed.delete(path);
      this.noteApplied(path);
      return;
    }
    if (toInfo && toInfo.type !== fromInfo.type && (toInfo.type === 'dir' || fromInfo.type === 'dir')) {
      await to.remove(path);
      toInfo = null;
    }
    if (fromInfo.type === 'dir') {
      if (!toInfo) {
        await this.withParents(from, to, path, () => this.mkdirOn(to, path, fromInfo.mode));
        this.noteApplied(path);
        deep = true;
      } else if (toInfo.mode !== fromInfo.mode) {
        await to.chmod(path, fromInfo.mode);
      }
      agreed.set(path, { type: 'dir', mode: fromInfo.mode });
      if (deep) await this.reconcileChildren(path);
      return;
    }
    if (fromInfo.type === 'symlink') {
      const written = await this.withParents(from, to, path, () => to.symlink(path, fromInfo.linkTarget!));
      agreed.set(path, { type: 'symlink', mode: written.mode, linkTarget: fromInfo.linkTarget! });
      this.noteApplied(path);
      return;
    }
    const { written, hash } = await this.copyFile(from, to, path, fromInfo);
    const fromStamp = stamp(fromInfo);
    const toStamp = stamp(written);
    agreed.set(path, {
      type: 'file',
      mode: fromInfo.mode,
      hash,
      source: fromName === 'source' ? fromStamp : toStamp,
      target: fromName === 'source' ? toStamp : fromStamp,
    });
    this.noteApplied(path);
  }

  /**
   * A directory deleted on one side: remove from the other side only what the deleting side had
   * seen (entries matching the agreed state). Anything newer is kept and syncs back, recreating the
   * directory, because a deletion must never take an unseen write with it.
   */
  private async removeDirKeepingUnseen(side: SyncTransport, path: string): Promise<void> {
    const sideName: Side = side === this.source ? 'source' : 'target';
    const children = await side.readDir(path);
    for (const child of children) {
      const childPath = joinPath(path, child.name);
      if (this.matcher.ignores(childPath, child.type === 'dir')) continue;
      const otherSide = sideName === 'source' ? 'target' : 'source';
      const otherInfo = await (otherSide === 'source' ? this.source : this.target).stat(childPath);
      if (sideName === 'source') await this.reconcileEntry(childPath, child, otherInfo, true);
      else await this.reconcileEntry(childPath, otherInfo, child, true);
    }
    const remaining = (await side.readDir(path)).filter((c) => !this.matcher.ignores(joinPath(path, c.name), c.type === 'dir'));
    const otherInfo = await (sideName === 'source' ? this.target : this.source).stat(path);
    if (remaining.length === 0 && !otherInfo) {
      await side.remove(path);
      this.agreed!.delete(path);
      this.noteApplied(path);
    } else {
      const info = await side.stat(path);
      if (info) this.agreed!.set(path, { type: 'dir', mode: info.mode });
    }
  }

  // ---------------------------------------------------------------- shared helpers

  private async mkdirOn(side: SyncTransport, path: string, mode: number): Promise<void> {
    await side.mkdir(path, mode);
  }

  /**
   * Run an operation on `to`; if its parent directory is missing there (the events for the parent
   * have not been applied yet, or someone removed it), create the parents and try once more.
   */
  private async withParents<T>(from: SyncTransport, to: SyncTransport, path: string, operation: () => Promise<T>): Promise<T> {
    try {
      return await operation();
    } catch (error) {
      if (!isMissing(error) || parentOf(path) === '') throw error;
      // ENOENT can also mean the entry vanished on `from`: then the change is stale, and creating
      // directories on `to` would resurrect a tree someone just deleted.
      if ((await to.stat(parentOf(path)))?.type === 'dir') throw error;
      const parts = parentOf(path).split('/');
      for (let i = 1; i <= parts.length; i++) {
        const dir = parts.slice(0, i).join('/');
        const existing = await to.stat(dir);
        if (existing?.type === 'dir') continue;
        const source = await from.stat(dir);
        if (source?.type !== 'dir') throw error;
        if (existing) await to.remove(dir);
        await this.mkdirOn(to, dir, source.mode);
        this.agreed?.set(dir, { type: 'dir', mode: source.mode });
      }
    }
    return operation();
  }

  /** Copy one regular file; the digest is computed on the way through when two-way needs it. */
  private async copyFile(from: SyncTransport, to: SyncTransport, path: string, info: EntryInfo): Promise<{ written: EntryInfo; hash: string }> {
    const wantHash = this.direction === 'two-way';
    const options = { mode: info.mode, mtimeMs: info.mtimeMs };
    let hash = '';
    const written = await this.copies.run(() => this.withParents(from, to, path, async () => {
      if (!wantHash && to.copyFrom) {
        const copied = await to.copyFrom(from, path, options);
        if (copied) return copied;
      }
      const digest = wantHash ? createHash(HASH_ALGORITHM) : null;
      let result: EntryInfo;
      if (info.size < STREAM_THRESHOLD_BYTES) {
        const bytes = await from.readFile(path);
        digest?.update(bytes);
        result = await to.writeFile(path, bytes, options);
      } else {
        const raw = await from.openRead(path);
        let stream: Readable = raw;
        if (digest) {
          stream = raw.pipe(
            new Transform({
              transform(chunk: Buffer, _encoding, callback) {
                digest.update(chunk);
                callback(null, chunk);
              },
            }),
          );
        }
        try {
          result = await to.writeFile(path, stream, options);
        } finally {
          // pipe() does not pass a failure back upstream: make sure the file handle is released.
          raw.destroy();
        }
      }
      hash = digest?.digest('hex') ?? '';
      return result;
    }));
    return { written, hash };
  }

  /** Content hashes read whole files: bounded together with the copies. */
  private hashOf(side: SyncTransport, path: string): Promise<string> {
    return this.copies.run(() => side.hash(path));
  }

  private noteApplied(path: string): void {
    this.appliedCount++;
    this.batchApplied.push(path);
  }

  private schedulePersist(): void {
    if (!this.agreed?.isDirty || this.saveTimer) return;
    // Coalesced: one save per burst of batches, not one per saved file.
    this.saveTimer = setTimeout(() => {
      this.saveTimer = null;
      this.persist();
    }, 200);
  }

  private persist(): void {
    try {
      this.agreed?.save();
    } catch (error) {
      this.recordError(error instanceof Error ? error : new Error(String(error)));
    }
  }
}

function stamp(info: EntryInfo): SideStamp {
  return { size: info.size, mtimeMs: info.mtimeMs };
}
