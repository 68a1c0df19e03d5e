import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { sha256 } from '../../../src/image/digest.js';
import { diskUsage, LayerStore, type ImageRecord } from '../../../src/image/store.js';
import { tempName } from '../../../src/image/temp.js';
import { gzip, makeTar } from './tar-helpers.js';

let root: string;
beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'envy-store-'));
});
afterEach(() => {
  execFileSync('chmod', ['-R', 'u+rwX', root]);
  rmSync(root, { recursive: true, force: true });
});

async function layerBlob(name: string, content: string): Promise<string> {
  const path = join(root, `${name}.tar.gz`);
  writeFileSync(path, gzip(await makeTar([{ name, content }])));
  return path;
}

function image(key: string, diffIds: string[]): ImageRecord {
  return { key, source: 'test', layers: diffIds.map((diffId) => ({ diffId })), config: { env: [] }, createdAt: new Date().toISOString() };
}

/** Age every file so gc's grace period does not protect it. */
function age(path: string): void {
  const old = new Date(Date.now() - 3600_000);
  utimesSync(path, old, old);
  try {
    for (const name of readdirSync(path)) age(join(path, name));
  } catch {
    // a file
  }
}

describe('LayerStore', () => {
  it('adds a layer once: a second add with the known diff_id is a cache hit', async () => {
    const store = LayerStore.open(join(root, 'store'));
    const blob = await layerBlob('a', 'alpha');
    const meta = await store.addLayer(blob, { label: 'a', createdBy: 'test' });
    expect(store.hasLayer(meta.diffId)).toBe(true);
    expect(meta).toMatchObject({ createdBy: 'test', compression: 'gzip', entries: 1, chowned: false });
    rmSync(blob);
    // The blob is gone: only a cache hit can succeed.
    const again = await store.addLayer(blob, { label: 'a', createdBy: 'other', expectedDiffId: meta.diffId });
    expect(again.createdBy).toBe('test');
  });

  it('serialises two concurrent adds of the same layer; both get it, the store holds it once', async () => {
    const store = LayerStore.open(join(root, 'store'));
    const blob = await layerBlob('same', 'x'.repeat(100_000));
    const tar = await makeTar([{ name: 'same', content: 'x'.repeat(100_000) }]);
    const diffId = sha256(tar);
    const [one, two] = await Promise.all([
      store.addLayer(blob, { label: 'one', createdBy: 'one', expectedDiffId: diffId }),
      store.addLayer(blob, { label: 'two', createdBy: 'two', expectedDiffId: diffId }),
    ]);
    expect(one.diffId).toBe(diffId);
    expect(two.diffId).toBe(diffId);
    expect(readdirSync(join(root, 'store/layers/sha256'))).toEqual([diffId.slice(7)]);
    expect(readdirSync(join(root, 'store/layers')).filter((n) => n.startsWith('.tmp-'))).toEqual([]);
  });

  it('keeps referenced images, collects the rest and reports the bytes freed', async () => {
    const store = LayerStore.open(join(root, 'store'));
    const shared = await store.addLayer(await layerBlob('shared', 's'.repeat(50_000)), { label: 's', createdBy: 't' });
    const onlyOld = await store.addLayer(await layerBlob('old', 'o'.repeat(80_000)), { label: 'o', createdBy: 't' });
    const onlyNew = await store.addLayer(await layerBlob('new', 'n'.repeat(20_000)), { label: 'n', createdBy: 't' });
    const orphanBlob = Buffer.from('orphan config');
    await store.putBlob(sha256(orphanBlob), orphanBlob, 'test');
    await store.writeImage(image('old', [shared.diffId, onlyOld.diffId]));
    await store.writeImage(image('new', [shared.diffId, onlyNew.diffId]));
    await store.setRefs('env:project-1', ['new']);
    await store.setRefs('build:abc', ['new']);
    expect(store.referenceCounts().get('new')).toEqual(['build:abc', 'env:project-1']);

    // Within the grace period nothing goes, referenced or not.
    expect(await store.gc()).toEqual({ images: [], layers: [], blobs: [], bytesFreed: 0 });

    age(join(root, 'store'));
    const oldBytes = diskUsage(store.layerDir(onlyOld.diffId)) + diskUsage(join(root, 'store/images/old.json')) + diskUsage(store.blobPath(sha256(orphanBlob)));
    const result = await store.gc();
    expect(result.images).toEqual(['old']);
    expect(result.layers).toEqual([onlyOld.diffId]);
    expect(result.blobs).toEqual([sha256(orphanBlob)]);
    expect(result.bytesFreed).toBe(oldBytes);
    expect(store.hasLayer(shared.diffId)).toBe(true);
    expect(store.hasLayer(onlyNew.diffId)).toBe(true);
    expect(store.verify()).toEqual([]);

    // Dropping the last references makes the rest collectable.
    await store.removeRefs('env:project-1');
    await store.removeRefs('build:abc');
    age(join(root, 'store'));
    const rest = await store.gc();
    expect(rest.images).toEqual(['new']);
    expect(rest.layers.sort()).toEqual([shared.diffId, onlyNew.diffId].sort());
    expect(readdirSync(join(root, 'store/layers/sha256'))).toEqual([]);
  });

  it('keeps the ancestors of a kept image: the build steps a later build starts from', async () => {
    const store = LayerStore.open(join(root, 'store'));
    const base = await store.addLayer(await layerBlob('base', 'b'.repeat(10_000)), { label: 'b', createdBy: 't' });
    const step = await store.addLayer(await layerBlob('step', 's'.repeat(10_000)), { label: 's', createdBy: 't' });
    const stray = await store.addLayer(await layerBlob('stray', 'x'.repeat(10_000)), { label: 'x', createdBy: 't' });
    await store.writeImage(image('base-step', [base.diffId]));
    await store.writeImage({ ...image('env-step', [base.diffId]), parent: 'base-step' });
    await store.writeImage({ ...image('final', [base.diffId, step.diffId]), parent: 'env-step' });
    await store.writeImage({ ...image('abandoned', [base.diffId, stray.diffId]), parent: 'base-step' });
    await store.setRefs('env:project', ['final']);
    age(join(root, 'store'));
    const result = await store.gc();
    expect(result.images).toEqual(['abandoned']);
    expect(result.layers).toEqual([stray.diffId]);
    expect(store.listImages().map((i) => i.key).sort()).toEqual(['base-step', 'env-step', 'final']);
  });

  it('refuses an image naming a layer it does not hold, and refs to unknown images', async () => {
    const store = LayerStore.open(join(root, 'store'));
    await expect(store.writeImage(image('broken', [sha256('nothing')]))).rejects.toThrow(/names layer sha256:[0-9a-f]{64}, which is not in the store/);
    await expect(store.setRefs('env:x', ['missing'])).rejects.toThrow(/cannot reference image missing/);
  });

  it('deletes a blob whose content does not match its digest, naming it', async () => {
    const store = LayerStore.open(join(root, 'store'));
    const temp = store.blobTempPath();
    writeFileSync(temp, 'actual');
    const claimed = sha256('claimed');
    await expect(store.commitBlob(claimed, temp, 'a test')).rejects.toThrow(`blob ${claimed} from a test has digest ${sha256('actual')}: its content does not match, deleted`);
    expect(existsSync(temp)).toBe(false);
    expect(store.hasBlob(claimed)).toBe(false);
  });

  it('sweeps temp dirs of dead processes on open and keeps those of live ones', () => {
    const storeRoot = join(root, 'store');
    LayerStore.open(storeRoot);
    const dead = join(storeRoot, 'layers', '.tmp-layer-999999999-12345-deadbeef');
    mkdirSync(join(dead, 'root/ro'), { recursive: true });
    execFileSync('chmod', ['0555', join(dead, 'root/ro')]);
    const live = join(storeRoot, 'layers', tempName('layer'));
    mkdirSync(live);
    const deadBlob = join(storeRoot, 'blobs/sha256', '.tmp-blob-999999999-1-00000000');
    writeFileSync(deadBlob, 'half');
    LayerStore.open(storeRoot);
    expect(existsSync(dead)).toBe(false);
    expect(existsSync(deadBlob)).toBe(false);
    expect(existsSync(live)).toBe(true);
  });
});

describe('LayerStore.addLayer when unpacking fails', () => {
  let root: string;
  beforeEach(() => (root = mkdtempSync(join(tmpdir(), 'envy-store-fail-'))));
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  it('reports the unpack error, not a failure to clean up, and removes the half-made layer with the given remover', async () => {
    const store = LayerStore.open(join(root, 'store'));
    const removed: string[] = [];
    const attempt = store.addLayer(join(root, 'nothing.tar'), {
      label: 'broken.tar',
      createdBy: 'test',
      unpack: async (_source, dest) => {
        mkdirSync(join(dest, 'etc'), { recursive: true });
        throw new Error('the tar is truncated');
      },
      removeTree: (path) => {
        removed.push(path);
        // A remover that cannot (subordinate-owned files seen from outside the namespace) must not mask the cause.
        throw Object.assign(new Error('EPERM: operation not permitted'), { code: 'EPERM' });
      },
    });
    await expect(attempt).rejects.toThrow('the tar is truncated');
    expect(removed).toHaveLength(1);
    expect(removed[0]).toMatch(/[/]layers[/]\.tmp-layer-/);
  });
});

describe('LayerStore.commitLayerDir', () => {
  function makeTree(dir: string, stamp: Date): void {
    mkdirSync(join(dir, 'etc/conf.d'), { recursive: true });
    mkdirSync(join(dir, 'var/cache'), { recursive: true });
    writeFileSync(join(dir, 'etc/conf.d/app.conf'), 'key=value\n');
    writeFileSync(join(dir, 'etc/tool'), '#!/bin/sh\n', { mode: 0o755 });
    execFileSync('mknod', [join(dir, 'etc/removed'), 'c', '0', '0']);
    execFileSync('setfattr', ['-n', 'user.overlay.opaque', '-v', 'y', join(dir, 'var/cache')]);
    execFileSync('touch', ['-h', '-d', stamp.toISOString(), ...['etc/conf.d/app.conf', 'etc/tool', 'etc/removed', 'etc/conf.d', 'etc', 'var/cache', 'var'].map((p) => join(dir, p))]);
  }

  it('moves a directory in as a layer keyed by its deterministic tar, whiteouts and opaque dirs included', async () => {
    const store = LayerStore.open(join(root, 'store'));
    const epoch = 1_700_000_000;
    const first = join(root, 'store', 'build-a');
    const second = join(root, 'store', 'build-b');
    makeTree(first, new Date('2025-01-01T00:00:00Z'));
    makeTree(second, new Date('2025-06-01T00:00:00Z'));
    const meta = await store.commitLayerDir(first, { createdBy: 'step one', sourceDateEpoch: epoch });
    expect(existsSync(first)).toBe(false);
    expect(meta).toMatchObject({ createdBy: 'step one', whiteouts: ['etc/removed'], opaqueDirs: ['var/cache'], chowned: false });
    expect(store.verify()).toEqual([]);
    // Same content at a different time, mtimes clamped to the same epoch: the same layer, stored once.
    const again = await store.commitLayerDir(second, { createdBy: 'step two', sourceDateEpoch: epoch });
    expect(again.diffId).toBe(meta.diffId);
    expect(again.createdBy).toBe('step one');
    expect(existsSync(second)).toBe(false);
    expect(readdirSync(join(root, 'store/layers/sha256'))).toEqual([meta.diffId.slice(7)]);
  });

  it('adopts a prepared layers/.tmp-* dir by rename; identical content already stored wins and the dir goes', async () => {
    const store = LayerStore.open(join(root, 'store'));
    const diffId = sha256('a step layer');
    const prepared = (): string => {
      const dir = join(root, 'store/layers', tempName('step'));
      mkdirSync(join(dir, 'root/etc'), { recursive: true });
      writeFileSync(join(dir, 'root/etc/marker'), 'made by a step');
      return dir;
    };
    const base = { diffId, size: 2048, entries: 2, skippedDevices: 0, whiteouts: [], opaqueDirs: [], chowned: true, owners: {}, strippedModes: {} };
    const first = prepared();
    const meta = await store.adoptLayerDir(first, { ...base, createdBy: 'step one' });
    expect(existsSync(first)).toBe(false);
    expect(store.hasLayer(diffId)).toBe(true);
    expect(store.readLayerMeta(diffId)).toEqual(meta);
    expect(readdirSync(store.layerDir(diffId)).sort()).toEqual(['meta.json', 'root']);
    expect(store.verify()).toEqual([]);
    const removed: string[] = [];
    const second = prepared();
    const again = await store.adoptLayerDir(second, { ...base, createdBy: 'step two' }, { removeTree: (path) => {
      removed.push(path);
      rmSync(path, { recursive: true });
    } });
    expect(again.createdBy).toBe('step one');
    expect(removed).toEqual([second]);
    expect(readdirSync(join(root, 'store/layers')).filter((n) => n.startsWith('.tmp-'))).toEqual([]);
    // A record naming the layer is the durability barrier: it goes through.
    await store.writeImage(image('adopted', [diffId]));
    expect(store.hasImage('adopted')).toBe(true);
  });
});
