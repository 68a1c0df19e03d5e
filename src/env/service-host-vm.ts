/**
 * Services of a VM environment: the supervisor (a host process, as for the namespace backend) runs
 * each service and readiness check as an exec over one connection to the guest agent, which it
 * holds for its whole life on one of the agent's ports.
 *
 * Why not a supervisor inside the guest: the logs must be readable on the host when the VM is down
 * (a guest writes them to its own disk), and the service model (order, readiness, restart backoff,
 * states) would exist twice, once in Node and once in C. The host supervisor survives `envy up`
 * exiting just as the VM does. What it costs: the services live only while the supervisor's
 * connection does (the agent kills what a vanished host started), where a namespace environment's
 * services outlive a killed supervisor unsupervised; either way the next `envy up` starts them again.
 */
import { PassThrough } from 'node:stream';
import type { EnvironmentRecord } from '../state/environments.js';
import { AgentErrnoError, type AgentClient } from '../runtime/vm/agent-client.js';
import { alive, connectAgent, runningVmState, type VmState } from '../runtime/vm/channel.js';
import { collectOutput, type ProcessRequest, type ServiceHost, type ServiceProcess } from './service-host.js';

type Exec = NonNullable<EnvironmentRecord['exec']>;

export class VmServiceHost implements ServiceHost {
  private client: Promise<AgentClient> | undefined;

  private constructor(
    private readonly id: string,
    private readonly exec: Exec,
    /** The boot the supervisor belongs to: a VM booted again later is not its environment. */
    private readonly vm: VmState | undefined,
  ) {}

  static async open(id: string, exec: Exec): Promise<VmServiceHost> {
    const host = new VmServiceHost(id, exec, runningVmState(id));
    if (host.vm) await host.connection();
    return host;
  }

  /** The supervisor's connection, made again after a loss (the guest killed what ran over the old one). */
  private connection(): Promise<AgentClient> {
    const vm = this.vm;
    if (!vm || !this.running()) return Promise.reject(new Error('the VM is not running'));
    if (vm.channel !== 'agent') return Promise.reject(new Error("the VM runs without envy's guest agent"));
    const current = this.client;
    const usable = current?.then((client) => (client.closed ? undefined : client)).catch(() => undefined);
    const next = (async () => (await usable) ?? (await connectAgent(this.id, vm, { waitMs: 30_000, purpose: `supervise the services of ${this.id}` })))();
    this.client = next;
    return next;
  }

  private options(request: ProcessRequest): Parameters<AgentClient['exec']>[0] {
    const { uid, gid } = this.exec.identity;
    return { argv: request.argv, env: request.env, cwd: request.cwd, uid, gid };
  }

  start(request: ProcessRequest, onProblem: (text: string) => void): ServiceProcess {
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    let resolvePid!: (pid: number | undefined) => void;
    const pid = new Promise<number | undefined>((resolve) => (resolvePid = resolve));
    let running: ReturnType<AgentClient['exec']> | undefined;
    const exited = (async (): Promise<number> => {
      try {
        const client = await this.connection();
        running = client.exec(this.options(request));
        running.stdin.end();
        running.stdout.pipe(stdout);
        running.stderr.pipe(stderr);
        running.started.then(resolvePid, () => resolvePid(undefined));
        return await running.exit;
      } catch (error) {
        resolvePid(undefined);
        stdout.end();
        stderr.end();
        const message = (error as Error).message;
        // As the namespace runtime: a missing program 127, another start failure 126, a lost guest 125.
        if (!(error instanceof AgentErrnoError)) {
          onProblem(`lost the guest: ${message}`);
          return 125;
        }
        onProblem(message);
        return error.code === 'ENOENT' && !/working directory/.test(message) ? 127 : 126;
      }
    })();
    return {
      stdout,
      stderr,
      exited,
      identified: pid.then((guestPid) => (guestPid === undefined ? undefined : { guestPid })),
      signal: async (signal) => {
        await pid;
        // The agent signals the process group (each exec is a session leader in the guest).
        running?.signal(signal);
      },
    };
  }

  async check(request: ProcessRequest, timeoutMs: number): Promise<{ code: number; output: string }> {
    let client: AgentClient;
    try {
      client = await this.connection();
    } catch (error) {
      return { code: 125, output: (error as Error).message };
    }
    const exec = client.exec(this.options(request));
    exec.stdin.end();
    const output = collectOutput([exec.stdout, exec.stderr]);
    let extra = '';
    const timer = setTimeout(() => {
      extra = `\n(the check took longer than ${timeoutMs} ms)`;
      exec.signal('SIGKILL');
    }, timeoutMs);
    try {
      return { code: await exec.exit, output: output() + extra };
    } catch (error) {
      return { code: 125, output: (error as Error).message };
    } finally {
      clearTimeout(timer);
    }
  }

  running(): boolean {
    const now = runningVmState(this.id);
    return this.vm !== undefined && now !== undefined && now.pid === this.vm.pid && now.startTime === this.vm.startTime && alive(now.pid, now.startTime);
  }

  async endStale(): Promise<void> {
    // Nothing to do: the guest agent killed them when the old supervisor's connection went.
  }

  close(): void {
    void this.client?.then((client) => client.close()).catch(() => undefined);
  }
}
