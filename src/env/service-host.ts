/**
 * Where the supervisor's processes run: the one thing that differs between backends. The supervisor
 * (supervisor.ts) owns the service model (order, readiness, restart policy, stop grace, states,
 * logs); a ServiceHost only starts a process in the environment, signals its process group and says
 * whether the environment still runs.
 *
 * - namespace: `envy-ns exec` into the environment's pid namespace (this file); the workload is a
 *   host process, found by its parent pid.
 * - vm: an exec over one connection to the guest agent (service-host-vm.ts); the workload is a
 *   guest process. The agent kills what a connection started when it goes, so a supervisor that dies
 *   takes its services with it (they restart with the next `envy up`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import type { Readable } from 'node:stream';
import type { EnvironmentRecord } from '../state/environments.js';
import { isAlive, processStartTime } from '../state/lock.js';
import { processArgs } from '../runtime/namespace/args.js';
import { helperPath } from '../runtime/namespace/helper.js';
import { rlimitArgs } from '../runtime/namespace/limits.js';
import { runningInit, type InitRecord } from '../runtime/namespace/state.js';
import type { ServiceStatus } from './services.js';

/** What identifies a service's process: a host pid with its start time, or a pid inside the VM's guest. */
export type ServicePid = { pid: number; pidStartTime: string } | { guestPid: number };

export interface ProcessRequest {
  argv: string[];
  env: Record<string, string>;
  cwd: string;
}

export interface ServiceProcess {
  readonly stdout: Readable;
  readonly stderr: Readable;
  /** The exit code, or 128+n after signal n; never rejects (a process that could not run gives 125 or 126/127). */
  readonly exited: Promise<number>;
  /** The workload's pid once it is known (undefined: it never ran). */
  readonly identified: Promise<ServicePid | undefined>;
  /** Signal the workload's whole process group. */
  signal(signal: 'SIGTERM' | 'SIGKILL'): Promise<void>;
}

export interface ServiceHost {
  /** Also says why a process could not be started (written to the service's log). */
  start(request: ProcessRequest, onProblem: (text: string) => void): ServiceProcess;
  /** Run a readiness check to its end (bounded): its exit code and its combined output. */
  check(request: ProcessRequest, timeoutMs: number): Promise<{ code: number; output: string }>;
  /** The environment the supervisor started with still runs. */
  running(): boolean;
  /** End the services a supervisor that was killed left running (their state file's pids). */
  endStale(services: ServiceStatus[], say: (line: string) => void): Promise<void>;
  close(): void;
}

type Exec = NonNullable<EnvironmentRecord['exec']>;

export async function serviceHostFor(record: EnvironmentRecord, exec: Exec): Promise<ServiceHost> {
  if (record.backend === 'vm') {
    const { VmServiceHost } = await import('./service-host-vm.js');
    return VmServiceHost.open(record.id, exec);
  }
  return new NamespaceServiceHost(record, exec);
}

/** Collect a check's output (its last 4 KiB) until both streams end. */
export function collectOutput(streams: Readable[]): () => string {
  let output = '';
  for (const stream of streams) stream.on('data', (data: Buffer) => (output = (output + data.toString()).slice(-4096)));
  return () => output;
}

class NamespaceServiceHost implements ServiceHost {
  private readonly init: InitRecord | undefined;

  constructor(
    private readonly record: EnvironmentRecord,
    private readonly exec: Exec,
  ) {
    this.init = runningInit(record.id);
  }

  private args(request: ProcessRequest): string[] {
    const init = runningInit(this.record.id);
    if (!init) throw new Error('the environment is not running');
    const { identity, resources } = this.exec;
    const config = { id: this.record.id, hostname: this.record.name, rootfs: { layers: [] }, mounts: [], network: 'host' as const, user: identity, resources };
    return [
      'exec',
      '--target',
      `${init.pid}:${init.startTime}`,
      ...rlimitArgs(config),
      ...processArgs({ argv: request.argv, env: request.env, cwd: request.cwd, root: false, identity, tty: false }, identity),
    ];
  }

  start(request: ProcessRequest, onProblem: (text: string) => void): ServiceProcess {
    // The helper makes the workload a session leader, so its whole process group can be signalled.
    const child = spawn(helperPath(), this.args(request), { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<number>((resolve) => {
      child.on('error', (error) => {
        onProblem(`cannot run the namespace helper: ${error.message}`);
        resolve(125);
      });
      child.on('close', (code, signal) => resolve(code ?? (signal ? 128 + signalNumber(signal) : 125)));
    });
    const identified = findWorkload(child.pid);
    return {
      stdout: child.stdout!,
      stderr: child.stderr!,
      exited,
      identified: identified.then((found) => (found ? { pid: found.pid, pidStartTime: found.startTime } : undefined)),
      signal: async (signal) => {
        // The found pid only while it is still that process: a reused pid must never be signalled.
        const known = await identified;
        const found = known && processStartTime(known.pid) === known.startTime ? known : await findWorkload(child.pid);
        if (found) signalGroup(found.pid, signal);
        // Without a workload the helper forwards SIGTERM; SIGKILL goes to the helper as well.
        if (!found || signal === 'SIGKILL') child.kill(signal);
      },
    };
  }

  check(request: ProcessRequest, timeoutMs: number): Promise<{ code: number; output: string }> {
    return new Promise((resolve) => {
      const child: ChildProcess = spawn(helperPath(), this.args(request), { stdio: ['ignore', 'pipe', 'pipe'] });
      const output = collectOutput([child.stdout!, child.stderr!]);
      let extra = '';
      const timer = setTimeout(() => {
        void findWorkload(child.pid).then((found) => {
          if (found) signalGroup(found.pid, 'SIGKILL');
          child.kill('SIGKILL');
        });
        extra = `\n(the check took longer than ${timeoutMs} ms)`;
      }, timeoutMs);
      child.on('error', (error) => {
        clearTimeout(timer);
        resolve({ code: 125, output: error.message });
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        resolve({ code: code ?? (signal ? 128 + signalNumber(signal) : 125), output: output() + extra });
      });
    });
  }

  running(): boolean {
    return this.init !== undefined && isAlive({ pid: this.init.pid, startTime: this.init.startTime });
  }

  async endStale(services: ServiceStatus[], say: (line: string) => void): Promise<void> {
    for (const stale of services) {
      if (stale.pid !== undefined && stale.pidStartTime !== undefined && isAlive({ pid: stale.pid, startTime: stale.pidStartTime })) {
        say(`stopping ${stale.name} (pid ${stale.pid}) left by an earlier supervisor`);
        await killGroup(stale.pid, stale.pidStartTime, 2_000);
      }
    }
  }

  close(): void {}
}

const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGPIPE: 13, SIGTERM: 15 };
function signalNumber(signal: NodeJS.Signals): number {
  return SIGNALS[signal] ?? 0;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
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
