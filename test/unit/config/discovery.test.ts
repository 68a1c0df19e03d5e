import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { EnvyError } from '../../../src/errors.js';
import { displayName, findSpecFile, loadSpec } from '../../../src/config/load.js';
import { MINIMAL, tempDir } from './helpers.js';

describe('findSpecFile', () => {
  it('finds env.yaml in the start directory', () => {
    const root = tempDir();
    writeFileSync(join(root, 'env.yaml'), MINIMAL);
    expect(findSpecFile(root)).toBe(join(root, 'env.yaml'));
  });

  it('walks up from a subdirectory, like git', () => {
    const root = tempDir();
    writeFileSync(join(root, 'env.yaml'), MINIMAL);
    const deep = join(root, 'a', 'b', 'c');
    mkdirSync(deep, { recursive: true });
    expect(findSpecFile(deep)).toBe(join(root, 'env.yaml'));
  });

  it('stops at the nearest file, and accepts env.yml', () => {
    const root = tempDir();
    writeFileSync(join(root, 'env.yaml'), MINIMAL);
    const inner = join(root, 'inner');
    mkdirSync(join(inner, 'src'), { recursive: true });
    writeFileSync(join(inner, 'env.yml'), MINIMAL);
    expect(findSpecFile(join(inner, 'src'))).toBe(join(inner, 'env.yml'));
  });

  it('prefers env.yaml over env.yml in the same directory and skips a directory named env.yaml', () => {
    const root = tempDir();
    writeFileSync(join(root, 'env.yaml'), MINIMAL);
    writeFileSync(join(root, 'env.yml'), MINIMAL);
    expect(findSpecFile(root)).toBe(join(root, 'env.yaml'));
    const child = join(root, 'child');
    mkdirSync(join(child, 'env.yaml'), { recursive: true });
    expect(findSpecFile(child)).toBe(join(root, 'env.yaml'));
  });

  it('names where it looked when there is none', () => {
    const root = tempDir();
    const deep = join(root, 'x', 'y');
    mkdirSync(deep, { recursive: true });
    let error: unknown;
    try {
      findSpecFile(deep);
    } catch (caught) {
      error = caught;
    }
    // A stray env.yaml in / or /tmp would make this pass vacuously; the error is what is under test.
    expect(error).toBeInstanceOf(EnvyError);
    const envyError = error as EnvyError;
    expect(envyError.code).toBe('CONFIG_NOT_FOUND');
    expect(envyError.message).toContain(`no env.yaml (or env.yml) found in ${deep} and its`);
    expect(envyError.message).toMatch(/parent directories up to \/$/);
    expect(envyError.details).toContain(`looked in ${deep}`);
    expect(envyError.details).toContain(`looked in ${root}`);
    expect(envyError.details[envyError.details.length - 1]).toBe('looked in /');
    expect(envyError.hint).toContain('envy init');
  });
});

describe('file labels in messages', () => {
  it('is relative to cwd below it and as given elsewhere', () => {
    expect(displayName('env.yaml', '/p')).toBe('env.yaml');
    expect(displayName('/p/sub/env.yaml', '/p')).toBe('sub/env.yaml');
    expect(displayName('/elsewhere/env.yaml', '/p')).toBe('/elsewhere/env.yaml');
    expect(displayName('../env.yaml', '/p/sub')).toBe('../env.yaml');
  });

  it('labels errors with the path below cwd', async () => {
    const root = tempDir();
    mkdirSync(join(root, 'sub'));
    writeFileSync(join(root, 'sub', 'env.yaml'), 'name: demo\n');
    await expect(loadSpec(join(root, 'sub', 'env.yaml'), { cwd: root, env: {} })).rejects.toThrow(/^sub\/env\.yaml:1:1: base: required field is missing$/);
  });
});
