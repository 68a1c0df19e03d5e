/**
 * Helpers for e2e tests: run envy (or any program) as the unprivileged test
 * user, with a private ENVY_HOME, and make scratch dirs that user owns.
 */
import { execFileSync, spawn, type SpawnOptions } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inject } from 'vitest';

export interface RunResult {
  code: number;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export const envyRoot = (): string => inject('envyRoot');
export const testUser = (): string => inject('envyUser');
export const isRoot = (): boolean => process.getuid?.() === 0;
/**
 * The run's shared ENVY_HOME for Debian-based images (global-setup.ts): the base layer and the apt
 * cache are built once per run. Files using it remove only their own environments (`down --rm`);
 * never gc it or delete it.
 */
export const debianHome = (): string => inject('debianHome');

function userInfo(): { uid: number; gid: number; home: string } {
  const [uid, gid, home] = execFileSync('sh', ['-c', `id -u ${testUser()}; id -g ${testUser()}; getent passwd ${testUser()} | cut -d: -f6`])
    .toString()
    .trim()
    .split('\n');
  return { uid: Number(uid), gid: Number(gid), home: home ?? '/tmp' };
}

/** A scratch dir owned by the test user; removed by the returned function. */
export function userTempDir(prefix = 'envy-test-'): { path: string; remove: () => void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  if (isRoot()) {
    const { uid, gid } = userInfo();
    execFileSync('chown', [`${uid}:${gid}`, path]);
  }
  chmodSync(path, 0o755);
  return {
    path,
    // Overlay work dirs and files owned by subordinate uids need root (or the user's namespace) to delete.
    remove: () => {
      if (isRoot()) rmSync(path, { recursive: true, force: true });
      else execFileSync('sh', ['-c', `chmod -R u+rwX '${path}' 2>/dev/null; rm -rf '${path}'`]);
    },
  };
}

/** argv prefix that runs a program as the unprivileged test user with a clean environment. */
export function asUserArgv(env: Record<string, string> = {}): string[] {
  const { home } = userInfo();
  const base = { HOME: home, USER: testUser(), LOGNAME: testUser(), PATH: '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin', LANG: 'C.UTF-8', ...env };
  const envArgs = Object.entries(base).map(([k, v]) => `${k}=${v}`);
  if (!isRoot()) return ['env', ...envArgs];
  return ['setpriv', `--reuid=${testUser()}`, `--regid=${testUser()}`, '--init-groups', 'env', '-i', ...envArgs];
}

/** Run a program as the test user and collect its output. */
export function runAsUser(file: string, args: string[], options: { env?: Record<string, string>; cwd?: string; input?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  const argv = [...asUserArgv(options.env), file, ...args];
  return collect(argv[0]!, argv.slice(1), { cwd: options.cwd }, options.input, options.timeoutMs ?? 120_000);
}

/** Run the installed envy CLI as the test user. */
export function envy(args: string[], options: { env?: Record<string, string>; cwd?: string; input?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return runAsUser(process.execPath, [join(envyRoot(), 'bin/envy.js'), ...args], options);
}

export function collect(file: string, args: string[], options: SpawnOptions, input: string | undefined, timeoutMs: number): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { ...options, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`timed out after ${timeoutMs} ms: ${file} ${args.join(' ')}\nstdout: ${stdout}\nstderr: ${stderr}`));
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, signal, stdout, stderr });
    });
    if (input !== undefined) child.stdin!.end(input);
    else child.stdin!.end();
  });
}

/** Whether a process exists (any owner). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Poll `check` every 100 ms until it holds; fail naming `what` after `timeoutMs`. */
export async function waitFor(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
