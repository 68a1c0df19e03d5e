/** `envy up [--watch]`: build what changed, start the environment, run the hooks that are due, start the services, and say how to enter. */
import type { EnvSpec } from '../config/types.js';
import { up, type UpResult } from '../env/environment.js';
import { describeServices } from '../env/services.js';
import { EnvyError, isEnvyError } from '../errors.js';
import { loadProject, type Project } from './project.js';
import { reportError } from './report.js';
import { createReporter, type ProgressMode } from './ui/reporter.js';

interface UpArgs {
  file?: string;
  frozen: boolean;
  quiet: boolean;
  progress: ProgressMode;
  watch?: boolean;
  debug?: boolean;
}

export async function run(args: UpArgs): Promise<number> {
  const project = await loadProject(args.file);
  const reporter = await createReporter({ mode: args.quiet ? 'quiet' : args.progress });
  const abort = new AbortController();
  const onInterrupt = (): void => abort.abort(new Error('interrupted'));
  process.once('SIGINT', onInterrupt);
  try {
    let result;
    try {
      result = await up(project, { frozen: args.frozen, reporter, signal: abort.signal });
    } catch (error) {
      // Ctrl-C reaches the build step or hook too (same process group), which then fails: that failure
      // is the interruption, not a step's fault.
      if (abort.signal.aborted) throw new EnvyError('INTERRUPTED', 'interrupted: envy up stopped (finished build steps stay cached; the step that was running left nothing behind)', { hint: 'run envy up again to continue' });
      throw error;
    }
    await reporter.close();
    if (!args.quiet) process.stdout.write(summary(project, result));
  } catch (error) {
    // Watching goes on after a failed build, hook or service: the next save may fix it.
    if (!args.watch || abort.signal.aborted) throw error;
    await reporter.close();
    reportError(error, args.debug === true);
  } finally {
    process.off('SIGINT', onInterrupt);
    await reporter.close();
  }
  if (args.watch) return watch(project, args);
  return 0;
}

function summary(project: Project, result: UpResult, brief = false): string {
  const lines = result.unchanged
    ? [`${project.spec.name} is up to date and running (image ${result.image.key.slice(0, 12)})`]
    : [`${project.spec.name} is running (image ${result.image.key.slice(0, 12)}, ${result.built} step${result.built === 1 ? '' : 's'} built)`];
  for (const note of result.notes) lines.push(`note: ${note}`);
  if (!brief) lines.push(`  workspace: ${project.source.dir} -> ${project.spec.workspace.path}`);
  if (result.services.length > 0) lines.push(`  services: ${describeServices(result.services)}`);
  if (project.spec.ports.length > 0) lines.push(`  ports: ${project.spec.ports.map((p) => `127.0.0.1:${p.host}->${p.container}/${p.protocol}`).join(', ')}`);
  if (!brief) lines.push('  enter it: envy shell    run a command: envy exec -- CMD    logs: envy logs -f    stop it: envy down');
  return `${lines.join('\n')}\n`;
}

/** Top-level fields (and services by name) that differ: what people are told changed. */
export function describeChanges(before: EnvSpec, after: EnvSpec): string[] {
  const changed: string[] = [];
  const keys = new Set([...Object.keys(before), ...Object.keys(after)] as (keyof EnvSpec)[]);
  for (const key of keys) {
    if (key === 'services') continue;
    if (JSON.stringify(before[key]) !== JSON.stringify(after[key])) changed.push(key);
  }
  const old = new Map(before.services.map((s) => [s.name, JSON.stringify(s)]));
  for (const service of after.services) {
    const was = old.get(service.name);
    if (was === undefined) changed.push(`services.${service.name} (added)`);
    else if (was !== JSON.stringify(service)) changed.push(`services.${service.name}`);
    old.delete(service.name);
  }
  for (const name of old.keys()) changed.push(`services.${name} (removed)`);
  return changed;
}

/**
 * `--watch`: re-apply env.yaml on every save until Ctrl-C, which leaves the environment running.
 * A bad edit is reported in one line and the running configuration stays.
 */
async function watch(initial: Project, args: UpArgs): Promise<number> {
  const { watch: chokidarWatch } = await import('chokidar');
  const file = initial.source.file;
  const say = (line: string): void => void process.stdout.write(`${line}\n`);
  let current = initial;
  let running: Promise<void> | undefined;
  let again = false;
  let abort: AbortController | undefined;

  const apply = async (): Promise<void> => {
    let next: Project;
    try {
      next = await loadProject(file);
    } catch (error) {
      if (!isEnvyError(error)) throw error;
      say(`envy: ${error.message}`);
      say(`watching ${file}: the environment keeps the last good configuration`);
      return;
    }
    if (next.source.digest === current.source.digest) return;
    const changes = describeChanges(current.spec, next.spec);
    say(`env.yaml changed${changes.length > 0 ? `: ${changes.join(', ')}` : ' (nothing that matters)'}`);
    const reporter = await createReporter({ mode: args.quiet ? 'quiet' : args.progress });
    abort = new AbortController();
    try {
      const result = await up(next, { frozen: args.frozen, reporter, signal: abort.signal });
      await reporter.close();
      current = next;
      // Re-applies say what changed and how things stand; the how-to lines were said once.
      if (!args.quiet) process.stdout.write(summary(next, result, true));
    } catch (error) {
      await reporter.close();
      if (abort.signal.aborted) return;
      reportError(error, args.debug === true);
      // The spec is what it is now; what failed (a service, a build step) is said above.
      if (isEnvyError(error) && error.code === 'COMMAND') current = next;
      say(`watching ${file}: fix env.yaml and save to try again`);
    } finally {
      abort = undefined;
    }
  };
  const trigger = (): void => {
    if (running) {
      again = true;
      return;
    }
    running = (async () => {
      do {
        again = false;
        await apply();
      } while (again);
    })().finally(() => (running = undefined));
  };

  const watcher = chokidarWatch(file, { ignoreInitial: true, awaitWriteFinish: { stabilityThreshold: 150, pollInterval: 50 } });
  watcher.on('add', trigger);
  watcher.on('change', trigger);
  await new Promise<void>((resolve) => watcher.once('ready', () => resolve()));
  say(`watching ${file} for changes (Ctrl-C stops watching; the environment keeps running)`);
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      abort?.abort(new Error('interrupted'));
      resolve();
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  await watcher.close();
  await running?.catch(() => undefined);
  say(`stopped watching; ${current.spec.name} keeps running (envy down stops it)`);
  return 0;
}
