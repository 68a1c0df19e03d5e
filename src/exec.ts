/**
 * The one door through which envy runs external programs. It records every
 * command line (shown with --debug) and turns failures into EnvyErrors that
 * name the program and the tail of its stderr, so no caller has to.
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { pipeline } from 'node:stream/promises';
import type { Options, Result } from 'execa';
import { EnvyError, type ErrorCode } from './errors.js';

const STDERR_TAIL_LINES = 20;

let debugSink: ((line: string) => void) | undefined;

/** Route recorded command lines somewhere (the CLI sets this under --debug). */
export function setDebugSink(sink: ((line: string) => void) | undefined): void {
  debugSink = sink;
}

/** Whether command lines are being recorded (--debug): then envy spawns its helpers rather than becoming them. */
export function debugging(): boolean {
  return debugSink !== undefined;
}

export function debug(line: string): void {
  debugSink?.(line);
}

export function quoteArg(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

export function formatCommand(file: string, args: readonly string[]): string {
  return [file, ...args].map(quoteArg).join(' ');
}

export function stderrTail(stderr: unknown, lines = STDERR_TAIL_LINES): string {
  const text = typeof stderr === 'string' ? stderr : Buffer.isBuffer(stderr) ? stderr.toString('utf8') : '';
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

export interface RunOptions extends Options {
  /** Error code used when the program fails (default EXEC). */
  errorCode?: ErrorCode;
  /** A hint attached to the error when the program fails. */
  hint?: string;
}

/**
 * Run a program to completion. Resolves with execa's result; rejects with an
 * EnvyError naming the program, its exit status and its stderr tail.
 */
export async function run(file: string, args: readonly string[], options: RunOptions = {}): Promise<Result> {
  const { errorCode = 'EXEC', hint, ...execaOptions } = options;
  debug(`$ ${formatCommand(file, args)}`);
  // execa is loaded on first use: the fast paths (--version, plan) never pay for it.
  const { execa } = await import('execa');
  try {
    return (await execa(file, args, { stripFinalNewline: true, ...execaOptions })) as Result;
  } catch (error) {
    throw toEnvyError(file, args, error, errorCode, hint);
  }
}

/** Like `run`, but resolves to `undefined` instead of throwing when the program is missing or fails. */
export async function tryRun(file: string, args: readonly string[], options: Options = {}): Promise<Result | undefined> {
  debug(`$ ${formatCommand(file, args)}`);
  const { execa } = await import('execa');
  try {
    return (await execa(file, args, { stripFinalNewline: true, ...options })) as Result;
  } catch {
    return undefined;
  }
}

function toEnvyError(file: string, args: readonly string[], error: unknown, code: ErrorCode, hint?: string): EnvyError {
  const e = error as { code?: string; exitCode?: number; signal?: string; stderr?: unknown; timedOut?: boolean };
  if (e.code === 'ENOENT') {
    return new EnvyError('HOST', `${file} is not installed (needed to run: ${formatCommand(file, args)})`, {
      hint: hint ?? 'run `envy doctor` to see which host packages are missing',
      cause: error,
    });
  }
  const status = e.timedOut ? 'timed out' : e.signal ? `was killed by ${e.signal}` : `exited with ${e.exitCode ?? '?'}`;
  const tail = stderrTail(e.stderr);
  return new EnvyError(code, `${file} ${status}: ${formatCommand(file, args)}`, {
    hint,
    details: tail ? tail.split('\n') : [],
    cause: error,
  });
}

export interface StreamingOptions extends RunOptions {
  /** Called with each line of stdout and stderr as it arrives. */
  onLine?: (line: string, stream: 'stdout' | 'stderr') => void;
  /** How many trailing lines to keep for the error message (default 30). */
  keepLines?: number;
}

/**
 * Run a program, streaming its output line by line (build steps, bootstraps)
 * while keeping the last lines for the error if it fails.
 */
export async function runStreaming(file: string, args: readonly string[], options: StreamingOptions = {}): Promise<void> {
  const { onLine, keepLines = 30, errorCode = 'EXEC', hint, ...execaOptions } = options;
  debug(`$ ${formatCommand(file, args)}`);
  const { execa } = await import('execa');
  const tail: string[] = [];
  const keep = (line: string, stream: 'stdout' | 'stderr'): void => {
    tail.push(line);
    if (tail.length > keepLines) tail.shift();
    onLine?.(line, stream);
  };
  const child = execa(file, args, { ...execaOptions, buffer: false, reject: false, stdin: execaOptions.stdin ?? 'ignore' });
  const pump = async (stream: NodeJS.ReadableStream | null | undefined, name: 'stdout' | 'stderr'): Promise<void> => {
    if (!stream) return;
    let pending = '';
    for await (const chunk of stream) {
      pending += chunk.toString();
      const lines = pending.split(/\r?\n|\r/);
      pending = lines.pop() ?? '';
      for (const line of lines) keep(line, name);
    }
    if (pending) keep(pending, name);
  };
  const [result] = await Promise.all([child, pump(child.stdout, 'stdout'), pump(child.stderr, 'stderr')]);
  const failure = result as { failed?: boolean; exitCode?: number; signal?: string; code?: string; timedOut?: boolean };
  if (!failure.failed) return;
  if (failure.code === 'ENOENT') {
    throw new EnvyError('HOST', `${file} is not installed (needed to run: ${formatCommand(file, args)})`, {
      hint: hint ?? 'run `envy doctor` to see which host packages are missing',
    });
  }
  const status = failure.timedOut ? 'timed out' : failure.signal ? `was killed by ${failure.signal}` : `exited with ${failure.exitCode ?? '?'}`;
  throw new EnvyError(errorCode, `${file} ${status}: ${formatCommand(file, args)}`, { hint, details: tail.slice() });
}

/**
 * Run a program fed from `input` (a layer streamed into the layer worker). Resolves like `run` once the
 * program exited and all of `input` went in. If `input` fails (a download cut off, a blob whose digest
 * does not match), the program is killed and that failure is what rejects: the program must not take a
 * truncated or unverified stream for a whole one.
 */
export async function runWithInput(file: string, args: readonly string[], input: NodeJS.ReadableStream, options: RunOptions = {}): Promise<Result> {
  const { errorCode = 'EXEC', hint, ...execaOptions } = options;
  debug(`$ ${formatCommand(file, args)} < stream`);
  const { execa } = await import('execa');
  const child = execa(file, args, { stripFinalNewline: true, ...execaOptions, stdin: 'pipe' });
  let inputError: unknown;
  const feeding = pipeline(input, child.stdin!).catch((error: unknown) => {
    // EPIPE when the program exits early: its own exit status says why.
    if ((error as NodeJS.ErrnoException).code === 'EPIPE' || (error as NodeJS.ErrnoException).code === 'ERR_STREAM_PREMATURE_CLOSE') return;
    inputError = error;
    child.kill('SIGKILL');
  });
  try {
    const result = (await child) as Result;
    await feeding;
    if (inputError) throw inputError;
    return result;
  } catch (error) {
    await feeding;
    if (inputError) throw inputError;
    (input as NodeJS.ReadableStream & { destroy?: () => void }).destroy?.();
    throw toEnvyError(file, args, error, errorCode, hint);
  }
}

/**
 * A program as a stream filter (zstd -d): `input` goes to its stdin, its stdout is returned; `done`
 * settles when it exited, rejecting with an EnvyError when it failed. Spawned with node:child_process
 * rather than execa: this runs in the layer worker on every pull, and loading execa there cost more
 * than the spawn itself (~0.1 s quiet, 0.5 s under load).
 */
export async function filterThrough(file: string, args: readonly string[], input: NodeJS.ReadableStream, options: PlainRunOptions = {}): Promise<{ output: NodeJS.ReadableStream; done: Promise<void> }> {
  const { errorCode = 'EXEC', hint } = options;
  debug(`$ ${formatCommand(file, args)} < stream`);
  const child = spawnChild(file, args, ['pipe', 'pipe', 'pipe']);
  let inputError: unknown;
  const feeding = pipeline(input, child.process.stdin!).catch((error: unknown) => {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EPIPE' || code === 'ERR_STREAM_PREMATURE_CLOSE') return;
    // The input's failure is the reader's: the program would only complain about a truncated stream.
    inputError = error;
    child.process.stdout!.destroy(error as Error);
    child.process.kill('SIGKILL');
  });
  const done = (async (): Promise<void> => {
    try {
      await child.exited;
    } catch (error) {
      await feeding;
      throw inputError ?? toEnvyError(file, args, error, errorCode, hint);
    }
    await feeding;
    if (inputError) throw inputError;
  })();
  return { output: child.process.stdout!, done };
}

export interface PlainRunOptions {
  errorCode?: ErrorCode;
  hint?: string;
}

/** Run a program to completion (output ignored, stderr kept for the error), without loading execa: see filterThrough. */
export async function runPlain(file: string, args: readonly string[], options: PlainRunOptions = {}): Promise<void> {
  const { errorCode = 'EXEC', hint } = options;
  debug(`$ ${formatCommand(file, args)}`);
  try {
    await spawnChild(file, args, ['ignore', 'ignore', 'pipe']).exited;
  } catch (error) {
    throw toEnvyError(file, args, error, errorCode, hint);
  }
}

/**
 * node:child_process spawn with execa's failure shape (`code` ENOENT, `exitCode`, `signal`, `stderr`),
 * which toEnvyError turns into the error users see. stderr, when piped, is kept (its last 64 KiB).
 */
function spawnChild(file: string, args: readonly string[], stdio: StdioOptions): { process: ChildProcess; exited: Promise<void> } {
  const child = spawn(file, args, { stdio });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString('utf8')).slice(-65536);
  });
  const exited = new Promise<void>((resolve, reject) => {
    child.once('error', (error: NodeJS.ErrnoException) => reject(Object.assign(error, { stderr })));
    child.once('close', (exitCode: number | null, signal: NodeJS.Signals | null) => {
      if (exitCode === 0) resolve();
      else reject(Object.assign(new Error(`${file} failed`), { exitCode: exitCode ?? undefined, signal: signal ?? undefined, stderr }));
    });
  });
  exited.catch(() => undefined);
  return { process: child, exited };
}

/**
 * Start a long-lived program with pipes on all three streams (the layer worker serving several unpacks).
 * `done` settles when it exits, rejecting with an EnvyError naming it and its stderr tail when it fails.
 */
export async function startProcess(
  file: string,
  args: readonly string[],
  options: PlainRunOptions = {},
): Promise<{ stdin: NodeJS.WritableStream; stdout: NodeJS.ReadableStream; pid: number | undefined; kill: () => void; done: Promise<void> }> {
  const { errorCode = 'EXEC', hint } = options;
  debug(`$ ${formatCommand(file, args)}`);
  // node:child_process, not execa: the layer worker is started on every pull and build (see filterThrough).
  const child = spawnChild(file, args, ['pipe', 'pipe', 'pipe']);
  const done = (async (): Promise<void> => {
    try {
      await child.exited;
    } catch (error) {
      throw toEnvyError(file, args, error, errorCode, hint);
    }
  })();
  done.catch(() => undefined);
  return { stdin: child.process.stdin!, stdout: child.process.stdout!, pid: child.process.pid, kill: () => void child.process.kill('SIGKILL'), done };
}
