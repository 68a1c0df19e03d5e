/**
 * envy's entry point after bin/envy.js (which answers `--version` and runs the `exec` fast path,
 * src/cli/exec-fast.ts, before this is loaded). Start-up time is a feature: each command's module
 * (with its dependencies) is loaded only when that command runs, so `envy plan` never pays for ink/React.
 */
import { reportError } from './report.js';

declare const ENVY_VERSION: string;
export const version = typeof ENVY_VERSION === 'string' ? ENVY_VERSION : 'dev';

const argv = process.argv.slice(2);

async function main(): Promise<number> {
  if (argv.length === 1 && (argv[0] === '--version' || argv[0] === '-V')) {
    process.stdout.write(`${version}\n`);
    return 0;
  }
  const { runCli } = await import('./commands.js');
  return runCli(argv, version);
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.exitCode = reportError(error, argv.includes('--debug'));
  },
);
