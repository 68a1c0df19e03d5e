/**
 * Crash safety and concurrency of the store with real processes: a pull
 * SIGKILLed in the middle of unpacking leaves a store that is consistent
 * (nothing half-written is trusted, temp dirs are swept) and the next pull
 * completes; two processes pulling the same image at once both succeed.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { mkdtempSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pullImage } from '../../../src/image/registry.js';
import { LayerStore } from '../../../src/image/store.js';
import { bundleEntry } from '../../unit/image/bundle.js';
import { asUserArgv, isRoot, runAsUser, testUser, userTempDir } from '../harness.js';
import { execFileSync } from 'node:child_process';
import { skopeoPush, startRegistry, writeImage, writeIndex, type FixtureImage, type Registry } from './fixtures.js';

let work: string;
let registry: Registry;
let image: FixtureImage;
let scratch: { path: string; remove: () => void };
let driver: string;
const FILES = 6_000;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'envy-crash-'));
  const layout = join(work, 'layout');
  const many = Array.from({ length: FILES }, (_, i) => ({ name: `usr/share/many/${Math.floor(i / 500)}/f${i}`, content: `file ${i}\n`.repeat(20) }));
  image = await writeImage(layout, [
    { compression: 'gzip', entries: [{ name: 'etc/os-release', content: 'ID=crash\n' }] },
    { compression: 'gzip', entries: many },
  ]);
  writeIndex(layout, [{ image, tag: 'v1' }]);
  registry = await startRegistry(join(work, 'registry'));
  skopeoPush(layout, 'v1', `${registry.host}/crash:v1`);
  scratch = userTempDir('envy-crash-user-');
  driver = await bundleEntry(resolve(import.meta.dirname, 'pull-driver.ts'), join(scratch.path, 'pull-driver.mjs'));
  if (isRoot()) execFileSync('chown', ['-R', `${testUser()}:`, scratch.path]);
});

afterAll(async () => {
  await registry?.stop();
  scratch?.remove();
  if (work) rmSync(work, { recursive: true, force: true });
});

/** Entries of a dir the pull may rename away at any moment ([] when gone). */
function listDir(path: string): string[] {
  try {
    return readdirSync(path);
  } catch {
    return [];
  }
}

function tempDirs(root: string): string[] {
  return readdirSync(join(root, 'layers')).filter((name) => name.startsWith('.tmp-'));
}

describe('store crash safety', () => {
  it('a pull killed with SIGKILL mid-unpack leaves a consistent store, and the next pull completes', async () => {
    const root = join(scratch.path, 'store-kill');
    mkdirSync(root);
    if (isRoot()) execFileSync('chown', [`${testUser()}:`, root]);
    const argv = [...asUserArgv(), process.execPath, driver, `${registry.host}/crash:v1`, root];
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) => child.on('exit', (code, signal) => done({ code, signal })));

    // Wait until the big layer is being unpacked: a temp layer dir with part of its files.
    const deadline = Date.now() + 60_000;
    let killedMidUnpack = false;
    while (Date.now() < deadline && child.exitCode === null) {
      const busy = listDir(join(root, 'layers')).filter((name) => name.startsWith('.tmp-'));
      // extractLayer writes into <temp layer>/.tmp-extract-*/ and renames it to root/ when complete.
      const partial = busy.some((name) => {
        const layerTemp = join(root, 'layers', name);
        const extracting = listDir(layerTemp).filter((entry) => entry.startsWith('.tmp-extract-'));
        return extracting.some((entry) => listDir(join(layerTemp, entry, 'usr/share/many')).length >= 2);
      });
      if (partial) {
        child.kill('SIGKILL');
        killedMidUnpack = true;
        break;
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    const { signal } = await exited;
    expect(killedMidUnpack, `the pull finished before it could be killed: ${stderr}`).toBe(true);
    expect(signal).toBe('SIGKILL');
    expect(tempDirs(root).length).toBeGreaterThan(0);

    // The next envy opens the store: leftovers swept, nothing half-made trusted.
    const store = LayerStore.open(root);
    expect(tempDirs(root)).toEqual([]);
    expect(store.verify()).toEqual([]);
    expect(store.hasLayer(image.diffIds[1]!)).toBe(false);
    expect(store.hasImage(`sha256-${image.manifestDigest.slice(7)}`)).toBe(false);

    // ... and the next pull (as the user, in a new process) completes despite the dead owner's lock files.
    const again = await runAsUser(process.execPath, [driver, `${registry.host}/crash:v1`, root]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout.trim()).toBe(image.manifestDigest);
    const after = LayerStore.open(root);
    expect(after.verify()).toEqual([]);
    expect(readdirSync(join(after.layerRoot(image.diffIds[1]!), 'usr/share/many')).length).toBe(FILES / 500);
  });

  it('two processes pulling the same image at once both succeed and the store holds each layer once', async () => {
    const root = join(scratch.path, 'store-race');
    mkdirSync(root);
    if (isRoot()) execFileSync('chown', [`${testUser()}:`, root]);
    const [one, two] = await Promise.all([
      runAsUser(process.execPath, [driver, `${registry.host}/crash:v1`, root]),
      runAsUser(process.execPath, [driver, `${registry.host}/crash:v1`, root]),
    ]);
    expect(one.code, one.stderr).toBe(0);
    expect(two.code, two.stderr).toBe(0);
    const store = LayerStore.open(root);
    expect(store.verify()).toEqual([]);
    expect(readdirSync(join(root, 'layers/sha256')).sort()).toEqual(image.diffIds.map((d) => d.slice(7)).sort());
    // And an in-process pull now is all cache.
    const cached = await pullImage(`${registry.host}/crash:v1`, store, { onProgress: (p) => expect(p.phase).toBe('cached') });
    expect(cached.manifestDigest).toBe(image.manifestDigest);
  });
});
