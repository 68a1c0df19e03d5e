// The watcher's fallback to polling when the kernel's inotify budget runs out, and a 10,000-file tree.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { isWatchLimitError, TreeWatcher, watchLimitWarning } from '../../../src/sync/watcher.js';
import type { ChangeEvent } from '../../../src/sync/transport.js';
import { createPair, makeRoot, readOrNull, snapshot, waitFor, write, type Pair } from './helpers.js';

vi.setConfig({ testTimeout: 120_000, hookTimeout: 120_000 });

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) await cleanup();
});

function limitError(code: string): NodeJS.ErrnoException {
  const error: NodeJS.ErrnoException = new Error(`${code}: System limit for number of file watchers reached, watch '/x'`);
  error.code = code;
  return error;
}

describe('watch limit', () => {
  it('recognises the errors the kernel gives when inotify runs out', () => {
    expect(isWatchLimitError(limitError('ENOSPC'))).toBe(true);
    expect(isWatchLimitError(limitError('EMFILE'))).toBe(true);
    expect(isWatchLimitError(limitError('EACCES'))).toBe(false);
    expect(isWatchLimitError(new Error('plain'))).toBe(false);
  });

  it('names the limit and the fix in its warning', () => {
    const message = watchLimitWarning(limitError('ENOSPC'));
    expect(message).toMatch(/fs\.inotify\.max_user_watches = (\d+|unknown)/);
    expect(message).toContain('sudo sysctl fs.inotify.max_user_watches=524288');
    expect(message).toContain('/etc/sysctl.d/');
  });

  it('switches to polling on ENOSPC, warns once, asks for a rescan and keeps reporting changes', async () => {
    const root = makeRoot();
    const events: ChangeEvent[] = [];
    const warnings: string[] = [];
    const errors: Error[] = [];
    const watcher = new TreeWatcher(root, {
      ignored: () => false,
      onEvents: (batch) => events.push(...batch),
      onError: (error) => errors.push(error),
      onWarning: (message) => warnings.push(message),
      forcePolling: false,
      pollIntervalMs: 50,
    });
    await watcher.start();
    cleanups.push(() => watcher.close());
    expect(watcher.mode).toBe('inotify');

    // What chokidar relays when inotify_add_watch fails for want of watches.
    watcher.underlying!.emit('error', limitError('ENOSPC'));
    await waitFor(() => watcher.mode === 'polling' && events.some((e) => e.path === '' && e.kind === 'addDir'), 'the fallback');
    watcher.underlying!.emit('error', limitError('ENOSPC'));
    expect(warnings).toHaveLength(1);
    expect(errors).toEqual([]);

    writeFileSync(join(root, 'after-fallback.txt'), 'seen by polling');
    await waitFor(() => events.some((e) => e.path === 'after-fallback.txt' && e.kind === 'add'), 'a polled add');
  });

  it('becomes ready on polling when the kernel refuses watches before the first watcher is ready', async () => {
    // On a real tree over budget, ENOSPC comes during chokidar's initial scan: the inotify watcher it
    // replaces never reports ready, and start() must not wait for it.
    const root = makeRoot();
    write(join(root, 'a/b.txt'), 'b');
    const warnings: string[] = [];
    const watcher = new TreeWatcher(root, {
      ignored: () => false,
      onEvents: () => undefined,
      onError: (error) => {
        throw error;
      },
      onWarning: (message) => warnings.push(message),
      forcePolling: false,
      pollIntervalMs: 50,
    });
    cleanups.push(() => watcher.close());
    const starting = watcher.start();
    // start() created the chokidar instance synchronously; its initial scan has not run yet.
    watcher.underlying!.emit('error', limitError('ENOSPC'));
    await starting;
    expect(watcher.mode).toBe('polling');
    expect(warnings).toHaveLength(1);
  });

  it('passes other watcher errors on', async () => {
    const root = makeRoot();
    const errors: Error[] = [];
    const watcher = new TreeWatcher(root, {
      ignored: () => false,
      onEvents: () => undefined,
      onError: (error) => errors.push(error),
      onWarning: () => undefined,
      forcePolling: false,
      pollIntervalMs: 50,
    });
    await watcher.start();
    cleanups.push(() => watcher.close());
    const failure = limitError('EIO');
    watcher.underlying!.emit('error', failure);
    await waitFor(() => errors.length === 1, 'the error');
    expect(watcher.mode).toBe('inotify');
  });
});

describe('a 10,000-file tree', () => {
  it('syncs it initially, then keeps watching it', async () => {
    const pair: Pair = createPair(makeRoot());
    cleanups.push(pair.cleanup);
    for (let d = 0; d < 100; d++) {
      mkdirSync(join(pair.host, `pkg${d}/src`), { recursive: true });
      for (let f = 0; f < 100; f++) writeFileSync(join(pair.host, `pkg${d}/src/file${f}.ts`), `export const v = ${d * 100 + f};\n`);
    }
    const started = performance.now();
    await pair.engine.start();
    const elapsed = performance.now() - started;
    const envTree = snapshot(pair.env);
    expect(Object.keys(envTree).filter((k) => k.endsWith('.ts'))).toHaveLength(10_000);
    expect(envTree).toEqual(snapshot(pair.host));
    console.log(`initial sync of 10,000 files: ${elapsed.toFixed(0)} ms`);

    write(join(pair.host, 'pkg99/src/file99.ts'), 'changed');
    write(join(pair.host, 'pkg0/new.ts'), 'new');
    await waitFor(
      () => readOrNull(join(pair.env, 'pkg99/src/file99.ts')) === 'changed' && readOrNull(join(pair.env, 'pkg0/new.ts')) === 'new',
      'changes in the big tree',
      60_000,
    );
    expect(pair.errors).toEqual([]);
  });
});
