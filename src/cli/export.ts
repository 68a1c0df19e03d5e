/** `envy export --oci DIR | --docker-archive FILE`: the built image, runnable by podman, docker or Kubernetes. */
import { resolve } from 'node:path';
import { HOST_BASE_LABEL } from '../build/executor.js';
import { exportInUserNamespace } from '../build/userns.js';
import { buildProject } from '../env/build.js';
import { EnvyError } from '../errors.js';
import { loadProject } from './project.js';
import { createReporter, type ProgressMode } from './ui/reporter.js';

interface ExportArgs {
  file?: string;
  oci?: string;
  dockerArchive?: string;
  tag?: string;
  quiet: boolean;
  progress: ProgressMode;
}

export async function run(args: ExportArgs): Promise<number> {
  if ((args.oci === undefined) === (args.dockerArchive === undefined)) {
    throw new EnvyError('USAGE', 'envy export needs exactly one of --oci DIR or --docker-archive FILE');
  }
  const project = await loadProject(args.file);
  const reporter = await createReporter({ mode: args.quiet ? 'quiet' : args.progress });
  let build;
  try {
    build = await buildProject(project, { frozen: false, reporter });
  } finally {
    await reporter.close();
  }
  if (build.image.config.labels?.[HOST_BASE_LABEL]) {
    throw new EnvyError('USAGE', `${project.spec.name} is based on the host's /usr (base: {host: true}), which is not part of its image`, {
      hint: 'export needs a self-contained base: debian, image or oci',
    });
  }
  const target = args.oci !== undefined ? { oci: resolve(args.oci) } : { dockerArchive: resolve(args.dockerArchive!) };
  const tag = args.tag ?? `localhost/${project.spec.name}:latest`;
  const result = await exportInUserNamespace(build.identity, build.store.root, build.image.key, target, tag);
  if (!args.quiet) {
    const where = 'oci' in target ? `OCI layout ${target.oci}` : `docker-archive ${target.dockerArchive}`;
    process.stdout.write(`exported ${tag} (${result.layers.length} layers, config ${result.configDigest.slice(0, 19)}) to ${where}\n`);
  }
  return 0;
}
