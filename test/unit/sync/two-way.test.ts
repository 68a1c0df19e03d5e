// Two-way sync: agreed state, conflicts kept on both sides, deletions only of what the other side saw,
// no echo. Real chokidar on both trees.
import { existsSync, readdirSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AGREED_STATE_FILE } from '../../../src/sync/agreed-state.js';
import { SyncEngine } from '../../../src/sync/engine.js';
import { LocalTransport } from '../../../src/sync/local-transport.js';
import type { ChangeEvent, DirEntry, WatchHandle, WatchOptions } from '../../../src/sync/transport.js';
import { createPair, makeRoot, readOrNull, snapshot, waitFor, write, type Pair } from './helpers.js';

vi.setConfig({ testTimeout: 60_000, hookTimeout: 60_000 });

const FIXED_NOW = new Date('2025-03-04T05:06:07.890Z');
let pair: Pair | null = null;
afterEach(async () => {
  await pair?.cleanup();
  pair = null;
});

function start(options: Parameters<typeof createPair>[1] = {}): Pair {
  pair = createPair(makeRoot(), { direction: 'two-way', now: () => FIXED_NOW, ...options });
  return pair;
}

const same = (p: Pair): boolean => JSON.stringify(snapshot(p.host)) === JSON.stringify(snapshot(p.env));

describe('two-way sync', () => {
  it('carries changes both ways, live', async () => {
    const p = start();
    write(join(p.host, 'from-host.txt'), 'h');
    await p.engine.start();
    expect(readOrNull(join(p.env, 'from-host.txt'))).toBe('h');
    write(join(p.env, 'built/out.js'), 'made inside the env');
    await waitFor(() => readOrNull(join(p.host, 'built/out.js')) === 'made inside the env', 'env → host');
    writeFileSync(join(p.host, 'from-host.txt'), 'h2');
    await waitFor(() => readOrNull(join(p.env, 'from-host.txt')) === 'h2', 'host → env');
    unlinkSync(join(p.env, 'from-host.txt'));
    await waitFor(() => !existsSync(join(p.host, 'from-host.txt')), 'an env deletion of a seen file');
    await p.engine.flush();
    expect(snapshot(p.env)).toEqual(snapshot(p.host));
    expect(p.engine.status().conflicts).toEqual([]);
    expect(p.errors).toEqual([]);
  });

  it('does not echo its own writes back', async () => {
    const p = start();
    await p.engine.start();
    write(join(p.host, 'a.txt'), 'one');
    await waitFor(() => readOrNull(join(p.env, 'a.txt')) === 'one', 'the copy');
    const hostInode = statSync(join(p.host, 'a.txt')).ino;
    await p.engine.flush();
    const appliedAfterCopy = p.engine.status().applied;
    // Give the env-side watcher's event for our own write every chance to bounce.
    await p.engine.flush();
    await p.engine.flush();
    expect(statSync(join(p.host, 'a.txt')).ino).toBe(hostInode);
    expect(p.engine.status().applied).toBe(appliedAfterCopy);
  });

  it('keeps both versions when both sides change a file, and reports the conflict', async () => {
    // The window holds events back so both edits are seen together, as if simultaneous.
    const p = start({ batchWindowMs: 60_000 });
    write(join(p.host, 'shared.txt'), 'base');
    await p.engine.start();
    writeFileSync(join(p.host, 'shared.txt'), 'host edit');
    writeFileSync(join(p.env, 'shared.txt'), 'env edit');
    const conflicts: string[] = [];
    p.engine.on('conflict', (c) => conflicts.push(c.conflictPath));
    await p.engine.flush();

    const conflictName = 'shared.txt.envy-conflict-20250304T050607Z';
    expect(conflicts).toEqual([conflictName]);
    expect(p.engine.status().conflicts).toEqual([{ path: 'shared.txt', conflictPath: conflictName, at: FIXED_NOW.toISOString() }]);
    for (const side of [p.host, p.env]) {
      expect(readOrNull(join(side, 'shared.txt'))).toBe('host edit');
      expect(readOrNull(join(side, conflictName))).toBe('env edit');
    }
    expect(same(p)).toBe(true);
  });

  it('never lets a deletion take a write the deleting side had not seen', async () => {
    const p = start({ batchWindowMs: 60_000 });
    write(join(p.host, 'd/seen.txt'), 'old');
    write(join(p.host, 'edited.txt'), 'v1');
    await p.engine.start();
    // The host removes a directory while the env adds a file to it, and the env edits a file the host deletes.
    rmSync(join(p.host, 'd'), { recursive: true });
    write(join(p.env, 'd/new.txt'), 'written in the env');
    unlinkSync(join(p.host, 'edited.txt'));
    writeFileSync(join(p.env, 'edited.txt'), 'v2 from env');
    await p.engine.flush();

    for (const side of [p.host, p.env]) {
      expect(readOrNull(join(side, 'd/new.txt'))).toBe('written in the env');
      expect(existsSync(join(side, 'd/seen.txt'))).toBe(false);
      expect(readOrNull(join(side, 'edited.txt'))).toBe('v2 from env');
    }
  });

  it('propagates a directory deletion when everything in it was seen', async () => {
    const p = start();
    write(join(p.host, 'gone/a/b.txt'), 'b');
    write(join(p.host, 'gone/c.txt'), 'c');
    await p.engine.start();
    rmSync(join(p.env, 'gone'), { recursive: true });
    await waitFor(() => !existsSync(join(p.host, 'gone')), 'the host copy to go');
    await p.engine.flush();
    expect(same(p)).toBe(true);
  });

  it('never lets a directory reconcile interleave with one of a path inside it', async () => {
    // Under load the kernel's raw notification for a removed directory reaches the engine as a plain
    // change, before chokidar's unlinkDir, in the same batch as the changes below it. Replay exactly
    // that batch, and make the directory's listing go stale the way a concurrent delete would leave
    // it: read before the file's removal lands, returned after it. A reconcile of `gone` running beside
    // the one of `gone/c.txt` then sees a host file with no agreed entry, copies it back, and the
    // deleted directory returns on both sides.
    let injectTargetEvents: ((events: ChangeEvent[]) => void) | null = null;
    let armed = false;
    let fileRemoved: () => void = () => undefined;
    const fileRemovedOnHost = new Promise<void>((resolve) => (fileRemoved = resolve));
    class Host extends LocalTransport {
      override async readDir(path: string): Promise<DirEntry[]> {
        const entries = await super.readDir(path);
        if (armed && path === 'gone') await fileRemovedOnHost;
        return entries;
      }
      override async remove(path: string): Promise<void> {
        await super.remove(path);
        // After the engine's own bookkeeping for this removal has run.
        if (armed && path === 'gone/c.txt') setImmediate(fileRemoved);
      }
    }
    class Env extends LocalTransport {
      override async watch(options: WatchOptions): Promise<WatchHandle> {
        injectTargetEvents = options.onEvents;
        return super.watch(options);
      }
    }
    const root = makeRoot();
    const p = createPair(root, { direction: 'two-way', batchWindowMs: 60_000, source: new Host(join(root, 'host')), target: new Env(join(root, 'env')) });
    pair = p;
    write(join(p.host, 'gone/a/b.txt'), 'b');
    write(join(p.host, 'gone/c.txt'), 'c');
    await p.engine.start();
    rmSync(join(p.env, 'gone'), { recursive: true });
    armed = true;
    // Synchronously, before the real watcher's events are delivered: flush() takes this batch as is.
    injectTargetEvents!([
      { kind: 'change', path: 'gone/c.txt' },
      { kind: 'change', path: 'gone/a/b.txt' },
      { kind: 'change', path: 'gone' },
    ]);
    await p.engine.flush();
    expect(existsSync(join(p.env, 'gone'))).toBe(false);
    expect(existsSync(join(p.host, 'gone'))).toBe(false);
    expect(p.errors).toEqual([]);
  });

  it('remembers the agreed state across restarts', async () => {
    const p = start();
    write(join(p.host, 'x.txt'), 'x');
    write(join(p.env, 'y.txt'), 'y');
    await p.engine.start();
    await p.engine.stop();
    expect(existsSync(join(p.state, AGREED_STATE_FILE))).toBe(true);

    // Offline: the env edits x, the host deletes y. Neither is a conflict against the agreed state.
    writeFileSync(join(p.env, 'x.txt'), 'x from env');
    unlinkSync(join(p.host, 'y.txt'));
    const again = new SyncEngine({ source: new LocalTransport(p.host), target: new LocalTransport(p.env), direction: 'two-way', stateDir: p.state });
    try {
      await again.start();
      expect(again.status().conflicts).toEqual([]);
      expect(readOrNull(join(p.host, 'x.txt'))).toBe('x from env');
      expect(existsSync(join(p.env, 'y.txt'))).toBe(false);
    } finally {
      await again.stop();
    }
  });

  it('on a first sync with no agreed state, differing files are conflicts and nothing is lost', async () => {
    const p = start();
    write(join(p.host, 'same.txt'), 'equal');
    write(join(p.env, 'same.txt'), 'equal');
    write(join(p.host, 'differ.txt'), 'host');
    write(join(p.env, 'differ.txt'), 'env');
    await p.engine.start();
    expect(p.engine.status().conflicts.map((c) => c.path)).toEqual(['differ.txt']);
    expect(readdirSync(p.host).sort()).toEqual(['differ.txt', 'differ.txt.envy-conflict-20250304T050607Z', 'same.txt']);
    expect(same(p)).toBe(true);
  });
});
