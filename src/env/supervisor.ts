/**
 * The body of `envy __supervise ID`: the environment's service supervisor (see services.ts for the
 * protocol), the same for both backends. Each service is `/bin/sh -c RUN` started through the
 * backend's ServiceHost (service-host.ts): `envy-ns exec` into a namespace environment, an exec over
 * the guest agent into a VM. Either way the workload leads its own process group, so the whole
 * service can be signalled. Output goes through pipes into size-rotated logs on the host.
 */
import { mkdirSync } from 'node:fs';
import type { ServiceSpec } from '../config/types.js';
import { writeFileAtomic } from '../state/atomic.js';
import { readRecord } from '../state/environments.js';
import { acquireLock } from '../state/lock.js';
import { serviceHostFor, type ProcessRequest, type ServicePid, type ServiceProcess } from './service-host.js';
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
  child?: ServiceProcess;
  /** Resolves when the current child has exited. */
  exited?: Promise<number>;
  pid?: ServicePid;
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
  const host = await serviceHostFor(record, exec);

  // A supervisor that was SIGKILLed may leave its services running in the environment: end them, so
  // the ones we start are the only ones.
  await host.endStale(readServicesStatus(id)?.services ?? [], say);

  let writeTimer: NodeJS.Timeout | undefined;
  const statusNow = (): void => {
    if (writeTimer) clearTimeout(writeTimer);
    writeTimer = undefined;
    const list: ServiceStatus[] = [...services.values()].map((s) => ({
      name: s.spec.name,
      state: s.state,
      ...s.pid,
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

  const request = (service: ServiceSpec, command: string): ProcessRequest => ({
    argv: ['/bin/sh', '-c', command],
    env: { ...exec.env, ...service.env },
    cwd: service.workdir ?? exec.workdir,
  });

  const launch = (service: Supervised): void => {
    service.error = undefined;
    let child: ServiceProcess;
    try {
      child = host.start(request(service.spec, service.spec.run), (text) => note(service, text));
    } catch (error) {
      service.state = 'failed';
      service.error = (error as Error).message;
      writeStatus();
      return;
    }
    service.child = child;
    service.pid = undefined;
    service.startedAtMs = Date.now();
    service.startedAt = new Date().toISOString();
    service.readyAt = undefined;
    service.state = service.spec.ready ? 'starting' : 'running';
    const prefix = Buffer.from(`${service.spec.name} | `);
    for (const stream of [child.stdout, child.stderr]) {
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
    service.exited = child.exited;
    void child.exited.then((code) => onExit(service, child, code));
    void child.identified.then((found) => {
      if (found && service.child === child) {
        service.pid = found;
        writeStatus();
      }
    });
    note(service, `started: ${service.spec.run}`);
    writeStatus();
  };

  const onExit = (service: Supervised, child: ServiceProcess, code: number): void => {
    if (service.child !== child) return;
    service.child = undefined;
    service.pid = undefined;
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
        const result = await host.check(request(service.spec, ready.run), Math.max(1_000, deadline - Date.now()));
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
    note(service, `stopping (SIGTERM, SIGKILL after ${service.spec.stopGrace} ms)`);
    await child.signal('SIGTERM');
    const exited = service.exited;
    if (!(await within(exited, service.spec.stopGrace))) {
      note(service, `did not stop within ${service.spec.stopGrace} ms: SIGKILL`);
      await child.signal('SIGKILL');
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
      host.close();
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
  const liveness = setInterval(() => {
    if (!host.running()) {
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
