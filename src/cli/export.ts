/** `envy export --oci DIR | --docker-archive FILE`: the built image, runnable by podman, docker or Kubernetes. */
import { resolve } from 'node:path';
import { exportInUserNamespace } from '../build/userns.js';
import { EnvyError } from '../errors.js';
import { loadProject } from './project.js';
import { buildSelfContainedImage } from './build.js';
import type { ProgressMode } from './ui/reporter.js';

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
  const build = await buildSelfContainedImage(project, args, 'which is not part of its image', 'export needs a self-contained base: debian, image or oci');
  const target = args.oci !== undefined ? { oci: resolve(args.oci) } : { dockerArchive: resolve(args.dockerArchive!) };
  const tag = args.tag ?? `localhost/${project.spec.name}:latest`;
  const result = await exportInUserNamespace(build.identity, build.store.root, build.image.key, target, tag);
  if (!args.quiet) {
    const where = 'oci' in target ? `OCI layout ${target.oci}` : `docker-archive ${target.dockerArchive}`;
    process.stdout.write(`exported ${tag} (${result.layers.length} layers, config ${result.configDigest.slice(0, 19)}) to ${where}\n`);
  }
  return 0;
}
