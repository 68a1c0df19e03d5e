import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';

export const envyBin = resolve(import.meta.dirname, '../../../bin/envy.js');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run the built CLI (dist/ is built by test/build-once.ts) in `cwd`. */
export function envy(args: string[], cwd: string, env: Record<string, string> = {}): CliResult {
  const result = spawnSync(process.execPath, [envyBin, ...args], {
    cwd,
    env: { ...process.env, NO_COLOR: '1', ...env },
    encoding: 'utf8',
    timeout: 30_000,
  });
  return { code: result.status ?? -1, stdout: result.stdout, stderr: result.stderr };
}
