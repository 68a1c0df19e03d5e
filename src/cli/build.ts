/** `envy build`: build the image env.yaml describes (cached steps cost nothing) and update env.lock. */
import { HOST_BASE_LABEL } from '../build/executor.js';
import { buildProject, type ProjectBuild } from '../env/build.js';
import { EnvyError } from '../errors.js';
import { loadProject, type Project } from './project.js';
import { createReporter, type ProgressMode } from './ui/reporter.js';
import { mark } from '../build/trace.js';

interface BuildArgs {
  file?: string;
  frozen: boolean;
  quiet: boolean;
  progress: ProgressMode;
}

export async function run(args: BuildArgs): Promise<number> {
  mark('build command');
  const project = await loadProject(args.file);
  mark('project loaded');
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
    mark('done');
  }
  return 0;
}

/**
 * Build for a command that ships the image outside envy (export, devcontainer): such an image must
 * carry its own /usr, so a host base is refused with `why` (what the command would have made of it).
 */
export async function buildSelfContainedImage(project: Project, args: { quiet: boolean; progress: ProgressMode }, why: string, hint: string): Promise<ProjectBuild> {
  const reporter = await createReporter({ mode: args.quiet ? 'quiet' : args.progress });
  let build: ProjectBuild;
  try {
    build = await buildProject(project, { frozen: false, reporter });
  } finally {
    await reporter.close();
  }
  if (build.image.config.labels?.[HOST_BASE_LABEL]) {
    throw new EnvyError('USAGE', `${project.spec.name} is based on the host's /usr (base: {host: true}), ${why}`, { hint });
  }
  return build;
}
