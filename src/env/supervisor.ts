/**
 * The body of `envy __supervise ID`: the environment's service supervisor (see services.ts for the
 * protocol). Each service is `envy-ns exec --target INIT -- /bin/sh -c RUN`; the helper makes the
 * workload a session leader, so the service's whole process group can be signalled from the host.
 * Output goes through pipes into size-rotated logs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import type { ServiceSpec } from '../config/types.js';
import { writeFileAtomic } from '../state/atomic.js';
import { readRecord } from '../state/environments.js';
import { acquireLock, isAlive, processStartTime } from '../state/lock.js';
import { processArgs } from '../runtime/namespace/args.js';
import { helperPath } from '../runtime/namespace/helper.js';
import { rlimitArgs } from '../runtime/namespace/limits.js';
import { runningInit, type InitRecord } from '../runtime/namespace/state.js';
import { LineSplitter, RotatingLog } from './service-log.js';
import { readServicesRequest, readServicesStatus, serviceDigest, serviceLogPath, servicesPaths, type ServiceState, type ServiceStatus } from './services.js';

/** First restart delay; doubles per consecutive crash up to BACKOFF_MAX_MS. */
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 30_000;
/** A service that ran this long before dying starts its backoff over. */
const BACKOFF_RESET_MS = 10_000;
const KILL_WAIT_MS = 5_000;

interface Supervised {
  spec: ServiceSpec;
  digest: string;
  state: ServiceState;
  child?: ChildProcess;
  /** Resolves when the current child has exited. */
  exited?: Promise<number>;
  pid?: number;
  pidStartTime?: string;
  restarts: number;
  /** Crashes in a row without a long enough run in between (the backoff exponent). */
  streak: number;
  startedAtMs?: number;
  startedAt?: string;
  readyAt?: string;
  lastExit?: { code: number; at: string };
  error?: string;
  startFailed?: boolean;
  backoff?: NodeJS.Timeout;
  /** The readiness wait in progress (one per service, shared by whoever asks). */
  readiness?: Promise<boolean>;
  /** Set while stopping or after removal: no restarts, no readiness. */
  stopping: boolean;
  log: RotatingLog;
}

export async function runSupervisor(id: string): Promise<number> {
  // Installed first: `up` may signal as soon as the lock file names us, and SIGHUP's default is to die.
  let onHangup = (): void => {};
  let onTerminate = (why: string): void => void process.exit(why === 'SIGTERM' ? 143 : 130);
  process.on('SIGHUP', () => onHangup());
  process.on('SIGTERM', () => onTerminate('SIGTERM'));
  process.on('SIGINT', () => onTerminate('SIGINT'));
  const record = readRecord(id);
  const exec = record?.exec;
  if (!record || !exec) {
    process.stderr.write(`envy __supervise: environment ${id} has no record\n`);
    return 2;
  }
  const paths = servicesPaths(id);
  let lock;
  try {
    lock = await acquireLock(paths.lock, { purpose: 'service supervisor', timeoutMs: 0 });
  } catch {
    return 0; // another supervisor of this environment runs
  }
  const say = (line: string): void => void process.stderr.write(`${new Date().toISOString()} ${line}\n`);
  mkdirSync(paths.dir, { recursive: true });
  const combined = new RotatingLog(paths.combined);
  const services = new Map<string, Supervised>();
  let applied = 0;

  // A supervisor that was SIGKILLed leaves its services running in the environment: end them, so
  // the ones we start are the only ones.
  for (const stale of readServicesStatus(id)?.services ?? []) {
    if (stale.pid !== undefined && stale.pidStartTime !== undefined && isAlive({ pid: stale.pid, startTime: stale.pidStartTime })) {
      say(`stopping ${stale.name} (pid ${stale.pid}) left by an earlier supervisor`);
      await killGroup(stale.pid, stale.pidStartTime, 2_000);
    }
  }

  let writeTimer: NodeJS.Timeout | undefined;
  const statusNow = (): void => {
    if (writeTimer) clearTimeout(writeTimer);
    writeTimer = undefined;
    const list: ServiceStatus[] = [...services.values()].map((s) => ({
      name: s.spec.name,
      state: s.state,
      ...(s.pid !== undefined ? { pid: s.pid, pidStartTime: s.pidStartTime } : {}),
      restarts: s.restarts,
      ...(s.startedAt ? { startedAt: s.startedAt } : {}),
      ...(s.readyAt ? { readyAt: s.readyAt } : {}),
      ...(s.lastExit ? { lastExit: s.lastExit } : {}),
      ...(s.error ? { error: s.error } : {}),
      ...(s.startFailed ? { startFailed: true } : {}),
      digest: s.digest,
    }));
    writeFileAtomic(paths.status, `${JSON.stringify({ pid: process.pid, applied, services: list, updatedAt: new Date().toISOString() }, null, 2)}\n`);
  };
  // Coalesce bursts (a crash loop, many services) into one write per 50 ms.
  const writeStatus = (): void => {
    writeTimer ??= setTimeout(statusNow, 50);
  };

  const note = (service: Supervised, text: string): void => {
    const line = Buffer.from(`[envy] ${text}\n`);
    service.log.write(line);
    combined.write(Buffer.concat([Buffer.from(`${service.spec.name} | `), line]));
    // Not also in supervisor.log: that file is not rotated, and a crash loop would grow it forever.
  };

  const helperArgs = (service: ServiceSpec, argv: string[]): string[] => {
    const init = runningInit(id);
    if (!init) throw new Error('the environment is not running');
    const config = { id, hostname: record.name, rootfs: { layers: [] }, mounts: [], network: 'host' as const, user: exec.identity, resources: exec.resources };
    return [
      'exec',
      '--target',
      `${init.pid}:${init.startTime}`,
      ...rlimitArgs(config),
      ...processArgs({ argv, env: { ...exec.env, ...service.env }, cwd: service.workdir ?? exec.workdir, root: false, identity: exec.identity, tty: false }, exec.identity),
    ];
  };

  const launch = (service: Supervised): void => {
    service.error = undefined;
    let args: string[];
    try {
      args = helperArgs(service.spec, ['/bin/sh', '-c', service.spec.run]);
    } catch (error) {
      service.state = 'failed';
      service.error = (error as Error).message;
      writeStatus();
      return;
    }
    const child = spawn(helperPath(), args, { stdio: ['ignore', 'pipe', 'pipe'] });
    service.child = child;
    service.pid = undefined;
    service.pidStartTime = undefined;
    service.startedAtMs = Date.now();
    service.startedAt = new Date().toISOString();
    service.readyAt = undefined;
    service.state = service.spec.ready ? 'starting' : 'running';
    const prefix = Buffer.from(`${service.spec.name} | `);
    for (const stream of [child.stdout!, child.stderr!]) {
      const lines = new LineSplitter();
      const write = (chunk: Buffer[]): void => {
        for (const line of chunk) {
          service.log.write(line);
          combined.write(Buffer.concat([prefix, line]));
        }
      };
      stream.on('data', (data: Buffer) => write(lines.push(data)));
      stream.on('end', () => write(lines.flush()));
    }
    service.exited = new Promise<number>((resolve) => {
      child.on('error', (error) => {
        note(service, `cannot run the namespace helper: ${error.message}`);
        resolve(125);
      });
      child.on('close', (code, signal) => resolve(code ?? (signal ? 128 + signalNumber(signal) : 125)));
    });
    const thisChild = child;
    void service.exited.then((code) => onExit(service, thisChild, code));
    void findWorkload(child.pid).then((found) => {
      if (found && service.child === thisChild) {
        service.pid = found.pid;
        service.pidStartTime = found.startTime;
        writeStatus();
      }
    });
    note(service, `started: ${service.spec.run}`);
    writeStatus();
  };

  const onExit = (service: Supervised, child: ChildProcess, code: number): void => {
    if (service.child !== child) return;
    service.child = undefined;
    service.pid = undefined;
    service.pidStartTime = undefined;
    service.lastExit = { code, at: new Date().toISOString() };
    if (service.stopping) {
      service.state = 'stopped';
      note(service, `stopped (exit code ${code})`);
      writeStatus();
      return;
    }
    const ranMs = Date.now() - (service.startedAtMs ?? Date.now());
    if (ranMs >= BACKOFF_RESET_MS) service.streak = 0;
    const policy = service.spec.restart;
    if (policy === 'always' || (policy === 'on-failure' && code !== 0)) {
      const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** service.streak);
      service.streak++;
      service.state = 'restarting';
      note(service, `exited with code ${code}; restarting in ${delay} ms (restart: ${policy})`);
      service.backoff = setTimeout(() => {
        service.backoff = undefined;
        if (service.stopping) return;
        service.restarts++;
        launch(service);
        // A restarted service is ready again only once its check passes again.
        void ensureReady(service);
      }, delay);
    } else {
      service.state = code === 0 ? 'exited' : 'failed';
      if (code !== 0) service.error = `exited with code ${code} (restart: ${policy})`;
      note(service, `exited with code ${code}; not restarted (restart: ${policy})`);
    }
    writeStatus();
  };

  /** Run the readiness check every interval until it passes or the timeout; true when ready. */
  const awaitReady = async (service: Supervised): Promise<boolean> => {
    const ready = service.spec.ready;
    if (!ready) return service.state === 'running';
    const deadline = Date.now() + ready.timeout;
    let last = 'no check ran';
    for (;;) {
      if (service.stopping) return false;
      if (service.state === 'failed' || service.state === 'exited') {
        service.error = `${service.error ?? `exited with code ${service.lastExit?.code}`} before it was ready; last check: ${last}`;
        service.state = 'failed';
        service.startFailed = true;
        writeStatus();
        return false;
      }
      if (service.state === 'starting') {
        const result = await runCheck(helperArgs(service.spec, ['/bin/sh', '-c', ready.run]), Math.max(1_000, deadline - Date.now()));
        if (service.stopping) return false;
        if (result.code === 0 && service.state === 'starting') {
          service.state = 'ready';
          service.startFailed = false;
          service.readyAt = new Date().toISOString();
          note(service, `ready (${ready.run})`);
          writeStatus();
          return true;
        }
        const output = result.output.trim().replace(/\s*\n\s*/g, ' / ');
        last = `\`${ready.run}\` exited with ${result.code}${output ? `: ${output.slice(-300)}` : ''}`;
      }
      if (Date.now() + ready.interval > deadline) break;
      await sleep(ready.interval);
    }
    service.error = `not ready after ${Math.round(ready.timeout / 1000)} s; last check: ${last}`;
    note(service, service.error);
    await stopService(service);
    service.stopping = false;
    service.state = 'failed';
    service.startFailed = true;
    writeStatus();
    return false;
  };

  const ensureReady = (service: Supervised): Promise<boolean> =>
    (service.readiness ??= awaitReady(service).finally(() => (service.readiness = undefined)));

  const stopService = async (service: Supervised): Promise<void> => {
    service.stopping = true;
    if (service.backoff) clearTimeout(service.backoff);
    service.backoff = undefined;
    const child = service.child;
    if (!child || !service.exited) {
      if (service.state !== 'failed' && service.state !== 'exited') service.state = 'stopped';
      writeStatus();
      return;
    }
    service.state = 'stopping';
    writeStatus();
    // The recorded pid only while it is still that process: a reused pid must never be signalled.
    const recorded = service.pid !== undefined && service.pidStartTime !== undefined && processStartTime(service.pid) === service.pidStartTime;
    const found = recorded ? { pid: service.pid!, startTime: service.pidStartTime! } : await findWorkload(child.pid);
    note(service, `stopping (SIGTERM, SIGKILL after ${service.spec.stopGrace} ms)`);
    if (found) signalGroup(found.pid, 'SIGTERM');
    else child.kill('SIGTERM'); // the helper forwards it to the workload
    const exited = service.exited;
    if (!(await within(exited, service.spec.stopGrace))) {
      note(service, `did not stop within ${service.spec.stopGrace} ms: SIGKILL`);
      if (found) signalGroup(found.pid, 'SIGKILL');
      child.kill('SIGKILL');
      await within(exited, KILL_WAIT_MS);
    }
    service.state = 'stopped';
    writeStatus();
  };

  const newService = (spec: ServiceSpec, old?: Supervised): Supervised => {
    old?.log.close();
    return { spec, digest: serviceDigest(spec), state: 'stopped', restarts: 0, streak: 0, stopping: false, log: new RotatingLog(serviceLogPath(id, spec.name)) };
  };

  /** Make the running services match services-spec.json: stop removed and changed ones (reverse order), start in file order. */
  const apply = async (): Promise<void> => {
    const request = readServicesRequest(id);
    if (!request) return;
    const wanted = new Map(request.services.map((s) => [s.name, s]));
    for (const service of [...services.values()].reverse()) {
      const spec = wanted.get(service.spec.name);
      if (!spec || serviceDigest(spec) !== service.digest) {
        await stopService(service);
        if (!spec) {
          note(service, 'removed from env.yaml');
          service.log.close();
          services.delete(service.spec.name);
        }
      }
    }
    // Rebuild the map in file order, keeping unchanged services as they are.
    const ordered = new Map<string, Supervised>();
    const toStart: Supervised[] = [];
    for (const spec of request.services) {
      const current = services.get(spec.name);
      // Failed services are tried again; one that exited 0 under its policy (a one-shot job) is done.
      const keep = current && current.digest === serviceDigest(spec) && !current.stopping && current.state !== 'failed' && current.state !== 'stopped';
      const service = keep ? current : newService(spec, current);
      if (!keep) toStart.push(service);
      ordered.set(spec.name, service);
    }
    services.clear();
    for (const [name, service] of ordered) services.set(name, service);
    writeStatus();
    for (const service of toStart) {
      if (stopping) return;
      launch(service);
      await ensureReady(service);
    }
    applied = request.generation;
    statusNow();
  };

  let stopping = false;
  let queue: Promise<void> = Promise.resolve();
  const enqueue = (what: () => Promise<void>): Promise<void> =>
    (queue = queue.then(what).catch((error: Error) => void say(`error: ${error.stack ?? error.message}`)));

  let finish!: () => void;
  const done = new Promise<void>((resolve) => (finish = resolve));
  const stopAll = (why: string): void => {
    if (stopping) return;
    stopping = true;
    say(`stopping: ${why}`);
    clearInterval(liveness);
    void (async () => {
      // A start in progress stops at its next step; then the services go in reverse file order.
      await Promise.race([queue, sleep(1_000)]);
      for (const service of [...services.values()].reverse()) await stopService(service).catch((error: Error) => say(`error: ${error.message}`));
      statusNow();
      for (const service of services.values()) service.log.close();
      combined.close();
      lock.release();
      finish();
    })();
  };

  // The first apply reads the spec anyway: a SIGHUP that came before this point is not lost.
  onHangup = () => {
    if (!stopping) void enqueue(apply);
  };
  onTerminate = stopAll;

  // Services die with the environment; the supervisor follows them.
  let envInit: InitRecord | undefined = runningInit(id);
  const liveness = setInterval(() => {
    if (!envInit || !isAlive({ pid: envInit.pid, startTime: envInit.startTime })) {
      envInit = undefined;
      for (const service of services.values()) {
        service.stopping = true;
        if (service.backoff) clearTimeout(service.backoff);
        service.state = 'stopped';
      }
      stopAll('the environment is not running');
    }
  }, 1_000);

  say(`supervising the services of ${id} (pid ${process.pid})`);
  void enqueue(apply);
  await done;
  return 0;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  const result = await Promise.race([promise.then(() => true), timeout]);
  clearTimeout(timer);
  return result;
}

const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGPIPE: 13, SIGTERM: 15 };
function signalNumber(signal: NodeJS.Signals): number {
  return SIGNALS[signal] ?? 0;
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

async function killGroup(pid: number, startTime: string, graceMs: number): Promise<void> {
  signalGroup(pid, 'SIGTERM');
  const deadline = Date.now() + graceMs;
  while (isAlive({ pid, startTime }) && Date.now() < deadline) await sleep(20);
  if (isAlive({ pid, startTime })) signalGroup(pid, 'SIGKILL');
}

/**
 * The host pid of the workload the helper forked (its only child). /proc/PID/task/TID/children
 * needs CONFIG_PROC_CHILDREN, which not every kernel has, so this scans for the parent pid.
 */
async function findWorkload(helperPid: number | undefined): Promise<{ pid: number; startTime: string } | undefined> {
  if (helperPid === undefined) return undefined;
  for (let attempt = 0; attempt < 50; attempt++) {
    for (const name of readdirSync('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      let stat: string;
      try {
        stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      } catch {
        continue;
      }
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === helperPid) {
        const pid = Number(name);
        const startTime = processStartTime(pid);
        if (startTime) return { pid, startTime };
      }
    }
    if (processStartTime(helperPid) === undefined) return undefined;
    await sleep(20);
  }
  return undefined;
}

/** Run a readiness check to its end (bounded); its exit code and combined output. */
function runCheck(args: string[], timeoutMs: number): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(helperPath(), args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const collect = (data: Buffer): void => {
      output = (output + data.toString()).slice(-4096);
    };
    child.stdout!.on('data', collect);
    child.stderr!.on('data', collect);
    const timer = setTimeout(() => {
      void findWorkload(child.pid).then((found) => {
        if (found) signalGroup(found.pid, 'SIGKILL');
        child.kill('SIGKILL');
      });
      output += `\n(the check took longer than ${timeoutMs} ms)`;
    }, timeoutMs);
    child.on('error', (error) => {
      clearTimeout(timer);
      resolve({ code: 125, output: error.message });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 + signalNumber(signal) : 125), output });
    });
  });
}
