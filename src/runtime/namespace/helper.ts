/**
 * Locating and spawning dist/envy-ns. The helper reports setup success or failure on an
 * extra pipe (fd 3, `--status-fd 3`), so a workload that itself exits 125 is never taken
 * for a broken environment and setup errors arrive as one line with a hint.
 */
import type { ChildProcess, StdioOptions } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { join } from 'node:path';
import { EnvyError } from '../../errors.js';
import { debug, formatCommand } from '../../exec.js';
import { packageRoot } from '../../package-root.js';

/** The helper's exit code when the environment could not be set up (as podman and crun use it). */
export const SETUP_FAILED = 125;

export function helperPath(): string {
  const override = process.env.ENVY_NS_HELPER;
  if (override) return override;
  return join(packageRoot(), 'dist', 'envy-ns');
}

export function ensureHelper(): string {
  const path = helperPath();
  try {
    accessSync(path, constants.X_OK);
  } catch {
    throw new EnvyError('HOST', `the namespace helper ${path} is missing or not executable`, {
      hint: `rebuild it with \`npm run build\` in ${packageRoot()} (needs a C compiler: sudo apt-get install -y gcc libc6-dev)`,
    });
  }
  return path;
}

export type HelperStatus =
  | { kind: 'ok'; pid?: number; startTime?: string }
  | { kind: 'error'; message: string; hint?: string }
  | { kind: 'none' };

/** The last status line wins: a workload child that fails to chdir/setuid reports after "ok". */
export function parseStatus(text: string): HelperStatus {
  const lines = text.split('\n').filter((line) => line.length > 0);
  const last = lines[lines.length - 1];
  if (last === undefined) return { kind: 'none' };
  const [kind, a, b] = last.split('\t');
  if (kind === 'ok') return { kind: 'ok', pid: a ? Number(a) : undefined, startTime: b };
  if (kind === 'error') return { kind: 'error', message: a ?? 'unknown failure', hint: b || undefined };
  return { kind: 'none' };
}

export interface HelperRun {
  child: ChildProcess;
  /** Resolves when the helper exits: its exit code (128+n for signal n) and the status it reported. */
  done: Promise<{ code: number; status: HelperStatus }>;
}

const FORWARDED: NodeJS.Signals[] = ['SIGTERM', 'SIGHUP', 'SIGUSR1', 'SIGUSR2'];
// The terminal already delivers these to the helper (same process group); Node must just survive them.
const TERMINAL: NodeJS.Signals[] = ['SIGINT', 'SIGQUIT'];

const SIGNAL_NUMBERS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGUSR1: 10, SIGUSR2: 12, SIGPIPE: 13, SIGALRM: 14, SIGTERM: 15 };

/** Forward what the helper must get from Node's signals while it runs; returns the undo. */
export function forwardSignals(kill: (sig: NodeJS.Signals) => void): () => void {
  const handlers = new Map<NodeJS.Signals, () => void>();
  for (const sig of FORWARDED) handlers.set(sig, () => kill(sig));
  for (const sig of TERMINAL) handlers.set(sig, () => {});
  for (const [sig, handler] of handlers) process.on(sig, handler);
  return () => {
    for (const [sig, handler] of handlers) process.off(sig, handler);
  };
}

/** The helper's arguments with the status pipe (fd 3) added, recorded for --debug. */
export function withStatusFd(file: string, args: string[]): string[] {
  const fullArgs = [args[0]!, '--status-fd', '3', ...args.slice(1)];
  debug(`$ ${formatCommand(file, fullArgs)}`);
  return fullArgs;
}

export function spawnHelper(args: string[], stdio: StdioOptions = 'inherit'): HelperRun {
  const file = ensureHelper();
  const fullArgs = withStatusFd(file, args);
  const base = typeof stdio === 'string' ? [stdio, stdio, stdio] : [...stdio].slice(0, 3);
  // Loaded here, not at the top: most execs never come here (node-addon.ts spawns or becomes the helper).
  const { spawn } = process.getBuiltinModule('node:child_process');
  const child = spawn(file, fullArgs, { stdio: [...base, 'pipe'] as StdioOptions });
  const stopForwarding = forwardSignals((sig) => child.kill(sig));
  let statusText = '';
  const statusStream = child.stdio[3] as NodeJS.ReadableStream | null;
  statusStream?.on('data', (chunk: Buffer) => (statusText += chunk.toString()));
  const done = new Promise<{ code: number; status: HelperStatus }>((resolve, reject) => {
    child.on('error', (error) => {
      stopForwarding();
      reject(new EnvyError('HOST', `cannot run the namespace helper ${file}: ${error.message}`, { cause: error }));
    });
    child.on('close', (code, signal) => {
      stopForwarding();
      resolve({ code: code ?? 128 + (signal ? (SIGNAL_NUMBERS[signal] ?? 0) : 0), status: parseStatus(statusText) });
    });
  });
  return { child, done };
}

/** Turn a helper exit into the workload's exit code, or an EnvyError when setup failed. */
export function workloadExitCode(result: { code: number; status: HelperStatus }, what: string): number {
  if (result.status.kind === 'error') {
    throw new EnvyError('RUNTIME', `${what}: ${result.status.message}`, { hint: result.status.hint });
  }
  if (result.status.kind === 'none' && result.code === SETUP_FAILED) {
    throw new EnvyError('RUNTIME', `${what}: the namespace helper failed before reporting (see its message above)`, {
      hint: 'run `envy doctor` to check user namespaces, newuidmap and overlayfs',
    });
  }
  return result.code;
}
