/**
 * One error family for everything envy reports to people. The CLI prints
 * `envy: <message>` plus the hint and exits with `exitCode`; a stack trace is
 * shown only with --debug, because a user's mistake is not a crash.
 */

/** Process exit codes, documented in the README. */
export const ExitCode = {
  Ok: 0,
  /** A command run inside the environment (hook, setup step, service) failed. */
  CommandFailed: 1,
  /** Bad command line or bad env.yaml. */
  Usage: 2,
  /** envy itself failed (a bug, or an unexpected host condition). */
  Internal: 3,
  /** The host lacks something envy needs (a package, a kernel feature, a permission). */
  HostUnsupported: 4,
  /** A build step failed. */
  BuildFailed: 5,
  /** A registry or the network failed. */
  Network: 6,
  /** env.lock disagrees with env.yaml under --frozen. */
  LockMismatch: 7,
  /** The store or an environment is busy (held by another envy) and waiting was declined. */
  Busy: 8,
  /** Interrupted (SIGINT, Ctrl-C): 128 + 2, as a shell reports it. */
  Interrupted: 130,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

export type ErrorCode =
  | 'CONFIG_NOT_FOUND'
  | 'CONFIG_INVALID'
  | 'CONFIG_READ'
  | 'USAGE'
  | 'TEMPLATE'
  | 'LOCK_MISMATCH'
  | 'LOCK_INVALID'
  | 'HOST'
  | 'EXEC'
  | 'BUILD'
  | 'REGISTRY'
  | 'IMAGE'
  | 'RUNTIME'
  | 'STATE'
  | 'BUSY'
  | 'INTERRUPTED'
  | 'COMMAND'
  | 'INTERNAL';

const defaultExit: Record<ErrorCode, ExitCode> = {
  CONFIG_NOT_FOUND: ExitCode.Usage,
  CONFIG_INVALID: ExitCode.Usage,
  CONFIG_READ: ExitCode.Usage,
  USAGE: ExitCode.Usage,
  TEMPLATE: ExitCode.Usage,
  LOCK_MISMATCH: ExitCode.LockMismatch,
  LOCK_INVALID: ExitCode.Usage,
  HOST: ExitCode.HostUnsupported,
  EXEC: ExitCode.Internal,
  BUILD: ExitCode.BuildFailed,
  REGISTRY: ExitCode.Network,
  IMAGE: ExitCode.Internal,
  RUNTIME: ExitCode.Internal,
  STATE: ExitCode.Internal,
  BUSY: ExitCode.Busy,
  INTERRUPTED: ExitCode.Interrupted,
  COMMAND: ExitCode.CommandFailed,
  INTERNAL: ExitCode.Internal,
};

export interface EnvyErrorOptions {
  hint?: string;
  exitCode?: number;
  cause?: unknown;
  /** Further lines (e.g. every validation problem after the first), printed after the message. */
  details?: string[];
}

export class EnvyError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  readonly exitCode: number;
  readonly details: string[];

  constructor(code: ErrorCode, message: string, options: EnvyErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'EnvyError';
    this.code = code;
    this.hint = options.hint;
    this.exitCode = options.exitCode ?? defaultExit[code];
    this.details = options.details ?? [];
  }
}

export function isEnvyError(e: unknown): e is EnvyError {
  return e instanceof EnvyError;
}
