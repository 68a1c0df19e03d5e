import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LayerStore } from '../../../src/image/store.js';
import { unpackWorkerMain, workerUnpacker } from '../../../src/image/unpack-worker.js';
import { bundleEntry } from './bundle.js';
import { gzip, makeTar } from './tar-helpers.js';

let work: string;
let worker: string;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'envy-worker-'));
  worker = await bundleEntry(resolve(import.meta.dirname, '../../../src/image/unpack-worker.ts'), join(work, 'unpack-worker.mjs'));
});
afterAll(() => {
  execFileSync('chmod', ['-R', 'u+rwX', work]);
  rmSync(work, { recursive: true, force: true });
});

describe('unpack worker', () => {
  it('runs in-process: reads stdin, prints the result as JSON', async () => {
    const tar = await makeTar([{ name: 'hello', content: 'world' }]);
    const lines: string[] = [];
    const code = await unpackWorkerMain([join(work, 'inproc'), 'sha256:test'], Readable.from([gzip(tar)]), (line) => lines.push(line));
    expect(code).toBe(0);
    expect(JSON.parse(lines[0]!)).toMatchObject({ compression: 'gzip', entries: 1 });
    expect(readFileSync(join(work, 'inproc/hello'), 'utf8')).toBe('world');
  });

  it('unpacks into the store from a child process, and carries errors back as the same message', async () => {
    const store = LayerStore.open(join(work, 'store'));
    const unpack = workerUnpacker([process.execPath, worker]);
    const tar = await makeTar([{ name: 'usr/bin/tool', content: 'x', mode: 0o755 }]);
    const blob = join(work, 'blob.tar.gz');
    writeFileSync(blob, gzip(tar));
    const meta = await store.addLayer(blob, { label: 'sha256:layer', createdBy: 'test', unpack });
    expect(readFileSync(join(store.layerRoot(meta.diffId), 'usr/bin/tool'), 'utf8')).toBe('x');
    expect(meta.entries).toBe(1);
    // Root (in a user namespace, or here the test runner) applies the tar's owners instead of recording them.
    expect(meta.chowned).toBe(process.geteuid?.() === 0);

    const evil = join(work, 'evil.tar');
    writeFileSync(evil, await makeTar([{ name: '../escape', content: 'x' }]));
    await expect(store.addLayer(evil, { label: 'sha256:evil', createdBy: 'test', unpack })).rejects.toThrow('layer sha256:evil: entry "../escape" has a ".." component in its path');
    expect(store.verify()).toEqual([]);
  });
});
