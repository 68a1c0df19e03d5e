// One-way sync (host → env) with real chokidar on real files.
import { chmodSync, existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, symlinkSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { SYNC_TEMP_PREFIX } from '../../../src/sync/ignore.js';
import { STREAM_THRESHOLD_BYTES } from '../../../src/sync/transport.js';
import { createPair, makeRoot, readOrNull, snapshot, waitFor, write, type Pair } from './helpers.js';

// Real watchers on a shared, loaded machine: allow time, but every wait is on a condition.
vi.setConfig({ testTimeout: 60_000, hookTimeout: 60_000 });

let pair: Pair | null = null;
afterEach(async () => {
  await pair?.cleanup();
  pair = null;
});

function start(options: Parameters<typeof createPair>[1] = {}): Pair {
  pair = createPair(makeRoot(), options);
  return pair;
}

const same = (p: Pair): boolean => JSON.stringify(snapshot(p.host)) === JSON.stringify(snapshot(p.env));

describe('initial sync', () => {
  it('copies files, directories, modes, mtimes, symlinks as links, and large files', async () => {
    const p = start();
    write(join(p.host, 'a.txt'), 'alpha');
    write(join(p.host, 'dir/sub/b.txt'), 'beta');
    write(join(p.host, 'run.sh'), '#!/bin/sh\n');
    chmodSync(join(p.host, 'run.sh'), 0o750);
    mkdirSync(join(p.host, 'empty'));
    chmodSync(join(p.host, 'dir'), 0o711);
    symlinkSync('a.txt', join(p.host, 'link'));
    symlinkSync('/etc/passwd', join(p.host, 'escape'));
    const big = Buffer.alloc(STREAM_THRESHOLD_BYTES * 3 + 17);
    for (let i = 0; i < big.length; i++) big[i] = (i * 31) & 0xff;
    writeFileSync(join(p.host, 'big.bin'), big);
    utimesSync(join(p.host, 'a.txt'), new Date('2020-01-02T03:04:05Z'), new Date('2020-01-02T03:04:05Z'));

    await p.engine.start();

    expect(snapshot(p.env, (rel) => rel === 'big.bin')).toEqual(snapshot(p.host, (rel) => rel === 'big.bin'));
    expect(readFileSync(join(p.env, 'big.bin')).equals(big)).toBe(true);
    expect(statSync(join(p.env, 'run.sh')).mode & 0o7777).toBe(0o750);
    expect(statSync(join(p.env, 'dir')).mode & 0o7777).toBe(0o711);
    expect(lstatSync(join(p.env, 'escape')).isSymbolicLink()).toBe(true);
    expect(statSync(join(p.env, 'a.txt')).mtimeMs).toBe(statSync(join(p.host, 'a.txt')).mtimeMs);
    expect(p.engine.status()).toMatchObject({ state: 'in-sync', pending: 0, lastError: null, conflicts: [] });
  });

  it('makes the env a mirror: extra env files go, unchanged files are not rewritten', async () => {
    const p = start();
    write(join(p.host, 'keep.txt'), 'same');
    write(join(p.env, 'keep.txt'), 'same');
    const when = new Date('2021-05-05T00:00:00Z');
    utimesSync(join(p.host, 'keep.txt'), when, when);
    utimesSync(join(p.env, 'keep.txt'), when, when);
    const inode = statSync(join(p.env, 'keep.txt')).ino;
    write(join(p.env, 'stale/old.txt'), 'old');
    write(join(p.env, 'differs.txt'), 'env version');
    write(join(p.host, 'differs.txt'), 'host version');

    await p.engine.start();

    expect(snapshot(p.env)).toEqual(snapshot(p.host));
    expect(statSync(join(p.env, 'keep.txt')).ino).toBe(inode);
  });
});

describe('watching', () => {
  it('applies bulk creates, modifications and deletions seen by the watcher', async () => {
    const p = start();
    await p.engine.start();
    for (let i = 0; i < 300; i++) write(join(p.host, `bulk/d${i % 10}/f${i}.txt`), `v1 ${i}`);
    await waitFor(() => same(p), '300 created files to appear in the env');
    for (let i = 0; i < 300; i += 2) writeFileSync(join(p.host, `bulk/d${i % 10}/f${i}.txt`), `v2 ${i}`);
    await waitFor(() => readOrNull(join(p.env, 'bulk/d8/f298.txt')) === 'v2 298' && same(p), 'modifications');
    for (let i = 0; i < 300; i += 3) unlinkSync(join(p.host, `bulk/d${i % 10}/f${i}.txt`));
    rmSync(join(p.host, 'bulk/d1'), { recursive: true });
    await waitFor(() => same(p), 'deletions');
    expect(existsSync(join(p.env, 'bulk/d1'))).toBe(false);
    expect(p.errors).toEqual([]);
  });

  it('converges after a rename storm of files and directories', async () => {
    const p = start();
    for (let i = 0; i < 50; i++) write(join(p.host, `storm/f${i}`), `content ${i}`);
    await p.engine.start();
    for (let round = 0; round < 5; round++) {
      for (let i = 0; i < 50; i++) renameSync(join(p.host, `storm/f${i}`), join(p.host, `storm/g${i}`));
      for (let i = 0; i < 50; i++) renameSync(join(p.host, `storm/g${i}`), join(p.host, `storm/f${i}`));
    }
    // Swap pairs through a temp name, so names persist while their contents move.
    for (let i = 0; i < 50; i += 2) {
      renameSync(join(p.host, `storm/f${i}`), join(p.host, 'storm/tmp'));
      renameSync(join(p.host, `storm/f${i + 1}`), join(p.host, `storm/f${i}`));
      renameSync(join(p.host, 'storm/tmp'), join(p.host, `storm/f${i + 1}`));
    }
    renameSync(join(p.host, 'storm'), join(p.host, 'moved'));
    await waitFor(() => same(p), 'the env to match the host after the storm');
    expect(readdirSync(join(p.env, 'moved')).sort()).toEqual(readdirSync(join(p.host, 'moved')).sort());
    expect(existsSync(join(p.env, 'storm'))).toBe(false);
  });

  it('handles editor-style atomic saves (write a temp file, rename it over)', async () => {
    const p = start();
    write(join(p.host, 'src/main.ts'), 'v0');
    await p.engine.start();
    for (let i = 1; i <= 30; i++) {
      writeFileSync(join(p.host, 'src/.main.ts.swp'), `v${i}`);
      renameSync(join(p.host, 'src/.main.ts.swp'), join(p.host, 'src/main.ts'));
    }
    await waitFor(() => readOrNull(join(p.env, 'src/main.ts')) === 'v30', 'the last save');
    await waitFor(() => same(p), 'no leftover temp files');
    expect(readdirSync(join(p.env, 'src'))).toEqual(['main.ts']);
  });

  it('replaces a file with a directory and back', async () => {
    const p = start();
    write(join(p.host, 'x'), 'file');
    await p.engine.start();
    unlinkSync(join(p.host, 'x'));
    write(join(p.host, 'x/inside.txt'), 'now a dir');
    await waitFor(() => readOrNull(join(p.env, 'x/inside.txt')) === 'now a dir', 'file → dir');
    // The new directory is watched too.
    write(join(p.host, 'x/later.txt'), 'later');
    await waitFor(() => readOrNull(join(p.env, 'x/later.txt')) === 'later', 'a file inside the new directory');
    rmSync(join(p.host, 'x'), { recursive: true });
    write(join(p.host, 'x'), 'file again');
    await waitFor(() => readOrNull(join(p.env, 'x')) === 'file again', 'dir → file');
    expect(same(p)).toBe(true);
  });

  it('applies mode changes', async () => {
    const p = start();
    write(join(p.host, 'tool'), 'x');
    await p.engine.start();
    chmodSync(join(p.host, 'tool'), 0o755);
    await waitFor(() => (statSync(join(p.env, 'tool')).mode & 0o777) === 0o755, 'the new mode');
  });

  it('syncs through the polling fallback when forced', async () => {
    const p = start({ forcePolling: true, pollIntervalMs: 50 });
    write(join(p.host, 'a.txt'), 'one');
    await p.engine.start();
    expect(p.engine.status().watchMode).toBe('polling');
    write(join(p.host, 'b/c.txt'), 'two');
    writeFileSync(join(p.host, 'a.txt'), 'one, edited');
    await waitFor(() => same(p), 'polled changes to land');
    unlinkSync(join(p.host, 'a.txt'));
    await waitFor(() => !existsSync(join(p.env, 'a.txt')), 'a polled deletion');
  });
});

describe('flush', () => {
  it('resolves only when everything written before the call is in the env', async () => {
    // A window far longer than the test: only flush() can have applied the changes.
    const p = start({ batchWindowMs: 60_000 });
    await p.engine.start();
    for (let i = 0; i < 100; i++) write(join(p.host, `f/${i}.txt`), `${i}`);
    unlinkSync(join(p.host, 'f/7.txt'));
    await p.engine.flush();
    expect(snapshot(p.env)).toEqual(snapshot(p.host));
    expect(p.engine.status()).toMatchObject({ state: 'in-sync', pending: 0 });
  });

  it('reports syncing with a pending count before a flush, in sync after', async () => {
    const p = start({ batchWindowMs: 60_000 });
    await p.engine.start();
    write(join(p.host, 'one.txt'), '1');
    write(join(p.host, 'two.txt'), '2');
    await waitFor(() => p.engine.status().pending === 2, 'the watcher to report both files');
    expect(p.engine.status().state).toBe('syncing');
    await p.engine.flush();
    expect(p.engine.status()).toMatchObject({ state: 'in-sync', pending: 0 });
  });
});

describe('ignores', () => {
  it('follows .gitignore (nested, negations), workspace.ignore and .envyignore, and leaves ignored env files alone', async () => {
    const p = start({ ignore: ['*.secret'] });
    write(join(p.host, '.gitignore'), 'node_modules/\n*.log\n.env\n');
    write(join(p.host, '.envyignore'), '!.env\n');
    write(join(p.host, 'pkg/.gitignore'), '/generated/\n!important.log\n');
    write(join(p.host, 'node_modules/dep/index.js'), 'host dep');
    write(join(p.host, 'debug.log'), 'log');
    write(join(p.host, '.env'), 'TOKEN=1');
    write(join(p.host, 'key.secret'), 'secret');
    write(join(p.host, 'pkg/generated/x.js'), 'gen');
    write(join(p.host, 'pkg/important.log'), 'keep me');
    write(join(p.host, 'src/app.js'), 'app');
    write(join(p.env, 'node_modules/env-only/index.js'), 'installed inside the env');

    await p.engine.start();

    expect(Object.keys(snapshot(p.env)).sort()).toEqual(
      ['.env', '.envyignore', '.gitignore', 'node_modules', 'node_modules/env-only', 'node_modules/env-only/index.js', 'pkg', 'pkg/.gitignore', 'pkg/important.log', 'src', 'src/app.js'].sort(),
    );

    // Live: ignored paths stay out, and a rule change brings newly un-ignored files in.
    write(join(p.host, 'later.log'), 'ignored');
    write(join(p.host, 'src/later.js'), 'synced');
    await waitFor(() => existsSync(join(p.env, 'src/later.js')), 'a synced file');
    writeFileSync(join(p.host, '.gitignore'), 'node_modules/\n.env\n');
    await waitFor(() => existsSync(join(p.env, 'debug.log')) && existsSync(join(p.env, 'later.log')), 'un-ignored logs');
    expect(existsSync(join(p.env, 'node_modules/dep'))).toBe(false);
  });
});

describe('symlinks', () => {
  it('never writes through a symlink the env side planted', async () => {
    const p = start();
    const outside = join(p.root, 'outside');
    mkdirSync(outside);
    write(join(p.host, 'sub/file.txt'), 'v1');
    await p.engine.start();
    // The env replaces a synced directory with a link pointing out of its tree.
    rmSync(join(p.env, 'sub'), { recursive: true });
    symlinkSync(outside, join(p.env, 'sub'));
    writeFileSync(join(p.host, 'sub/file.txt'), 'v2');
    write(join(p.host, 'sub/new.txt'), 'new');
    await waitFor(() => p.errors.length > 0 || lstatSync(join(p.env, 'sub')).isDirectory(), 'the engine to act');
    expect(readdirSync(outside)).toEqual([]);
    // A full rescan repairs the tree: the link is replaced by the host's directory, still nothing outside.
    await p.engine.flush();
    expect(readdirSync(outside)).toEqual([]);
    expect(lstatSync(join(p.env, 'sub')).isDirectory()).toBe(true);
    expect(snapshot(p.env)).toEqual(snapshot(p.host));
  });

  it('syncs host links as links without following them', async () => {
    const p = start();
    const outside = join(p.root, 'outside');
    write(join(outside, 'private.txt'), 'not for the env');
    symlinkSync(outside, join(p.host, 'out-link'));
    await p.engine.start();
    symlinkSync('../elsewhere', join(p.host, 'rel-link'));
    await waitFor(() => existsSync(join(p.env, 'rel-link')) || readdirSync(join(p.env)).includes('rel-link'), 'the new link');
    expect(lstatSync(join(p.env, 'out-link')).isSymbolicLink()).toBe(true);
    expect(readdirSync(p.env).filter((n) => n.startsWith(SYNC_TEMP_PREFIX))).toEqual([]);
    expect(existsSync(join(p.env, 'private.txt'))).toBe(false);
  });
});
