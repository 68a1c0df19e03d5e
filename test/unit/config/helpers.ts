import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import { EnvyError } from '../../../src/errors.js';
import { loadSpec, type LoadOptions } from '../../../src/config/load.js';
import type { LoadedSpec } from '../../../src/config/types.js';

const roots: string[] = [];
afterAll(() => {
  for (const root of roots) rmSync(root, { recursive: true, force: true });
});

/** A fresh temp directory, removed after the test file. */
export function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'envy-config-'));
  roots.push(dir);
  return dir;
}

/** Write `content` as env.yaml in a fresh project dir and load it (errors are labelled "env.yaml"). */
export async function loadText(content: string | Buffer, options: LoadOptions = {}): Promise<LoadedSpec> {
  const dir = tempDir();
  writeFileSync(join(dir, 'env.yaml'), content);
  return loadSpec('env.yaml', { env: {}, cwd: dir, ...options });
}

/** Load `content` expecting an EnvyError; returns it. */
export async function loadError(content: string | Buffer, options: LoadOptions = {}): Promise<EnvyError> {
  try {
    await loadText(content, options);
  } catch (error) {
    if (error instanceof EnvyError) return error;
    throw error;
  }
  throw new Error('expected env.yaml to be rejected, but it loaded');
}

/** The smallest valid env.yaml, to build variations on. */
export const MINIMAL = 'name: demo\nbase: {host: true}\n';
