import { chmodSync, cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll } from 'vitest';
import type { EnvSpec } from '../../../src/config/types.js';
import { EnvyError } from '../../../src/errors.js';
import { compilePlan, type HostUser } from '../../../src/plan/compile.js';
import type { BuildPlan, EnvLock } from '../../../src/plan/types.js';

export const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '../../fixtures/plan');
export const FIXTURE_PROJECT = join(FIXTURES, 'project');

/** A fixed host user, so keys do not depend on who runs the tests. */
export const HOST_USER: HostUser = { name: 'alice', uid: 1000, gid: 1000 };

/**
 * An EnvSpec as the loader would produce for a minimal env.yaml, with the
 * defaults src/config/types.ts documents, and `overrides` laid on top.
 */
export function makeSpec(overrides: Partial<EnvSpec> = {}): EnvSpec {
  return {
    name: 'demo',
    base: { kind: 'debian', suite: 'bookworm' },
    packages: { apt: [], npm: [], pip: [] },
    env: {},
    files: [],
    setup: [],
    user: { shell: '/bin/sh' },
    workdir: '/workspace',
    workspace: { path: '/workspace', sync: 'bind', direction: 'two-way', ignore: [] },
    mounts: [],
    ports: [],
    services: [],
    hooks: { onCreate: [], postStart: [], postAttach: [] },
    network: 'host',
    resources: {},
    backend: { type: 'namespace' },
    ...overrides,
  };
}

/** A setup step with the loader's defaults. */
export function setup(run: string, extra: Partial<EnvSpec['setup'][number]> = {}): EnvSpec['setup'][number] {
  return { run, inputs: [], shell: ['/bin/sh', '-c'], user: 'root', ...extra };
}

export function compile(spec: EnvSpec, projectDir: string, lock?: EnvLock): BuildPlan {
  return compilePlan(spec, projectDir, lock, { arch: 'x86_64', hostUser: HOST_USER });
}

const roots: string[] = [];
afterAll(() => {
  for (const root of roots) rmSync(root, { recursive: true, force: true });
});

export function tempDir(prefix = 'envy-plan-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  roots.push(dir);
  return dir;
}

/** A fresh copy of the fixture project in its own temp dir (tests edit it freely). */
export function copyOfFixture(): string {
  const dir = join(tempDir(), 'project');
  cpSync(FIXTURE_PROJECT, dir, { recursive: true });
  return dir;
}

export type TreeSpec = Record<string, string | { content: string; mode: number } | { symlink: string }>;

/** A project dir holding `tree` (paths relative, parents created). */
export function project(tree: TreeSpec): string {
  const dir = tempDir();
  for (const [path, entry] of Object.entries(tree)) {
    const target = join(dir, path);
    mkdirSync(dirname(target), { recursive: true });
    if (typeof entry === 'string') writeFileSync(target, entry);
    else if ('symlink' in entry) symlinkSync(entry.symlink, target);
    else {
      writeFileSync(target, entry.content);
      chmodSync(target, entry.mode);
    }
  }
  return dir;
}

export function keys(plan: BuildPlan): string[] {
  return plan.steps.map((step) => step.key);
}

/** Run `fn` expecting an EnvyError; returns it. */
export function envyError(fn: () => unknown): EnvyError {
  try {
    fn();
  } catch (error) {
    if (error instanceof EnvyError) return error;
    throw error;
  }
  throw new Error('expected an EnvyError, but nothing was thrown');
}
