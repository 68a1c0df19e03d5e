/**
 * `envy devcontainer`: write .devcontainer/devcontainer.json for editors that speak the Dev Containers
 * spec, with envy's image saved next to it as a docker-archive (`--load` loads it into podman or docker).
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, relative } from 'node:path';
import { exportInUserNamespace } from '../build/userns.js';
import { resolveBindSource } from '../config/normalize.js';
import { ARCHIVE_NAME, devcontainerJson, imageReference, renderDevcontainer } from '../env/devcontainer.js';
import { EnvyError } from '../errors.js';
import { writeFileAtomic } from '../state/atomic.js';
import { loadProject } from './project.js';
import { buildSelfContainedImage } from './build.js';
import type { ProgressMode } from './ui/reporter.js';

interface DevcontainerArgs {
  file?: string;
  force: boolean;
  load?: 'podman' | 'docker';
  quiet: boolean;
  progress: ProgressMode;
}

export async function run(args: DevcontainerArgs): Promise<number> {
  const project = await loadProject(args.file);
  const dir = join(project.source.dir, '.devcontainer');
  const target = join(dir, 'devcontainer.json');
  const shown = relative(process.cwd(), target) || target;
  // Refuse before the (possibly long) build: nothing is written unless the file may be replaced.
  if (existsSync(target) && !args.force) {
    throw new EnvyError('USAGE', `${shown} exists; envy devcontainer does not overwrite it`, { hint: 'pass --force to replace it' });
  }
  const build = await buildSelfContainedImage(
    project,
    args,
    'which a container image cannot carry',
    'a Dev Container needs a self-contained base: debian, image or oci (envy ssh-config attaches editors to any environment)',
  );
  const json = devcontainerJson({
    spec: project.spec,
    imageKey: build.image.key,
    user: build.identity.name,
    bindSource: (source) => resolveBindSource(source, project.source.dir, homedir()),
  });
  // Made here, as the user: the export runs as root of the user namespace and would own a dir it made.
  mkdirSync(dir, { recursive: true });
  const archive = join(dir, ARCHIVE_NAME);
  const tag = imageReference(project.spec.name, build.image.key);
  await exportInUserNamespace(build.identity, build.store.root, build.image.key, { dockerArchive: archive }, tag);
  // A multi-megabyte archive does not belong in version control; devcontainer.json does.
  const gitignore = join(dir, '.gitignore');
  const ignored = existsSync(gitignore) ? readFileSync(gitignore, 'utf8') : '';
  if (!ignored.split('\n').includes(ARCHIVE_NAME)) writeFileAtomic(gitignore, `${ignored}${ignored && !ignored.endsWith('\n') ? '\n' : ''}${ARCHIVE_NAME}\n`);
  writeFileAtomic(target, renderDevcontainer(json, ARCHIVE_NAME));
  if (args.load) {
    const { run: runProgram } = await import('../exec.js');
    await runProgram(args.load, ['load', '-q', '-i', archive], { errorCode: 'HOST', hint: `is ${args.load} installed and working for this user? (${args.load} info)` });
  }
  if (!args.quiet) {
    const lines = [`wrote ${shown} (image ${tag}, saved as .devcontainer/${ARCHIVE_NAME})`];
    if (!args.load) lines.push(`  load the image first: podman load -i .devcontainer/${ARCHIVE_NAME}   (or docker load -i ...)`);
    else lines.push(`  loaded ${tag} into ${args.load}`);
    lines.push('  then open the folder in an editor with Dev Containers support ("Reopen in Container")');
    process.stdout.write(`${lines.join('\n')}\n`);
  }
  return 0;
}
