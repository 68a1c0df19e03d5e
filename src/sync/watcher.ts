/**
 * chokidar over a local tree, with the fallback to polling that large trees need: inotify watches are
 * a per-user kernel budget (fs.inotify.max_user_watches), and when it runs out the watcher reports
 * ENOSPC (EMFILE when the inotify instances run out). We then warn once, naming the limit and the fix,
 * and start again with polling, which has no such budget but costs CPU and latency.
 */
import { readFileSync } from 'node:fs';
import { basename, isAbsolute, join, relative, sep } from 'node:path';
import { watch as chokidarWatch, type FSWatcher } from 'chokidar';
import type { Stats } from 'node:fs';
import type { ChangeEvent, ChangeKind, WatchHandle, WatchOptions } from './transport.js';

const WATCH_LIMIT_CODES = new Set(['ENOSPC', 'EMFILE']);

export function isWatchLimitError(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException | null)?.code;
  return typeof code === 'string' && WATCH_LIMIT_CODES.has(code);
}

function readLimit(file: string): number | null {
  try {
    const value = Number(readFileSync(file, 'utf8').trim());
    return Number.isFinite(value) ? value : null;
  } catch {
    return null;
  }
}

/**
 * The watch budgets that apply to this process. Since Linux 5.11 the budget is counted per user
 * namespace as well: /proc/sys/user/max_inotify_watches is this namespace's own cap (a container or
 * sandbox can set it lower than the host), while fs.inotify.max_user_watches always shows the host's.
 */
export function inotifyWatchLimits(): { host: number | null; namespace: number | null } {
  return { host: readLimit('/proc/sys/fs/inotify/max_user_watches'), namespace: readLimit('/proc/sys/user/max_inotify_watches') };
}

export function watchLimitWarning(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code ?? 'error';
  const { host, namespace } = inotifyWatchLimits();
  const namespaceIsLower = namespace !== null && (host === null || namespace < host);
  const limits = namespaceIsLower
    ? `this user namespace allows ${namespace} watches (/proc/sys/user/max_inotify_watches); fs.inotify.max_user_watches = ${host ?? 'unknown'}`
    : `fs.inotify.max_user_watches = ${host ?? 'unknown'}`;
  const fix = namespaceIsLower
    ? 'Fix: raise /proc/sys/user/max_inotify_watches where this namespace is set up, and check the host with '
    : 'Fix: ';
  return (
    `file watching hit the inotify limit (${code}; ${limits}): ` +
    `switched to polling, which is slower and uses more CPU. ${fix}` +
    '`sudo sysctl fs.inotify.max_user_watches=524288` and, to keep it after a reboot, ' +
    "`echo fs.inotify.max_user_watches=524288 | sudo tee /etc/sysctl.d/90-envy-inotify.conf`"
  );
}

const CHOKIDAR_EVENTS = new Set<string>(['add', 'change', 'unlink', 'addDir', 'unlinkDir']);

export class TreeWatcher implements WatchHandle {
  private watcher: FSWatcher | null = null;
  private polling: boolean;
  private closed = false;
  private fellBack = false;
  /** Settles the wait for the current chokidar instance's `ready` when that instance is dropped. */
  private abandonWait: (() => void) | null = null;
  /** The switch to polling, once started: closing the inotify watcher and a polling one becoming ready. */
  private switching: Promise<void> | null = null;

  constructor(
    private readonly root: string,
    private readonly options: WatchOptions,
  ) {
    this.polling = options.forcePolling;
  }

  get mode(): 'inotify' | 'polling' {
    return this.polling ? 'polling' : 'inotify';
  }

  async start(): Promise<void> {
    const watcher = chokidarWatch(this.root, {
      ignoreInitial: true,
      followSymlinks: false,
      // chokidar's atomic mode delays every unlink by 100 ms to guess at editor saves; the engine
      // re-reads the file state when it applies a change, so it gains nothing from the guess.
      atomic: false,
      usePolling: this.polling,
      interval: this.options.pollIntervalMs,
      binaryInterval: this.options.pollIntervalMs,
      ignored: (path: string, stats?: Stats) => {
        const rel = this.relativePath(path);
        if (rel === null || rel === '') return false;
        // With inotify, only directories are watched: a directory's watch reports every change to the
        // entries in it, by name (the raw events below), and the engine only needs "look at this path
        // again". chokidar would otherwise add a watch (and a Node FSWatcher) per file: on a
        // 10,000-file tree that was 60% of its ready time and 50 times the inotify watches. Polling
        // has no directory events, so there files are watched.
        if (!this.polling && stats && !stats.isDirectory()) return true;
        return this.options.ignored(rel, stats ? stats.isDirectory() : undefined);
      },
    });
    this.watcher = watcher;
    watcher.on('all', (event: string, path: string) => {
      if (!CHOKIDAR_EVENTS.has(event)) return;
      const rel = this.relativePath(path);
      if (rel === null) return;
      this.options.onEvents([{ kind: event as ChangeKind, path: rel }]);
    });
    // chokidar's own events miss some changes: a mode change on a file read since its last write
    // (it filters on atime), a dangling symlink (it cannot realpath it), and a path replaced by a
    // different type in quick succession. The kernel's raw notification still names the entry, so it
    // becomes a "look again" event; the engine re-reads the path, so a spurious one costs one lstat.
    watcher.on('raw', (_event: string, name: string | null, details: unknown) => {
      const watched = (details as { watchedPath?: string } | null)?.watchedPath;
      if (this.polling || !name || !watched) return;
      // A directory's watcher names a child; a file's watcher names the file itself.
      const paths = basename(watched) === name ? [watched, join(watched, name)] : [join(watched, name)];
      const events: ChangeEvent[] = [];
      for (const path of paths) {
        const rel = this.relativePath(path);
        if (rel !== null && rel !== '') events.push({ kind: 'change', path: rel });
      }
      if (events.length > 0) this.options.onEvents(events);
    });
    watcher.on('error', (error: unknown) => {
      void this.handleError(error instanceof Error ? error : new Error(String(error)));
    });
    await new Promise<void>((resolve) => {
      watcher.once('ready', () => resolve());
      this.abandonWait = resolve;
    });
    // The kernel can refuse watches during chokidar's initial scan, before `ready`: that instance was
    // then replaced by a polling one and will never be ready. Ready means the replacement is.
    if (this.watcher !== watcher && this.switching) await this.switching;
  }

  /** Route a watcher error: a watch-limit error switches to polling; the rest go to the caller. */
  async handleError(error: Error): Promise<void> {
    if (this.closed) return;
    if (isWatchLimitError(error) && (!this.polling || this.fellBack)) {
      // Stragglers from the inotify watcher we already replaced.
      if (this.fellBack) return;
      this.fellBack = true;
      this.options.onWarning(watchLimitWarning(error));
      this.polling = true;
      const old = this.watcher;
      this.watcher = null;
      this.switching = (async () => {
        this.abandonWait?.();
        await old?.close();
        if (this.closed) return;
        await this.start();
        // Changes made while no watcher ran were not seen: ask for a rescan of the whole tree.
        this.options.onEvents([{ kind: 'addDir', path: '' }]);
      })();
      await this.switching;
      return;
    }
    this.options.onError(error);
  }

  rewatch(path: string): void {
    const abs = join(this.root, path);
    if (!this.watcher || this.polling || this.watcher.getWatched()[abs] !== undefined) return;
    // chokidar still holds the path as a file: drop that, then watch it as the directory it is.
    this.watcher.unwatch(abs);
    this.watcher.add(abs);
  }

  /** The chokidar instance, so tests can feed it the errors the kernel gives under pressure. */
  get underlying(): FSWatcher | null {
    return this.watcher;
  }

  async close(): Promise<void> {
    this.closed = true;
    const watcher = this.watcher;
    this.watcher = null;
    this.abandonWait?.();
    await watcher?.close();
  }

  private relativePath(path: string): string | null {
    const rel = relative(this.root, path);
    if (rel === '..' || rel.startsWith(`..${sep}`) || isAbsolute(rel)) return null;
    return sep === '/' ? rel : rel.split(sep).join('/');
  }
}

export async function watchTree(root: string, options: WatchOptions): Promise<TreeWatcher> {
  const watcher = new TreeWatcher(root, options);
  await watcher.start();
  return watcher;
}

export type { ChangeEvent };
