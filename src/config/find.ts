/** Finding env.yaml: kept apart from the loader so the fast paths (exec) never load yaml or the validator. */
import { existsSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { EnvyError } from '../errors.js';

export const SPEC_FILE_NAMES = ['env.yaml', 'env.yml'] as const;

/**
 * The env.yaml that governs `startDir`: the nearest one in it or above it,
 * like git looks for .git. env.yaml wins over env.yml in the same directory.
 */
export function findSpecFile(startDir: string): string {
  const searched: string[] = [];
  let dir = resolve(startDir);
  for (;;) {
    searched.push(dir);
    for (const name of SPEC_FILE_NAMES) {
      const candidate = join(dir, name);
      if (existsSync(candidate) && !isDirectory(candidate)) return candidate;
    }
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  const where =
    searched.length <= 3
      ? searched.join(', ')
      : `${searched[0]} and its ${searched.length - 1} parent directories up to ${searched[searched.length - 1]}`;
  throw new EnvyError('CONFIG_NOT_FOUND', `no env.yaml (or env.yml) found in ${where}`, {
    hint: 'create one with `envy init`, or name a file with -f FILE',
    details: searched.map((searchedDir) => `looked in ${searchedDir}`),
  });
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

