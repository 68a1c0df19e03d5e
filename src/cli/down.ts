/** `envy down [--rm]`: stop the environment (keeping its writable layer), or forget it entirely. */
import { down } from '../env/environment.js';
import { loadProject } from './project.js';

export async function run(args: { file?: string; rm: boolean; quiet: boolean }): Promise<number> {
  const project = await loadProject(args.file);
  const result = await down(project, { remove: args.rm });
  if (!args.quiet) {
    const what = result.removed ? 'stopped and removed (writable layer and volumes deleted)' : result.wasRunning ? 'stopped (its writable layer is kept; envy up resumes it)' : 'was not running';
    process.stdout.write(`${project.spec.name}: ${what}\n`);
  }
  return 0;
}
