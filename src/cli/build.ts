/** `envy build`: build the image env.yaml describes (cached steps cost nothing) and update env.lock. */
import { buildProject } from '../env/build.js';
import { loadProject } from './project.js';
import { createReporter, type ProgressMode } from './ui/reporter.js';

interface BuildArgs {
  file?: string;
  frozen: boolean;
  quiet: boolean;
  progress: ProgressMode;
}

export async function run(args: BuildArgs): Promise<number> {
  const project = await loadProject(args.file);
  const reporter = await createReporter({ mode: args.quiet ? 'quiet' : args.progress });
  try {
    const result = await buildProject(project, { frozen: args.frozen, reporter });
    const cached = result.plan.steps.length - result.built.length;
    reporter.report({
      type: 'message',
      text: `built ${project.spec.name}: image ${result.image.key.slice(0, 12)} (${result.built.length} built, ${cached} cached)${result.lockChanged && !args.frozen ? '; env.lock updated' : ''}`,
    });
  } finally {
    await reporter.close();
  }
  return 0;
}
