/**
 * Services: the CLI side of the per-environment supervisor (`envy __supervise ID`, supervisor.ts).
 *
 * The supervisor is a small detached Node process, one per environment, started by `envy up` after
 * postStart. It runs each service through the backend's ServiceHost (service-host.ts): `envy-ns exec`
 * into a namespace environment's pid namespace (when the environment stops, the kernel kills them,
 * whether or not the supervisor is alive), or an exec over its own guest agent connection into a VM.
 * It exits when the environment is gone.
 *
 * How the CLI talks to it, without a socket (like workspace-sync.ts): files in the environment's run/
 * dir plus signals. `up` writes the desired services (`services-spec.json`, with a generation number)
 * and sends SIGHUP; the supervisor restarts what changed and writes `services.json` (every service's
 * state, pid, restarts) atomically on every change, with the generation it has applied. SIGTERM stops
 * the services in reverse order and ends the supervisor.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { ServiceSpec } from '../config/types.js';
import { EnvyError } from '../errors.js';
import { packageRoot } from '../package-root.js';
import { writeFileAtomic } from '../state/atomic.js';
import { environmentPaths } from '../state/environments.js';
import { isAlive, terminateOwner, type LockOwner } from '../state/lock.js';

export type ServiceState =
  /** Its process runs; its readiness check has not passed yet. */
  | 'starting'
  /** Its process runs (it has no readiness check). */
  | 'running'
  /** Its readiness check passed. */
  | 'ready'
  /** It died and will be started again after a backoff. */
  | 'restarting'
  /** It died and its restart policy says no more, or it never became ready. */
  | 'failed'
  /** It exited 0 and its restart policy does not restart it. */
  | 'exited'
  | 'stopping'
  | 'stopped';

export interface ServiceStatus {
  name: string;
  state: ServiceState;
  /** Host pid of the service's process (its process group leader), while it runs. */
  pid?: number;
  pidStartTime?: string;
  /** A VM environment's service: its pid inside the guest (the supervisor's guest agent exec). */
  guestPid?: number;
  restarts: number;
  startedAt?: string;
  readyAt?: string;
  lastExit?: { code: number; at: string };
  /** Why it failed, for people: the last readiness check's output, or its exit. */
  error?: string;
  /** It never became ready since it was last (re)applied: `up` fails naming it. */
  startFailed?: boolean;
  /** Digest of the service's definition: a changed definition restarts it. */
  digest: string;
}

export interface SupervisorStatus {
  pid: number;
  /** The generation of services-spec.json fully applied (every service started and ready or failed). */
  applied: number;
  services: ServiceStatus[];
  updatedAt: string;
}

export interface ServicesRequest {
  generation: number;
  services: ServiceSpec[];
}

export interface ServicesPaths {
  lock: string;
  status: string;
  spec: string;
  /** Per-service logs: `<dir>/<name>.log`. */
  dir: string;
  /** Every service's lines, prefixed with its name, in arrival order. */
  combined: string;
  /** The supervisor's own stderr. */
  supervisorLog: string;
}

export function servicesPaths(id: string): ServicesPaths {
  const paths = environmentPaths(id);
  return {
    lock: join(paths.run, 'supervisor.lock'),
    status: join(paths.run, 'services.json'),
    spec: join(paths.run, 'services-spec.json'),
    dir: join(paths.logs, 'services'),
    combined: join(paths.logs, 'services.log'),
    supervisorLog: join(paths.logs, 'supervisor.log'),
  };
}

export function serviceLogPath(id: string, name: string): string {
  return join(servicesPaths(id).dir, `${name}.log`);
}

/** onCreate and postStart output, written by `envy up` (not the supervisor). */
export function hooksLogPath(id: string): string {
  return join(environmentPaths(id).logs, 'hooks.log');
}

export function serviceDigest(service: ServiceSpec): string {
  return createHash('sha256').update(JSON.stringify(service)).digest('hex').slice(0, 16);
}

export function supervisorOwner(id: string): LockOwner | undefined {
  try {
    const owner = JSON.parse(readFileSync(servicesPaths(id).lock, 'utf8')) as LockOwner;
    return isAlive(owner) ? owner : undefined;
  } catch {
    return undefined;
  }
}

export function readServicesStatus(id: string): SupervisorStatus | undefined {
  try {
    return JSON.parse(readFileSync(servicesPaths(id).status, 'utf8')) as SupervisorStatus;
  } catch {
    return undefined;
  }
}

export function readServicesRequest(id: string): ServicesRequest | undefined {
  try {
    return JSON.parse(readFileSync(servicesPaths(id).spec, 'utf8')) as ServicesRequest;
  } catch {
    return undefined;
  }
}

/**
 * What `envy status` shows: the supervisor's last word, with every service that is not provably
 * running marked stopped when the supervisor is gone (its file would otherwise claim they run).
 */
export function servicesReport(id: string, environmentRunning: boolean): { supervisor: 'running' | 'stopped'; services: ServiceStatus[] } {
  const status = readServicesStatus(id);
  const owner = supervisorOwner(id);
  const services = (status?.services ?? []).map((service) => {
    if (environmentRunning && owner) return service;
    const alive = environmentRunning && service.pid !== undefined && service.pidStartTime !== undefined && isAlive({ pid: service.pid, startTime: service.pidStartTime });
    return alive ? service : { ...service, state: 'stopped' as const, pid: undefined, guestPid: undefined };
  });
  return { supervisor: owner ? 'running' : 'stopped', services };
}

/** `redis ready, worker running (3 restarts)`. */
export function describeServices(services: ServiceStatus[]): string {
  return services.map((s) => `${s.name} ${s.state}${s.restarts > 0 ? ` (${s.restarts} restart${s.restarts === 1 ? '' : 's'})` : ''}`).join(', ');
}

async function startSupervisor(id: string): Promise<LockOwner> {
  const running = supervisorOwner(id);
  if (running) return running;
  const paths = servicesPaths(id);
  mkdirSync(paths.dir, { recursive: true });
  const log = openSync(paths.supervisorLog, 'a');
  try {
    const child = spawn(process.execPath, [join(packageRoot(), 'bin', 'envy.js'), '__supervise', id], {
      detached: true,
      stdio: ['ignore', log, log],
      env: process.env,
    });
    child.unref();
    const deadline = Date.now() + 10_000;
    for (;;) {
      const owner = supervisorOwner(id);
      if (owner) return owner;
      if (child.exitCode !== null || Date.now() > deadline) {
        throw new EnvyError('INTERNAL', `the service supervisor of ${id} did not start`, { hint: `its log: ${paths.supervisorLog}` });
      }
      await sleep(20);
    }
  } finally {
    closeSync(log);
  }
}

/**
 * Make the environment's services what `services` says and wait until every one is ready (or has
 * no readiness check and runs). Unchanged services keep running. Throws naming the service whose
 * readiness failed, with its last check's output.
 */
export async function applyServices(id: string, services: ServiceSpec[]): Promise<SupervisorStatus> {
  const previous = readServicesRequest(id);
  const generation = (previous?.generation ?? 0) + 1;
  writeFileAtomic(servicesPaths(id).spec, `${JSON.stringify({ generation, services } satisfies ServicesRequest, null, 2)}\n`);
  let owner = supervisorOwner(id);
  if (owner) process.kill(owner.pid, 'SIGHUP');
  else owner = await startSupervisor(id);
  // The supervisor bounds each readiness wait itself; this only guards against it wedging.
  const bound = services.reduce((sum, s) => sum + (s.ready?.timeout ?? 0) + s.stopGrace, 0) + 60_000;
  const deadline = Date.now() + bound;
  for (;;) {
    const status = readServicesStatus(id);
    if (status && status.pid === owner.pid && status.applied >= generation) return checkServices(id, status, services);
    if (!isAlive(owner)) {
      throw new EnvyError('RUNTIME', `the service supervisor of ${id} exited while starting services`, { hint: `its log: ${servicesPaths(id).supervisorLog}` });
    }
    if (Date.now() > deadline) throw new EnvyError('RUNTIME', `the services of ${id} did not start within ${Math.round(bound / 1000)} s`, { hint: `envy logs shows their output; the supervisor's log: ${servicesPaths(id).supervisorLog}` });
    await sleep(25);
  }
}

function checkServices(id: string, status: SupervisorStatus, services: ServiceSpec[]): SupervisorStatus {
  const failed = status.services.filter((s) => s.startFailed && services.some((spec) => spec.name === s.name));
  const first = failed[0];
  if (first) {
    throw new EnvyError('COMMAND', `service ${first.name} failed to start: ${first.error ?? 'see its log'}`, {
      details: failed.slice(1).map((s) => `service ${s.name} failed to start: ${s.error ?? 'see its log'}`),
      hint: `envy logs ${first.name} shows its output (${serviceLogPath(id, first.name)}); the environment stays up`,
    });
  }
  return status;
}

/** Stop every service (reverse order, SIGTERM then SIGKILL after each one's stopGrace) and the supervisor. */
export async function stopServices(id: string): Promise<void> {
  const owner = supervisorOwner(id);
  if (!owner) return;
  const request = readServicesRequest(id);
  const bound = (request?.services ?? []).reduce((sum, s) => sum + s.stopGrace + 1_000, 0) + 5_000;
  // After the bound it is SIGKILLed; its services die with the environment, which the caller stops next.
  await terminateOwner(owner, bound);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** env.yaml has no services (any more): stop a supervisor that runs and forget the old list, so status shows none. */
export async function clearServices(id: string): Promise<void> {
  await stopServices(id);
  rmSync(servicesPaths(id).status, { force: true });
  rmSync(servicesPaths(id).spec, { force: true });
}
