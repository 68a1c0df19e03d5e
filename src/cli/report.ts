/** Turns any failure into `envy: <message>` (+ details and hint) and an exit code. */
import { ExitCode, isEnvyError } from '../errors.js';

export function reportError(error: unknown, debugMode: boolean): number {
  const write = (line: string): void => void process.stderr.write(`${line}\n`);
  if (isEnvyError(error)) {
    write(`envy: ${error.message}`);
    for (const line of error.details) write(`  ${line}`);
    if (error.hint) write(`hint: ${error.hint}`);
    if (debugMode && error.stack) write(error.stack);
    return error.exitCode;
  }
  const message = error instanceof Error ? error.message : String(error);
  write(`envy: internal error: ${message}`);
  if (debugMode && error instanceof Error && error.stack) write(error.stack);
  else write('hint: this is a bug in envy; re-run with --debug for the stack trace and report it');
  return ExitCode.Internal;
}
