/**
 * Crash safety and concurrency of the store with real processes: a pull
 * SIGKILLed in the middle of unpacking leaves a store that is consistent
 * (nothing half-written is trusted, temp dirs are swept) and the next pull
 * completes; two processes pulling the same image at once both succeed.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { mkdtempSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pullImage } from '../../../src/image/registry.js';
import { LayerStore } from '../../../src/image/store.js';
import { bundleEntry } from '../../unit/image/bundle.js';
import { asUserArgv, envyRoot, isRoot, runAsUser, testUser, userTempDir } from '../harness.js';
import { execFileSync } from 'node:child_process';
import { skopeoPush, startRegistry, writeImage, writeIndex, type FixtureImage, type Registry } from './fixtures.js';

let work: string;
let registry: Registry;
let image: FixtureImage;
let scratch: { path: string; remove: () => void };
let driver: string;
let workerDriver: string;
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
  // The --worker mode finds the layer worker and the namespace helper next to itself.
  workerDriver = await bundleEntry(resolve(import.meta.dirname, 'pull-driver.ts'), join(envyRoot(), 'dist', `.pull-driver-test-${process.pid}.mjs`));
  execFileSync('chmod', ['a+r', workerDriver]);
  if (isRoot()) execFileSync('chown', ['-R', `${testUser()}:`, scratch.path]);
});

afterAll(async () => {
  if (workerDriver) rmSync(workerDriver, { force: true });
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
    // What was downloaded stays, for the next pull to resume from; its digest is checked again then.
    const partial = store.partialBlobPath(image.layerDigests[1]!);
    expect(statSync(partial).size).toBeGreaterThan(0);

    // ... and the next pull (as the user, in a new process) completes despite the dead owner's lock files.
    const again = await runAsUser(process.execPath, [driver, `${registry.host}/crash:v1`, root]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout.trim()).toBe(image.manifestDigest);
    const after = LayerStore.open(root);
    expect(after.verify()).toEqual([]);
    expect(readdirSync(join(after.layerRoot(image.diffIds[1]!), 'usr/share/many')).length).toBe(FILES / 500);
    // The download is gone once the layer is in, and the blob is not kept.
    expect(existsSync(partial)).toBe(false);
    expect(after.hasBlob(image.layerDigests[1]!)).toBe(false);
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

  it('a pull through the layer worker unpacks with owners; a blob failing its digest leaves nothing behind', async () => {
    const root = join(scratch.path, 'store-worker');
    mkdirSync(root);
    if (isRoot()) execFileSync('chown', [`${testUser()}:`, root]);
    const ok = await runAsUser(process.execPath, [workerDriver, `${registry.host}/crash:v1`, root, '--worker']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout.trim()).toBe(image.manifestDigest);
    const store = LayerStore.open(root);
    expect(store.verify()).toEqual([]);
    expect(readdirSync(join(store.layerRoot(image.diffIds[1]!), 'usr/share/many')).length).toBe(FILES / 500);
    // Root of the image is the first subordinate id on the host, not the user: owners were applied.
    const [, subStart] = readFileSync('/etc/subuid', 'utf8').split('\n').find((l) => l.startsWith(`${testUser()}:`))!.split(':');
    expect(statSync(join(store.layerRoot(image.diffIds[0]!), 'etc/os-release')).uid).toBe(Number(subStart));
    expect(store.hasBlob(store.readImage(`sha256-${image.manifestDigest.slice(7)}`).layers[1]!.blobDigest!)).toBe(false);

    // The same image from a registry whose big blob was altered: refused by its digest, nothing kept.
    const own = await startRegistry(join(work, 'registry-corrupt'));
    try {
      skopeoPush(join(work, 'layout'), 'v1', `${own.host}/crash:v1`);
      const victim = image.layerDigests[1]!.slice(7);
      const data = join(own.storage, 'docker/registry/v2/blobs/sha256', victim.slice(0, 2), victim, 'data');
      const bytes = readFileSync(data);
      bytes.writeUInt8(bytes.readUInt8(bytes.length - 100) ^ 0xff, bytes.length - 100);
      writeFileSync(data, bytes);
      const fresh = join(scratch.path, 'store-worker-corrupt');
      mkdirSync(fresh);
      if (isRoot()) execFileSync('chown', [`${testUser()}:`, fresh]);
      const bad = await runAsUser(process.execPath, [workerDriver, `${own.host}/crash:v1`, fresh, '--worker']);
      expect(bad.code).not.toBe(0);
      expect(bad.stderr).toMatch(new RegExp(`blob sha256:${victim} from .* has digest sha256:[0-9a-f]{64}: its content does not match, deleted`));
      // The worker removed what it had unpacked before the digest failed: nothing for a sweep to find.
      expect(tempDirs(fresh)).toEqual([]);
      const after = LayerStore.open(fresh);
      expect(after.verify()).toEqual([]);
      expect(after.hasLayer(image.diffIds[1]!)).toBe(false);
      expect(existsSync(after.partialBlobPath(`sha256:${victim}`))).toBe(false);
      expect(after.hasBlob(`sha256:${victim}`)).toBe(false);
    } finally {
      await own.stop();
    }
  });
});
