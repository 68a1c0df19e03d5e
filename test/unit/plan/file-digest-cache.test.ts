import { mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { hashFileCached, hashFileSync } from '../../../src/plan/content.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'envy-digest-cache-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('hashFileCached', () => {
  test('remembers a digest by the file stamp, and a rewrite with the same size and mtime is hashed again', () => {
    const file = join(dir, 'base.tar');
    const cache = join(dir, 'cache/file-digests.json');
    writeFileSync(file, 'first');
    expect(hashFileCached(file, cache)).toBe(hashFileSync(file));

    // A cache hit answers from the stamp alone: a planted digest for the same stamp is what comes back.
    const entries = JSON.parse(readFileSync(cache, 'utf8')) as Record<string, { stamp: string; digest: string }>;
    writeFileSync(cache, JSON.stringify({ [file]: { ...entries[file], digest: 'planted' } }));
    expect(hashFileCached(file, cache)).toBe('planted');

    // Same size, mtime set back: ctime still moved, so the new bytes are hashed.
    writeFileSync(file, 'other');
    const old = new Date(Date.now() - 60_000);
    utimesSync(file, old, old);
    expect(hashFileCached(file, cache)).toBe(hashFileSync(file));
    expect(hashFileSync(file)).not.toBe('planted');
  });

  test('an unreadable cache is rebuilt, an unwritable one only costs the hash', () => {
    const file = join(dir, 'base.tar');
    writeFileSync(file, 'bytes');
    const cache = join(dir, 'cache.json');
    writeFileSync(cache, '{not json');
    expect(hashFileCached(file, cache)).toBe(hashFileSync(file));
    expect(Object.keys(JSON.parse(readFileSync(cache, 'utf8')) as object)).toEqual([file]);
    expect(hashFileCached(file, join(file, 'under-a-file/cache.json'))).toBe(hashFileSync(file));
  });
});
