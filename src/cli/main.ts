/**
 * envy's entry point. Start-up time is a feature: `--version` answers before
 * anything is imported, and each command's module (with its dependencies) is
 * loaded only when that command runs, so `envy plan` never pays for ink/React.
 */
import { reportError } from './report.js';

declare const ENVY_VERSION: string;
export const version = typeof ENVY_VERSION === 'string' ? ENVY_VERSION : 'dev';

const argv = process.argv.slice(2);

/**
 * `envy exec [-e K=V]... [-w DIR] [--root] [-f FILE] -- CMD...` into a running, unchanged environment
 * skips yargs too: that path must cost little more than Node's own start. Anything this does not
 * recognise goes to the full CLI, which parses and reports errors properly.
 */
async function fastExec(args: string[]): Promise<number | undefined> {
  if (args[0] !== 'exec') return undefined;
  const separator = args.indexOf('--');
  if (separator < 0 || separator === args.length - 1) return undefined;
  const options = { env: {} as Record<string, string>, root: false, workdir: undefined as string | undefined, file: undefined as string | undefined };
  for (let i = 1; i < separator; i++) {
    const flag = args[i]!;
    const value = args[i + 1];
    if (flag === '--root') options.root = true;
    else if ((flag === '-e' || flag === '--env') && value !== undefined && i + 1 < separator && value.indexOf('=') > 0) {
      options.env[value.slice(0, value.indexOf('='))] = value.slice(value.indexOf('=') + 1);
      i++;
    } else if ((flag === '-w' || flag === '--workdir') && value !== undefined && i + 1 < separator) {
      options.workdir = value;
      i++;
    } else if ((flag === '-f' || flag === '--file') && value !== undefined && i + 1 < separator) {
      options.file = value;
      i++;
    } else return undefined;
  }
  const { tryFastExec } = await import('./exec-fast.js');
  return tryFastExec({ ...options, argv: args.slice(separator + 1) });
}

async function main(): Promise<number> {
  if (argv.length === 1 && (argv[0] === '--version' || argv[0] === '-V')) {
    process.stdout.write(`${version}\n`);
    return 0;
  }
  const fast = await fastExec(argv);
  if (fast !== undefined) return fast;
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
