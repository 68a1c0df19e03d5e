/** Finding and loading the project's env.yaml and env.lock: shared by every command that needs a spec. */
import { dirname, join, relative, resolve } from 'node:path';
import { findSpecFile, loadSpec } from '../config/load.js';
import type { LoadedSpec } from '../config/types.js';
import { LOCK_FILE_NAME, readLock } from '../plan/lock.js';
import type { EnvLock } from '../plan/types.js';

export interface Project extends LoadedSpec {
  lockPath: string;
  lock: EnvLock | undefined;
}

export async function loadProject(file: string | undefined): Promise<Project> {
  const specFile = file ? resolve(file) : findSpecFile(process.cwd());
  const loaded = await loadSpec(specFile);
  const lockPath = join(dirname(loaded.source.file), LOCK_FILE_NAME);
  const rel = relative(process.cwd(), lockPath);
  const lock = readLock(lockPath, rel.startsWith('..') ? lockPath : rel);
  return { ...loaded, lockPath, lock };
}
