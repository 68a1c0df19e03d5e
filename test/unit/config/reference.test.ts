import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';

const root = resolve(import.meta.dirname, '../../..');

function generate(projectRoot: string, ...args: string[]) {
  return spawnSync(process.execPath, [join(projectRoot, 'scripts/gen-reference.mjs'), ...args], { cwd: projectRoot, encoding: 'utf8', timeout: 30_000 });
}

/** A copy of the script, schema and README in a scratch project, so the real README is never rewritten. */
function scratchProject(readme: string): string {
  const dir = tempDir();
  mkdirSync(join(dir, 'scripts'));
  mkdirSync(join(dir, 'schemas'));
  copyFileSync(join(root, 'scripts/gen-reference.mjs'), join(dir, 'scripts/gen-reference.mjs'));
  copyFileSync(join(root, 'schemas/env.schema.json'), join(dir, 'schemas/env.schema.json'));
  symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'));
  writeFileSync(join(dir, 'README.md'), readme);
  return dir;
}

describe('README env.yaml reference', () => {
  it('matches schemas/env.schema.json (run `node scripts/gen-reference.mjs` after editing the schema)', () => {
    const result = generate(root, '--check');
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
  });

  it('--check fails on a stale section, and a rewrite touches nothing outside the markers', () => {
    const dir = scratchProject('# Title\n\nintro\n\n<!-- env-reference:start -->\nold text\n<!-- env-reference:end -->\n\n## After\n');
    const stale = generate(dir, '--check');
    expect(stale.status).toBe(1);
    expect(stale.stderr).toContain('the env.yaml reference is stale');

    expect(generate(dir).status).toBe(0);
    const rewritten = readFileSync(join(dir, 'README.md'), 'utf8');
    expect(rewritten.startsWith('# Title\n\nintro\n\n<!-- env-reference:start -->\n<!-- Generated from schemas/env.schema.json')).toBe(true);
    expect(rewritten.endsWith('<!-- env-reference:end -->\n\n## After\n')).toBe(true);
    expect(rewritten).toContain('| `services.<name>.ready.interval` | string | `"1s"` |');
    expect(generate(dir, '--check').status).toBe(0);
  });
});
