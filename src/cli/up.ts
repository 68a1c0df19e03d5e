/** `envy up`: build what changed, start the environment, run the hooks that are due, and say how to enter. */
import { up } from '../env/environment.js';
import { EnvyError } from '../errors.js';
import { loadProject } from './project.js';
import { createReporter, type ProgressMode } from './ui/reporter.js';

interface UpArgs {
  file?: string;
  frozen: boolean;
  quiet: boolean;
  progress: ProgressMode;
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
    if (args.quiet) return 0;
    const lines = result.unchanged
      ? [`${project.spec.name} is up to date and running (image ${result.image.key.slice(0, 12)})`]
      : [`${project.spec.name} is running (image ${result.image.key.slice(0, 12)}, ${result.built} step${result.built === 1 ? '' : 's'} built)`];
    for (const note of result.notes) lines.push(`note: ${note}`);
    lines.push(`  workspace: ${project.source.dir} -> ${project.spec.workspace.path}`);
    if (project.spec.ports.length > 0) lines.push(`  ports: ${project.spec.ports.map((p) => `127.0.0.1:${p.host}->${p.container}/${p.protocol}`).join(', ')}`);
    lines.push('  enter it: envy shell    run a command: envy exec -- CMD    stop it: envy down');
    process.stdout.write(`${lines.join('\n')}\n`);
    return 0;
  } finally {
    process.off('SIGINT', onInterrupt);
    await reporter.close();
  }
}
