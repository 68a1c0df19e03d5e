// LocalTransport's kernel-side copy (copyFrom): exact metadata, and the same refusals as the streaming
// path (never read through a link, never block on a FIFO, never leave a temp file).
import { execFileSync } from 'node:child_process';
import { chmodSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, utimesSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SYNC_TEMP_PREFIX } from '../../../src/sync/ignore.js';
import { LocalTransport } from '../../../src/sync/local-transport.js';
import { makeRoot, write } from './helpers.js';

let root = '';
afterEach(() => rmSync(root, { recursive: true, force: true }));

function sides(): { from: LocalTransport; to: LocalTransport; host: string; env: string } {
  root = makeRoot();
  const host = join(root, 'host');
  const env = join(root, 'env');
  write(join(host, 'keep'), '');
  write(join(env, 'keep'), '');
  return { from: new LocalTransport(host), to: new LocalTransport(env), host, env };
}

const leftovers = (dir: string): string[] => readdirSync(dir).filter((name) => name.startsWith(SYNC_TEMP_PREFIX));

describe('LocalTransport.copyFrom', () => {
  it('copies content, the exact mode (no umask) and the given mtime, and reports what it wrote', async () => {
    const { from, to, host, env } = sides();
    write(join(host, 'tool.sh'), '#!/bin/sh\necho hi\n');
    chmodSync(join(host, 'tool.sh'), 0o775);
    const when = new Date('2022-02-02T02:02:02.123Z');
    utimesSync(join(host, 'tool.sh'), when, when);
    const sourceMtimeMs = statSync(join(host, 'tool.sh')).mtimeMs;
    const written = await to.copyFrom(from, 'tool.sh', { mode: 0o775, mtimeMs: sourceMtimeMs });
    expect(readFileSync(join(env, 'tool.sh'), 'utf8')).toBe('#!/bin/sh\necho hi\n');
    const stats = statSync(join(env, 'tool.sh'));
    expect(stats.mode & 0o7777).toBe(0o775);
    expect(stats.mtimeMs).toBe(sourceMtimeMs);
    expect(written).toEqual({ type: 'file', mode: 0o775, size: stats.size, mtimeMs: sourceMtimeMs });
    expect(leftovers(env)).toEqual([]);
  });

  it('refuses a source that became a symlink, and copies nothing from its target', async () => {
    const { from, to, host, env } = sides();
    write(join(root, 'secret'), 'outside the tree');
    symlinkSync(join(root, 'secret'), join(host, 'file'));
    await expect(to.copyFrom(from, 'file', { mode: 0o644, mtimeMs: 0 })).rejects.toMatchObject({ code: 'ELOOP' });
    expect(readdirSync(env).sort()).toEqual(['keep']);
  });

  it('does not block on a FIFO swapped in for a file; the engine is told to look again', async () => {
    const { from, to, host, env } = sides();
    execFileSync('mkfifo', [join(host, 'pipe')]);
    await expect(to.copyFrom(from, 'pipe', { mode: 0o644, mtimeMs: 0 })).rejects.toMatchObject({ code: 'ENOENT' });
    expect(readdirSync(env).sort()).toEqual(['keep']);
  });

  it('declines a source it cannot read directly', async () => {
    const { to } = sides();
    const other = { description: 'vm:x:/workspace' } as unknown as LocalTransport;
    expect(await to.copyFrom(other, 'a', { mode: 0o644, mtimeMs: 0 })).toBeNull();
  });
});
