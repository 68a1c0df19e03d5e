/**
 * dist/envy-node.node (native/envy-node.c), for the paths where Node's own start-up is most of envy's
 * cost: becoming the helper instead of spawning it (`envy exec`: nothing is left to do once the helper
 * runs), spawning it without loading node:child_process, and isatty without node:tty. Every function
 * here has a plain-Node fallback, used when the addon was not built (no Node headers) or cannot load.
 */
import { dirname, join } from 'node:path';
import { helperPath } from './helper.js';

interface NodeAddon {
  execve(file: string, argv: string[], env: string[]): never;
  isatty(fd: number): boolean;
  /** Absent where the kernel has no pidfds (before Linux 5.3). */
  spawn?(file: string, argv: string[], env: string[], done: (code: number, status: string) => void): number;
}

let addon: NodeAddon | null | undefined;

/** The addon beside the helper, or null. */
function loadAddon(): NodeAddon | null {
  if (addon !== undefined) return addon;
  const module = { exports: {} as Partial<NodeAddon> };
  try {
    process.dlopen(module, join(dirname(helperPath()), 'envy-node.node'));
    const { execve, isatty } = module.exports;
    addon = typeof execve === 'function' && typeof isatty === 'function' ? (module.exports as NodeAddon) : null;
  } catch {
    addon = null;
  }
  return addon;
}

function environment(): string[] {
  const env: string[] = [];
  for (const [key, value] of Object.entries(process.env)) if (value !== undefined) env.push(`${key}=${value}`);
  return env;
}

/**
 * Replace this process with `file args...` (environment unchanged). Returns false, having done
 * nothing, when the addon is unavailable: the caller then spawns the helper instead.
 */
export function replaceProcess(file: string, args: string[]): false {
  const native = loadAddon();
  if (!native) return false;
  return native.execve(file, [file, ...args], environment());
}

/** Replace this process with `file args...` running with exactly `env` (KEY=VALUE); false when the addon is unavailable. */
export function replaceProcessWithEnv(file: string, args: string[], env: string[]): false {
  const native = loadAddon();
  if (!native) return false;
  return native.execve(file, [file, ...args], env);
}

export interface InheritedChild {
  pid: number;
  /** The exit code (128+n for signal n) and what the child wrote to fd 3 before it exited. */
  done: Promise<{ code: number; statusText: string }>;
}

/**
 * Spawn `file args...` with this process's stdin, stdout and stderr and a pipe as fd 3, without
 * node:child_process; undefined when the addon (or the kernel's pidfd) is unavailable.
 */
export function spawnInherited(file: string, args: string[]): InheritedChild | undefined {
  const spawn = loadAddon()?.spawn;
  if (!spawn) return undefined;
  let settle: (result: { code: number; statusText: string }) => void = () => {};
  const done = new Promise<{ code: number; statusText: string }>((resolve) => (settle = resolve));
  const pid = spawn(file, [file, ...args], environment(), (code, statusText) => settle({ code, statusText }));
  return { pid, done };
}

/** isatty(fd) without loading node:tty, which loads node:net (~4 ms) before it can answer. */
export function isTerminal(fd: number): boolean {
  const native = loadAddon();
  return native ? native.isatty(fd) : process.getBuiltinModule('node:tty').isatty(fd);
}
