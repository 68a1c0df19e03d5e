/**
 * Image archives read by their tar headers (image/tar-scan.ts): the import hands big layers over as file
 * ranges, and plans key an archive by its documents. Both must agree with the streaming reader, and
 * anything the header reader does not understand must fall back to it.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { sha256 } from '../../../src/image/digest.js';
import { extractLayer, type LayerSource } from '../../../src/image/extract.js';
import { fileRangeOf } from '../../../src/image/file-range.js';
import { importOci } from '../../../src/image/oci-import.js';
import { LayerStore, type Unpacker } from '../../../src/image/store.js';
import { archiveIdentity, DOCUMENT_MAX } from '../../../src/image/tar-scan.js';
import { gzip, makeTar, type TestEntry } from './tar-helpers.js';

let work: string;
beforeEach(() => {
  work = mkdtempSync(join(tmpdir(), 'envy-archive-scan-'));
});
afterEach(() => rmSync(work, { recursive: true, force: true }));

const big = Buffer.alloc(DOCUMENT_MAX + 4096, 'x');

async function dockerArchive(options: { bigLayer?: Buffer; configExtra?: object; longName?: boolean } = {}): Promise<{ archive: Buffer; layers: Buffer[] }> {
  const layers = [
    options.bigLayer ?? (await makeTar([{ name: 'etc/', type: 'directory' }, { name: 'etc/big', content: big }])),
    await makeTar([{ name: 'etc/small', content: 'small\n' }]),
  ];
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Env: ['A=1'] }, rootfs: { type: 'layers', diff_ids: layers.map((l) => sha256(l)) }, ...options.configExtra }));
  const configName = `${sha256(config).slice(7)}.json`;
  const layerNames = layers.map((l) => `${sha256(l).slice(7)}/layer.tar`);
  const entries: TestEntry[] = [
    ...layers.map((l, i) => ({ name: layerNames[i]!, content: l })),
    { name: configName, content: config },
    { name: 'manifest.json', content: JSON.stringify([{ Config: configName, RepoTags: ['envy/test:v1'], Layers: layerNames }]) },
  ];
  // A name over 100 bytes with no '/' to split at makes tar-stream write a PAX header.
  if (options.longName) entries.unshift({ name: `${'n'.repeat(120)}`, content: 'pax' });
  return { archive: await makeTar(entries), layers };
}

describe('image archives read by their headers', () => {
  it('imports a plain archive as the streaming reader does, handing big layers over as file ranges', async () => {
    const { archive } = await dockerArchive();
    writeFileSync(join(work, 'a.tar'), archive);
    writeFileSync(join(work, 'a.tar.gz'), gzip(archive));
    const ranges: string[] = [];
    const unpack: Unpacker = (source: LayerSource, dest, options) => {
      const range = fileRangeOf(source);
      if (range) ranges.push(`${range.start}-${range.end}`);
      return extractLayer(source, dest, options);
    };
    const plain = await importOci(join(work, 'a.tar'), LayerStore.open(join(work, 's1')), { unpack });
    const streamed = await importOci(join(work, 'a.tar.gz'), LayerStore.open(join(work, 's2')), { unpack });
    expect(plain.image.layers).toEqual(streamed.image.layers);
    expect(plain.digest).toBe(streamed.digest);
    // The big layer went over as a range of the file (the gzip archive never does); its bytes are there.
    expect(ranges).toHaveLength(1);
    const [start, end] = ranges[0]!.split('-').map(Number) as [number, number];
    expect(sha256(archive.subarray(start, end + 1))).toBe(plain.image.layers[0]!.diffId);
    const store = LayerStore.open(join(work, 's1'));
    // (Buffer.equals: toEqual on a MiB compares element by element for seconds.)
    expect(readFileSync(join(store.layerRoot(plain.image.layers[0]!.diffId), 'etc/big')).equals(big)).toBe(true);
  });

  it('refuses a big layer whose bytes are not the ones the config names', async () => {
    const { archive, layers } = await dockerArchive();
    const at = archive.indexOf(layers[0]!);
    const tampered = Buffer.from(archive);
    tampered[at + layers[0]!.indexOf(big) + 10] = 0x79;
    writeFileSync(join(work, 't.tar'), tampered);
    await expect(importOci(join(work, 't.tar'), LayerStore.open(join(work, 's')))).rejects.toThrow(/has diff_id sha256:[0-9a-f]{64}, but the image config says/);
  });

  it('falls back to the streaming reader for headers it does not take apart (PAX)', async () => {
    const { archive } = await dockerArchive({ longName: true });
    expect(archive.toString('latin1')).toContain('PaxHeader');
    writeFileSync(join(work, 'p.tar'), archive);
    const ranges: unknown[] = [];
    const unpack: Unpacker = (source, dest, options) => {
      if (fileRangeOf(source)) ranges.push(fileRangeOf(source));
      return extractLayer(source, dest, options);
    };
    const result = await importOci(join(work, 'p.tar'), LayerStore.open(join(work, 's')), { unpack });
    expect(result.image.layers).toHaveLength(2);
    expect(ranges).toEqual([]);
    expect(archiveIdentity(join(work, 'p.tar'))).toBeUndefined();
  });

  it('keys an archive by its documents: same image same key, another config another key, compressed none', async () => {
    const first = await dockerArchive();
    const again = await dockerArchive();
    const other = await dockerArchive({ configExtra: { author: 'someone else' } });
    writeFileSync(join(work, '1.tar'), first.archive);
    writeFileSync(join(work, '2.tar'), again.archive);
    writeFileSync(join(work, '3.tar'), other.archive);
    writeFileSync(join(work, '1.tar.gz'), gzip(first.archive));
    const key = archiveIdentity(join(work, '1.tar'));
    expect(key).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(archiveIdentity(join(work, '2.tar'))).toBe(key);
    expect(archiveIdentity(join(work, '3.tar'))).not.toBe(key);
    expect(archiveIdentity(join(work, '1.tar.gz'))).toBeUndefined();
    // A layer of another size is another archive even before its config is read.
    const resized = await dockerArchive({ bigLayer: await makeTar([{ name: 'etc/big', content: Buffer.alloc(DOCUMENT_MAX + 8192, 'y') }]) });
    writeFileSync(join(work, '4.tar'), resized.archive);
    expect(archiveIdentity(join(work, '4.tar'))).not.toBe(key);
  });
});
