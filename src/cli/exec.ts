/** `envy exec -- CMD...` and `envy shell`: run in the project's environment, starting it if it is down. */
import { EnvyError } from '../errors.js';
import { ensureRunning, processEnv, runHooks, shellProcess } from '../env/environment.js';
import { NamespaceRuntime } from '../runtime/namespace/runtime.js';
import { loadProject } from './project.js';
import { createReporter } from './ui/reporter.js';

interface ExecArgs {
  file?: string;
  command?: string[];
  '--'?: string[];
  env?: string[];
  workdir?: string;
  root: boolean;
  quiet: boolean;
}

function parseEnv(pairs: string[] = []): Record<string, string> {
  const env: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new EnvyError('USAGE', `-e ${pair}: expected KEY=VALUE`);
    env[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return env;
}

async function prepare(args: { file?: string; quiet: boolean }) {
  const project = await loadProject(args.file);
  const runtime = new NamespaceRuntime();
  // Starting (or building) prints progress to stderr only when there is something to do.
  const reporter = await createReporter({ mode: args.quiet ? 'quiet' : 'plain' });
  try {
    return { env: await ensureRunning(project, reporter, runtime), runtime };
  } finally {
    await reporter.close();
  }
}

export async function run(args: ExecArgs): Promise<number> {
  const argv = [...(args.command ?? []), ...(args['--'] ?? [])].map(String);
  if (argv.length === 0) throw new EnvyError('USAGE', 'envy exec needs a command: envy exec -- CMD [ARGS...]');
  const { env, runtime } = await prepare(args);
  return runtime.exec(env.config, {
    argv,
    env: processEnv(env.image, env.identity, args.root, parseEnv(args.env)),
    cwd: args.workdir ?? env.spec.workdir,
    root: args.root,
    identity: env.identity,
    tty: process.stdin.isTTY === true && process.stdout.isTTY === true,
  });
}

export async function runShell(args: { file?: string; root: boolean; quiet: boolean }): Promise<number> {
  const { env, runtime } = await prepare(args);
  await runHooks(env, runtime, 'postAttach', env.spec.hooks.postAttach);
  return runtime.exec(env.config, shellProcess(env, { root: args.root, tty: process.stdin.isTTY === true }));
}
