// Shared fixtures for the sync tests: temp trees, an engine over two local directories, and
// condition waits (generous timeouts, polled; a fixed sleep is never the assertion).
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, lstatSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { SyncEngine, type SyncEngineOptions } from '../../../src/sync/engine.js';
import { LocalTransport } from '../../../src/sync/local-transport.js';

export interface Pair {
  root: string;
  host: string;
  env: string;
  state: string;
  engine: SyncEngine;
  warnings: string[];
  errors: Error[];
  cleanup: () => Promise<void>;
}

export function makeRoot(): string {
  return mkdtempSync(join(tmpdir(), 'envy-sync-test-'));
}

export function createPair(root: string, options: Partial<SyncEngineOptions> = {}): Pair {
  const host = join(root, 'host');
  const env = join(root, 'env');
  const state = join(root, 'state');
  mkdirSync(host, { recursive: true });
  const engine = new SyncEngine({
    source: new LocalTransport(host),
    target: new LocalTransport(env),
    stateDir: state,
    ...options,
  });
  const warnings: string[] = [];
  const errors: Error[] = [];
  engine.on('warning', (message) => warnings.push(message));
  engine.on('error', (error) => errors.push(error));
  return {
    root,
    host,
    env,
    state,
    engine,
    warnings,
    errors,
    cleanup: async () => {
      await engine.stop();
      rmSync(root, { recursive: true, force: true });
    },
  };
}

export function write(path: string, content: string | Buffer): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, content);
}

function vanished(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/**
 * A tree as { 'rel/path': content | '<dir>' | '-> target' }, for whole-tree comparisons. The engine may
 * be changing the tree while this walks it (waitFor polls it mid-sync): an entry that vanishes between
 * readdir and lstat counts as absent, and the next poll looks again.
 */
export function snapshot(root: string, skip: (rel: string) => boolean = () => false): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (dir: string, prefix: string): void => {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      return;
    }
    for (const name of names.sort()) {
      const rel = prefix === '' ? name : `${prefix}/${name}`;
      if (skip(rel)) continue;
      const abs = join(dir, name);
      try {
        const stats = lstatSync(abs);
        if (stats.isSymbolicLink()) out[rel] = `-> ${readlinkSync(abs)}`;
        else if (stats.isDirectory()) {
          out[rel] = '<dir>';
          walk(abs, rel);
        } else out[rel] = readFileSync(abs, 'utf8');
      } catch (error) {
        if (!vanished(error)) throw error;
      }
    }
  };
  walk(root, '');
  return out;
}

/** Poll `condition` on a live tree: a path that vanishes while it looks (the engine mid-change) is "not yet". */
export async function waitFor(condition: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const holds = (): boolean => {
    try {
      return condition();
    } catch (error) {
      if (vanished(error)) return false;
      throw error;
    }
  };
  while (!holds()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

export function readOrNull(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return null;
  }
}
