/**
 * The rootless namespace runtime: every namespace operation is done by dist/envy-ns (see
 * native/envy-ns.c and docs/runtime.md); this class turns the typed Runtime calls into its
 * argv, keeps the pid file of long-lived environments and reports setup failures as EnvyErrors.
 */
import type { StdioOptions } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { EnvyError, ExitCode } from '../../errors.js';
import { acquireLock } from '../../state/lock.js';
import { environmentPaths } from '../../state/environments.js';
import type { EnvironmentConfig, Identity, ProcessSpec, Runtime, RuntimeStatus } from '../types.js';
import { environmentArgs, processArgs } from './args.js';
import { ensureHelper, forwardSignals, parseStatus, spawnHelper, withStatusFd, workloadExitCode, type HelperRun } from './helper.js';
import { hostIdentity } from './identity.js';
import { replaceProcess, spawnInherited } from './node-addon.js';
import { detectCgroupDelegation, limitsWarning, prepareCgroup, rlimitArgs } from './limits.js';
import { forgetInit, isInitAlive, pidFile, readInitRecord, runningInit, type InitRecord } from './state.js';

export interface NamespaceRuntimeOptions {
  /** stdio of the workload (default: inherited, for interactive use and unbuffered streaming). */
  stdio?: StdioOptions;
  /** Called with each spawned helper, e.g. to read piped output. */
  onSpawn?: (run: HelperRun) => void;
  /** Where warnings go (default: stderr). */
  warn?: (line: string) => void;
}

const STOP_POLL_MS = 10;
const KILL_WAIT_MS = 5000;

export class NamespaceRuntime implements Runtime {
  readonly backend = 'namespace' as const;
  private readonly options: NamespaceRuntimeOptions;

  constructor(options: NamespaceRuntimeOptions = {}) {
    this.options = options;
  }

  async start(config: EnvironmentConfig): Promise<RuntimeStatus> {
    const running = runningInit(config.id);
    if (running) return this.runningStatus(running);
    mkdirSync(environmentPaths(config.id).run, { recursive: true });
    // Not the environment's own lock: the CLI may hold that around `up` while calling start().
    const lock = await acquireLock(`${environmentPaths(config.id).run}/start.lock`, { purpose: `start ${config.id}`, timeoutMs: 60_000 });
    try {
      const again = runningInit(config.id);
      if (again) return this.runningStatus(again);
      forgetInit(config.id);
      const args = ['run', ...this.environmentArgs(config), '--detach', '--pidfile', pidFile(config.id)];
      const run = spawnHelper(args, ['ignore', 'ignore', 'inherit']);
      const result = await run.done;
      workloadExitCode(result, `cannot start environment ${config.id}`);
      if (result.code !== 0) throw new EnvyError('RUNTIME', `cannot start environment ${config.id}: the helper exited with ${result.code}`);
      const record = readInitRecord(config.id);
      if (!record || !isInitAlive(record)) {
        throw new EnvyError('RUNTIME', `environment ${config.id} stopped right after it started`, { hint: 'run it in the foreground (envy shell) to see why' });
      }
      return this.runningStatus(record);
    } finally {
      lock.release();
    }
  }

  async exec(config: EnvironmentConfig, spec: ProcessSpec): Promise<number> {
    return this.runHelper(this.execArgs(config, spec), execFailure(config, spec));
  }

  /**
   * exec by turning this process into the helper: it never returns, and the process exits with the
   * workload's code (128+n for signal n), forwards signals and relays the pty itself. Setup failures
   * are printed as envy's own (`envy: cannot run ...`, `hint: ...`) and exit as an EnvyError('RUNTIME')
   * would. Returns false when the process cannot be replaced here (no dist/envy-node.node): call exec.
   * For a CLI whose work ends with the workload, and only with inherited stdio.
   */
  execReplacingProcess(config: EnvironmentConfig, spec: ProcessSpec): false {
    const args = this.execArgs(config, spec);
    const report = ['--error-prefix', `envy: ${execFailure(config, spec)}: `, '--setup-exit', String(ExitCode.Internal)];
    return replaceProcess(ensureHelper(), [args[0]!, ...report, ...args.slice(1)]);
  }

  private execArgs(config: EnvironmentConfig, spec: ProcessSpec): string[] {
    const init = runningInit(config.id);
    if (!init) {
      throw new EnvyError('RUNTIME', `environment ${config.id} is not running`, { hint: 'start it with `envy up`' });
    }
    const user = this.user(config, spec);
    return ['exec', '--target', `${init.pid}:${init.startTime}`, ...rlimitArgs(config), ...processArgs(spec, user)];
  }

  async runOnce(config: EnvironmentConfig, spec: ProcessSpec): Promise<number> {
    const user = this.user(config, spec);
    // One-shot runs are build steps: as root they may add users and groups (see environmentArgs).
    const args = ['run', ...this.environmentArgs(config, user, { identityFiles: !spec.root }), ...rlimitArgs(config), ...processArgs(spec, user)];
    return this.runHelper(args, `cannot run ${spec.argv[0]} in a fresh environment ${config.id}`);
  }

  async stop(config: EnvironmentConfig, graceMs: number): Promise<void> {
    const init = runningInit(config.id);
    if (init) {
      // init forwards SIGTERM to every process of the environment and exits when they are gone;
      // whatever ignores it dies with init: the kernel kills a pid namespace whose init exits.
      signal(init.pid, 'SIGTERM');
      // A stopped (SIGSTOP, frozen) init would sit on the SIGTERM until the grace period runs out.
      signal(init.pid, 'SIGCONT');
      if (!(await waitForExit(init, graceMs))) {
        signal(init.pid, 'SIGKILL');
        if (!(await waitForExit(init, KILL_WAIT_MS))) {
          throw new EnvyError('RUNTIME', `environment ${config.id} (init pid ${init.pid}) did not die after SIGKILL`);
        }
      }
    }
    forgetInit(config.id);
  }

  /** Whether the environment's init runs: status() without the start time (which reads /proc/stat). */
  isRunning(config: EnvironmentConfig): boolean {
    return runningInit(config.id) !== undefined;
  }

  async status(config: EnvironmentConfig): Promise<RuntimeStatus> {
    const init = runningInit(config.id);
    return init ? this.runningStatus(init) : { state: 'stopped' };
  }

  private user(config: EnvironmentConfig, spec?: ProcessSpec): Identity {
    return config.user ?? (spec && !spec.root ? spec.identity : undefined) ?? hostIdentity();
  }

  private environmentArgs(config: EnvironmentConfig, user: Identity = this.user(config), options: { identityFiles?: boolean } = {}): string[] {
    const support = detectCgroupDelegation();
    const warning = limitsWarning(config, support);
    if (warning) (this.options.warn ?? ((line) => process.stderr.write(line)))(warning);
    if (config.network === 'private') {
      const line = 'envy: warning: network: private gets only a loopback interface here (no slirp4netns: /dev/net/tun is not usable)\n';
      (this.options.warn ?? ((l) => process.stderr.write(l)))(line);
    }
    const cgroup = prepareCgroup(config, support);
    return [...environmentArgs(config, user, options), ...(cgroup ? ['--cgroup', cgroup] : [])];
  }

  private async runHelper(args: string[], what: string): Promise<number> {
    if (this.options.stdio === undefined && this.options.onSpawn === undefined) {
      // The common case (exec, a hook, a service, a shell): no child_process when the addon is built.
      const file = ensureHelper();
      const child = spawnInherited(file, withStatusFd(file, args));
      if (child) {
        const stopForwarding = forwardSignals((sig) => signal(child.pid, sig));
        const { code, statusText } = await child.done.finally(stopForwarding);
        return workloadExitCode({ code, status: parseStatus(statusText) }, what);
      }
    }
    const run = spawnHelper(args, this.options.stdio ?? 'inherit');
    this.options.onSpawn?.(run);
    return workloadExitCode(await run.done, what);
  }

  private runningStatus(init: InitRecord): RuntimeStatus {
    const bootSeconds = bootTime();
    const ticks = Number(init.startTime);
    const startedAt = bootSeconds !== undefined && Number.isFinite(ticks) ? new Date((bootSeconds + ticks / CLOCK_TICKS) * 1000).toISOString() : undefined;
    return { state: 'running', pid: init.pid, startedAt };
  }
}

function execFailure(config: EnvironmentConfig, spec: ProcessSpec): string {
  return `cannot run ${spec.argv[0]} in environment ${config.id}`;
}

// USER_HZ is 100 on every Linux architecture envy supports.
const CLOCK_TICKS = 100;

function bootTime(): number | undefined {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n').find((l) => l.startsWith('btime '));
    return line ? Number(line.slice(6)) : undefined;
  } catch {
    return undefined;
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
  }
}

async function waitForExit(init: InitRecord, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (isInitAlive(init)) {
    if (Date.now() >= deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, STOP_POLL_MS));
  }
  return true;
}
