import { createHash } from 'node:crypto';
import { chmodSync, closeSync, mkdirSync, openSync, ftruncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { run } from '../../../src/exec.js';
import { loadSpec, specDigest } from '../../../src/config/load.js';
import { firstInvalidUtf8, MAX_SPEC_BYTES } from '../../../src/config/source.js';
import { MINIMAL, tempDir } from './helpers.js';

describe('reading env.yaml', () => {
  it('fails fast on a 50 MB file, before reading it', async () => {
    const dir = tempDir();
    const file = join(dir, 'env.yaml');
    // Sparse: 50 MB long, nothing written, so the test itself stays cheap.
    const fd = openSync(file, 'w');
    ftruncateSync(fd, 50 * 1024 * 1024);
    closeSync(fd);
    const started = performance.now();
    await expect(loadSpec(file, { cwd: dir })).rejects.toMatchObject({
      code: 'CONFIG_READ',
      message: 'env.yaml: file is 50.0 MiB; env.yaml may be at most 1 MiB',
    });
    expect(performance.now() - started).toBeLessThan(200);
  });

  it('accepts a file of exactly 1 MiB of YAML', async () => {
    const dir = tempDir();
    const file = join(dir, 'env.yaml');
    const padding = MAX_SPEC_BYTES - MINIMAL.length;
    writeFileSync(file, MINIMAL + '#'.repeat(padding - 1) + '\n');
    await expect(loadSpec(file, { cwd: dir, env: {} })).resolves.toMatchObject({ spec: { name: 'demo' } });
  });

  it('rejects a missing file with CONFIG_NOT_FOUND', async () => {
    const dir = tempDir();
    await expect(loadSpec('env.yaml', { cwd: dir })).rejects.toMatchObject({ code: 'CONFIG_NOT_FOUND', message: 'env.yaml: no such file' });
  });

  it('rejects a directory', async () => {
    const dir = tempDir();
    mkdirSync(join(dir, 'env.yaml'));
    await expect(loadSpec('env.yaml', { cwd: dir })).rejects.toMatchObject({ code: 'CONFIG_READ', message: 'env.yaml: not a regular file' });
  });

  it('rejects a FIFO without waiting for a writer', async () => {
    const dir = tempDir();
    await run('mkfifo', [join(dir, 'env.yaml')]);
    await expect(loadSpec('env.yaml', { cwd: dir })).rejects.toMatchObject({ code: 'CONFIG_READ', message: 'env.yaml: not a regular file' });
  });

  it('rejects an unreadable file with a hint', async () => {
    const dir = tempDir();
    const file = join(dir, 'env.yaml');
    writeFileSync(file, MINIMAL);
    chmodSync(file, 0o000);
    // root reads anything: act as nobody for the open, which loadSpec does before its first await.
    const asRoot = process.getuid?.() === 0;
    if (asRoot) process.seteuid!(65534);
    let loading: Promise<unknown>;
    try {
      loading = loadSpec('env.yaml', { cwd: dir });
    } finally {
      if (asRoot) process.seteuid!(0);
      chmodSync(file, 0o644);
    }
    await expect(loading).rejects.toMatchObject({
      code: 'CONFIG_READ',
      message: 'env.yaml: permission denied',
      hint: 'make it readable: chmod u+r env.yaml',
    });
  });

  it('digests the bytes without parsing them', () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'env.yaml'), 'not: [valid');
    expect(specDigest('env.yaml', dir)).toBe(createHash('sha256').update('not: [valid').digest('hex'));
  });
});

describe('UTF-8 validation', () => {
  it.each([
    ['ascii', [0x61, 0x62], -1],
    ['two-byte é', [0x61, 0xc3, 0xa9], -1],
    ['four-byte emoji', [0xf0, 0x9f, 0x98, 0x80], -1],
    ['a lone continuation byte', [0x61, 0x80], 1],
    ['an overlong slash', [0xc0, 0xaf], 0],
    ['an overlong three-byte form', [0xe0, 0x80, 0xaf], 0],
    ['a UTF-16 surrogate', [0x61, 0xed, 0xa0, 0x80], 1],
    ['a truncated sequence', [0x61, 0x62, 0xe2, 0x82], 2],
    ['beyond U+10FFFF', [0xf4, 0x90, 0x80, 0x80], 0],
    ['a Latin-1 byte', [0x63, 0x61, 0x66, 0xe9, 0x0a], 3],
  ])('%s', (_what, bytes, expected) => {
    expect(firstInvalidUtf8(Uint8Array.from(bytes))).toBe(expected);
  });
});
