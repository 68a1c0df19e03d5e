/** `envy exec -- CMD...` and `envy shell`: run in the project's environment, starting it if it is down. */
import { EnvyError } from '../errors.js';
import { debugging } from '../exec.js';
import { runtimeFor } from '../runtime/select.js';
import { tryFastExec } from './exec-fast.js';

// The full path (env.yaml, plan, build) is imported only when the fast path cannot serve.
const lifecycle = () => import('../env/environment.js');

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
  const [{ loadProject }, { createReporter }, { ensureRunning }] = await Promise.all([import('./project.js'), import('./ui/reporter.js'), lifecycle()]);
  const project = await loadProject(args.file);
  const runtime = await runtimeFor(project.spec.backend.type);
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
  const extra = parseEnv(args.env);
  const fast = await tryFastExec({ file: args.file, argv, env: extra, workdir: args.workdir, root: args.root });
  if (fast !== undefined) return fast;
  const { env, runtime } = await prepare(args);
  const { processEnv } = await lifecycle();
  const spec = {
    argv,
    env: processEnv(env.image, env.identity, args.root, extra),
    cwd: args.workdir ?? env.spec.workdir,
    root: args.root,
    identity: env.identity,
    tty: process.stdin.isTTY === true && process.stdout.isTTY === true,
  };
  // A VM just booted for this exec (or a changed env.yaml): nothing follows the command, so become
  // the C client as the fast path does (unless --debug, which records what runs).
  if (runtime.backend === 'vm' && !debugging()) (await import('../runtime/vm/native-exec.js')).replaceWithNativeExec(env.config, spec);
  return runtime.exec(env.config, spec);
}

export async function runShell(args: { file?: string; root: boolean; quiet: boolean }): Promise<number> {
  const { env, runtime } = await prepare(args);
  const { runHooks, shellProcess } = await lifecycle();
  await runHooks(env, runtime, 'postAttach', env.spec.hooks.postAttach);
  return runtime.exec(env.config, shellProcess(env, { root: args.root, tty: process.stdin.isTTY === true }));
}
