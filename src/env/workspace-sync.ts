/**
 * `workspace.sync: watch` for an environment: a private copy of the project under the environment's
 * state dir, bind-mounted into it in place of the project, kept in step by the sync engine running in
 * a small detached process per environment (`envy __sync ID`).
 *
 * Why a process of its own: the copy must follow the host tree while no envy command runs, and envy
 * has no daemon. It lives exactly as long as the environment: `down` stops it, and it exits by itself
 * when it sees the environment gone (a crash, `kill`, a reboot leaves nothing behind to clean up).
 *
 * How the CLI talks to it, without a socket (a unix socket path under a deep state dir can exceed the
 * 108-byte limit): it writes its status to a file (atomically, on every state change), and a flush is
 * a request file plus SIGUSR1. The process snapshots the request files, flushes, then removes them:
 * the flush began after the request existed, so a removed request means everything the host held
 * when it was made has been applied.
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EnvyError, ExitCode } from '../errors.js';
import { packageRoot } from '../package-root.js';
import { writeFileAtomic } from '../state/atomic.js';
import { environmentPaths, readRecord, type EnvironmentRecord } from '../state/environments.js';
import { acquireLock, isAlive, terminateOwner, type LockOwner } from '../state/lock.js';
import { createHash } from 'node:crypto';
import type { BackendSpec, EnvSpec, WorkspaceSpec } from '../config/types.js';
import type { MountRequest } from '../runtime/types.js';
import type { SyncEngine, SyncStatus } from '../sync/engine.js';
import type { SyncTransport } from '../sync/transport.js';

export interface WorkspaceSyncPaths {
  /** The private copy the environment sees at workspace.path. */
  copy: string;
  /** The engine's persisted state (the agreed state of two-way sync). */
  state: string;
  /** Held by the running sync process (pid + start time). */
  lock: string;
  status: string;
  requests: string;
  log: string;
}

export function workspaceSyncPaths(id: string): WorkspaceSyncPaths {
  const paths = environmentPaths(id);
  return {
    copy: join(paths.root, 'workspace'),
    state: join(paths.root, 'sync'),
    lock: join(paths.run, 'sync.lock'),
    status: join(paths.run, 'sync-status.json'),
    requests: join(paths.run, 'sync-requests'),
    log: join(paths.logs, 'sync.log'),
  };
}

/** What `envy status` and `envy sync` show. */
export interface WorkspaceSyncReport extends Partial<SyncStatus> {
  running: boolean;
  pid?: number;
  updatedAt?: string;
}

function readOwner(id: string): LockOwner | undefined {
  try {
    const owner = JSON.parse(readFileSync(workspaceSyncPaths(id).lock, 'utf8')) as LockOwner;
    return isAlive(owner) ? owner : undefined;
  } catch {
    return undefined;
  }
}

export function syncReport(id: string): WorkspaceSyncReport {
  const owner = readOwner(id);
  let status: Partial<SyncStatus> & { updatedAt?: string } = {};
  try {
    status = JSON.parse(readFileSync(workspaceSyncPaths(id).status, 'utf8')) as typeof status;
  } catch {
    // not written yet
  }
  if (!owner) return { ...status, running: false, state: 'stopped', pending: 0 };
  return { ...status, running: true, pid: owner.pid };
}

/** One line for people: `in sync`, `syncing 12 files`, `2 conflicts`, `stopped`. */
export function describeSync(report: WorkspaceSyncReport): string {
  if (!report.running) return 'stopped';
  const parts: string[] = [];
  if (report.state === 'starting') parts.push('initial sync');
  else if ((report.pending ?? 0) > 0 || report.state === 'syncing') parts.push(`syncing ${report.pending ?? 0} file${report.pending === 1 ? '' : 's'}`);
  else parts.push('in sync');
  const conflicts = report.conflicts?.length ?? 0;
  if (conflicts > 0) parts.push(`${conflicts} conflict${conflicts === 1 ? '' : 's'}`);
  if (report.lastError) parts.push(`error: ${report.lastError}`);
  return parts.join(', ');
}

/** Start the environment's sync process unless one runs; resolves once it holds its lock. */
export async function startWorkspaceSync(id: string): Promise<void> {
  if (readOwner(id)) return;
  const paths = workspaceSyncPaths(id);
  mkdirSync(paths.copy, { recursive: true });
  mkdirSync(join(paths.log, '..'), { recursive: true });
  mkdirSync(paths.requests, { recursive: true });
  const log = openSync(paths.log, 'a');
  try {
    const child = spawn(process.execPath, [join(packageRoot(), 'bin', 'envy.js'), '__sync', id], {
      detached: true,
      stdio: ['ignore', log, log],
      env: process.env,
    });
    child.unref();
    const deadline = Date.now() + 10_000;
    while (!readOwner(id)) {
      if (child.exitCode !== null || Date.now() > deadline) {
        throw new EnvyError('INTERNAL', `the workspace sync process for ${id} did not start`, { hint: `its log: ${paths.log}` });
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  } finally {
    closeSync(log);
  }
}

/**
 * Wait until the sync process has applied everything the host held when this was called (the initial
 * sync included). Fails when it is not running or dies while we wait.
 */
export async function flushWorkspaceSync(id: string, options: { timeoutMs?: number } = {}): Promise<WorkspaceSyncReport> {
  const owner = readOwner(id);
  if (!owner) {
    throw new EnvyError('STATE', `the workspace sync of ${id} is not running`, { hint: 'envy up starts it', exitCode: ExitCode.CommandFailed });
  }
  const paths = workspaceSyncPaths(id);
  mkdirSync(paths.requests, { recursive: true });
  const request = join(paths.requests, `${process.pid}-${Math.random().toString(36).slice(2)}`);
  writeFileSync(request, '');
  try {
    process.kill(owner.pid, 'SIGUSR1');
    const deadline = Date.now() + (options.timeoutMs ?? Infinity);
    while (existsSync(request)) {
      if (!isAlive(owner)) {
        const why = syncReport(id).lastError;
        throw new EnvyError('STATE', `the workspace sync process of ${id} exited before the flush finished${why ? `: ${why}` : ''}`, { hint: `its log: ${paths.log}` });
      }
      if (Date.now() > deadline) throw new EnvyError('BUSY', `the workspace sync of ${id} did not finish within ${options.timeoutMs} ms`, { hint: `envy sync shows what it is doing; its log: ${paths.log}` });
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  } finally {
    rmSync(request, { force: true });
  }
  return syncReport(id);
}

/** Stop the sync process (SIGTERM, then SIGKILL after `graceMs`). */
export async function stopWorkspaceSync(id: string, graceMs = 5_000): Promise<void> {
  const owner = readOwner(id);
  if (owner) await terminateOwner(owner, graceMs);
}

/**
 * The body of `envy __sync ID`: sync the project into the environment's copy until stopped or until
 * the environment is gone. Output goes to the sync log.
 */
export async function runWorkspaceSync(id: string): Promise<number> {
  const record = readRecord(id);
  if (!record?.sync) {
    process.stderr.write(`envy __sync: environment ${id} has no workspace sync configured\n`);
    return 2;
  }
  const paths = workspaceSyncPaths(id);
  let lock;
  try {
    lock = await acquireLock(paths.lock, { purpose: 'workspace sync', timeoutMs: 0 });
  } catch {
    return 0; // another sync process of this environment runs
  }
  const log = (line: string): void => {
    process.stderr.write(`${new Date().toISOString()} ${line}\n`);
  };
  log('sync process started');
  // A flush request can come while the target is still being reached (a VM's sync agent is started
  // first): SIGUSR1 would end the process by default. Requests are served after the initial sync.
  const early = (): void => undefined;
  process.on('SIGUSR1', early);
  const { SyncEngine, LocalTransport } = await import('../sync/index.js');
  let target: SyncSide;
  try {
    target = record.sync.guest ? await guestSide(id, record, record.sync.guest, log) : await localSide(id, record, paths.copy);
  } catch (error) {
    log(`error: ${(error as Error).message}`);
    writeFileAtomic(paths.status, `${JSON.stringify({ state: 'stopped', pending: 0, conflicts: [], lastError: (error as Error).message, updatedAt: new Date().toISOString() })}\n`);
    lock.release();
    return 1;
  }
  const engine = new SyncEngine({
    source: new LocalTransport(record.sync.source),
    target: target.transport,
    direction: record.sync.direction,
    ignore: record.sync.ignore,
    stateDir: target.stateDir,
  });
  // A VM's volumes and binds: an engine each, beside the workspace's, over the same connection.
  const mounts = (record.sync.mounts ?? []).map(
    (mount) =>
      new SyncEngine({
        source: new LocalTransport(mount.source),
        target: target.transportAt(mount.guest),
        direction: mount.direction,
        stateDir: mountStateDir(target.stateDir, mount.guest),
      }),
  );
  const engines = [engine, ...mounts];
  const status = (): SyncStatus => combinedStatus(engines);
  let lastWrite = 0;
  let writeTimer: NodeJS.Timeout | undefined;
  const writeStatus = (): void => {
    if (writeTimer) return;
    // Coalesce bursts (thousands of files) into one write per 100 ms.
    const wait = Math.max(0, lastWrite + 100 - Date.now());
    writeTimer = setTimeout(() => {
      writeTimer = undefined;
      lastWrite = Date.now();
      writeFileAtomic(paths.status, `${JSON.stringify({ ...status(), updatedAt: new Date().toISOString() })}\n`);
    }, wait);
  };
  for (const each of engines) {
    each.on('state', writeStatus);
    each.on('applied', writeStatus);
    each.on('warning', (message) => log(`warning: ${message}`));
    each.on('error', (error) => {
      log(`error: ${error.message}`);
      writeStatus();
    });
    each.on('conflict', (conflict) => {
      log(`conflict: ${conflict.path} changed on both sides; the environment's version is ${conflict.conflictPath}`);
      writeStatus();
    });
  }

  let stopping: Promise<void> | undefined;
  let finish!: () => void;
  const done = new Promise<void>((resolve) => (finish = resolve));
  const stop = (why: string): Promise<void> =>
    (stopping ??= (async () => {
      log(`stopping: ${why}`);
      stopWatching();
      for (const each of engines) await each.stop().catch((error: Error) => log(`error while stopping: ${error.message}`));
      target.close();
      if (writeTimer) clearTimeout(writeTimer);
      writeFileAtomic(paths.status, `${JSON.stringify({ ...status(), updatedAt: new Date().toISOString() })}\n`);
      lock.release();
      finish();
    })());

  let flushing = false;
  let again = false;
  const serveFlushes = async (): Promise<void> => {
    if (flushing) {
      again = true;
      return;
    }
    flushing = true;
    try {
      do {
        again = false;
        const requests = readdirSync(paths.requests);
        if (requests.length === 0) continue;
        for (const each of engines) await each.flush();
        writeFileAtomic(paths.status, `${JSON.stringify({ ...status(), updatedAt: new Date().toISOString() })}\n`);
        for (const name of requests) rmSync(join(paths.requests, name), { force: true });
      } while (again);
    } catch (error) {
      log(`error while flushing: ${(error as Error).message}`);
    } finally {
      flushing = false;
    }
  };

  // Requests made before the engine started are served once the initial sync is done.
  process.removeListener('SIGUSR1', early);
  process.on('SIGUSR1', () => {
    if (status().state !== 'starting' && status().state !== 'stopped') void serveFlushes();
  });
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGHUP', () => void stop('SIGHUP'));

  const stopWatching = target.watchGone((why) => void stop(why));

  log(`syncing ${record.sync.source} -> ${target.transport.description} (${record.sync.direction})`);
  for (const mount of record.sync.mounts ?? []) log(`syncing ${mount.source} -> ${mount.guest} in the VM (${mount.direction})`);
  try {
    for (const each of engines) await each.start();
  } catch (error) {
    log(`error: the initial sync failed: ${(error as Error).message}`);
    await stop('the initial sync failed');
    return 1;
  }
  log(`initial sync done: ${status().applied} paths applied`);
  writeStatus();
  await serveFlushes();
  await done;
  return 0;
}

/** The environment's side of the sync: where the files go, and how to tell that the environment is gone. */
interface SyncSide {
  transport: SyncTransport;
  /** Another directory on the same side (a VM's volumes and binds). */
  transportAt(path: string): SyncTransport;
  /** The engine's persisted state for this pair. */
  stateDir: string;
  /** Call `onGone` once the environment is gone; returns a function that stops looking. */
  watchGone(onGone: (why: string) => void): () => void;
  close(): void;
}

/**
 * A namespace environment: the private copy. Its init is checked every second. `up` starts this
 * process just before the environment, so "not running" alone means nothing at first: it counts once
 * the environment has been seen running, or once its pid file is newer than this process (it started
 * and died between two checks), or after a minute in which it never came up.
 */
async function localSide(id: string, record: EnvironmentRecord, copy: string): Promise<SyncSide> {
  const { LocalTransport } = await import('../sync/index.js');
  const { NamespaceRuntime } = await import('../runtime/namespace/runtime.js');
  const { pidFile } = await import('../runtime/namespace/state.js');
  const runtime = new NamespaceRuntime();
  return {
    transport: new LocalTransport(copy),
    transportAt: (path) => new LocalTransport(path),
    stateDir: workspaceSyncPaths(id).state,
    watchGone(onGone) {
      const startedAt = Date.now();
      let seenRunning = false;
      const startedSinceUs = (): boolean => {
        try {
          return statSync(pidFile(id)).mtimeMs >= startedAt;
        } catch {
          return false;
        }
      };
      const timer = setInterval(() => {
        void runtime.status({ id, hostname: record.name, rootfs: { layers: [] }, mounts: [], network: 'host', resources: {} }).then((status) => {
          if (status.state === 'running') seenRunning = true;
          else if (seenRunning || startedSinceUs() || Date.now() - startedAt > 60_000) onGone('the environment is not running');
        });
      }, 1_000);
      return () => clearInterval(timer);
    },
    close: () => undefined,
  };
}

/**
 * A VM: the guest directory, over the sync agent's own port (runtime/vm/guest-sync.ts). `up` starts
 * this process beside qemu, so it may find the VM still booting (or not started yet): it waits for
 * the boot, and once it saw it, a VM whose qemu is gone is gone. The agreed state of two-way sync is
 * kept per VM disk: a fresh disk starts a fresh agreement, never a mass deletion.
 */
async function guestSide(id: string, record: EnvironmentRecord, guestPath: string, log: (line: string) => void): Promise<SyncSide> {
  const [{ connectGuestSync, guestDiskIdentity }, { alive, readState }, { AgentTransport }] = await Promise.all([
    import('../runtime/vm/guest-sync.js'),
    import('../runtime/vm/channel.js'),
    import('../runtime/vm/agent-transport.js'),
  ]);
  const identity = record.exec?.identity;
  if (!identity) throw new EnvyError('STATE', `environment ${id} has no recorded user to sync as`, { hint: 'run envy up again' });
  const client = await connectGuestSync(id, identity, [guestPath, ...(record.sync?.mounts ?? []).map((m) => m.guest)], log);
  // The boot this connection belongs to: a later boot is another VM as far as this process goes.
  const boot = readState(id);
  const running = (): boolean => {
    const state = readState(id);
    return state !== undefined && state.pid === boot?.pid && state.startTime === boot.startTime && alive(state.pid, state.startTime);
  };
  const base = workspaceSyncPaths(id).state;
  const disk = `vm-${guestDiskIdentity(id)}`;
  // Agreements with disks that are gone are worthless: drop them (the mounts' are `DISK.m-*`).
  for (const name of existsSync(base) ? readdirSync(base) : []) if (name !== disk && !name.startsWith(`${disk}.`)) rmSync(join(base, name), { recursive: true, force: true });
  const transport = new AgentTransport(client, guestPath, record.name);
  return {
    transport,
    transportAt: (path) => new AgentTransport(client, path, record.name),
    stateDir: join(base, disk),
    watchGone(onGone) {
      client.onClose(() => onGone(running() ? 'the connection to the sync agent in the VM closed' : 'the VM is not running'));
      // When the guest's agent dies, qemu keeps our end of the port open and nothing ever answers
      // again: only a question that stays unanswered tells. A stat of the root each second (one at a
      // time) costs the guest a wakeup; the next `up` then starts a new process, which starts the agent.
      let asked = 0;
      const timer = setInterval(() => {
        if (!running()) onGone('the VM is not running');
        else if (asked && Date.now() - asked > PROBE_TIMEOUT_MS) {
          onGone(`the sync agent in the VM did not answer for ${PROBE_TIMEOUT_MS / 1000} s`);
          // What waits on it (the engine's stop too) fails now instead of never.
          client.close();
        }
        else if (!asked) {
          asked = Date.now();
          transport.stat('').then(
            () => (asked = 0),
            () => (asked = 0),
          );
        }
      }, 1_000);
      return () => clearInterval(timer);
    },
    close: () => client.close(),
  };
}

/** How long the VM's sync agent may leave a stat unanswered before it counts as gone. */
const PROBE_TIMEOUT_MS = 15_000;

/** The agreed state of a mount's two-way sync: beside the workspace's, per disk, per guest path. */
function mountStateDir(workspaceState: string, guest: string): string {
  return `${workspaceState}.m-${createHash('sha256').update(guest).digest('hex').slice(0, 16)}`;
}

/** What status and flushes see of several engines: busy while any is, every pending path and conflict. */
function combinedStatus(engines: SyncEngine[]): SyncStatus {
  const all = engines.map((each) => each.status());
  const first = all[0]!;
  const busy = all.find((each) => each.state === 'starting') ?? all.find((each) => each.state === 'syncing');
  return {
    ...first,
    state: busy?.state ?? first.state,
    pending: all.reduce((sum, each) => sum + each.pending, 0),
    conflicts: all.flatMap((each) => each.conflicts),
    lastError: all.find((each) => each.lastError !== null)?.lastError ?? null,
    applied: all.reduce((sum, each) => sum + each.applied, 0),
  };
}

/** The record's description of a watch-synced workspace (and, in a VM, of the other mounts it keeps live). */
export function syncSettings(projectDir: string, workspace: WorkspaceSpec, backend: BackendSpec['type'], mounts: MountRequest[] = []): NonNullable<EnvironmentRecord['sync']> {
  if (backend !== 'vm') return { source: projectDir, direction: workspace.direction, ignore: workspace.ignore };
  const others = mounts
    .filter((m) => m.vm === 'sync' && m.source && m.target !== workspace.path)
    .map((m) => ({ source: m.source!, guest: m.target, direction: m.readonly ? ('one-way' as const) : ('two-way' as const) }));
  return { source: projectDir, direction: workspace.direction, ignore: workspace.ignore, guest: workspace.path, ...(others.length > 0 ? { mounts: others } : {}) };
}

/**
 * Whether the workspace is synced by `envy __sync`: `watch` on the namespace backend; on a VM, which
 * cannot bind-mount, everything but a 9p share.
 */
export function usesWorkspaceSync(spec: Pick<EnvSpec, 'workspace' | 'backend'>): boolean {
  return spec.backend.type === 'vm' ? spec.workspace.sync !== '9p' : spec.workspace.sync === 'watch';
}

