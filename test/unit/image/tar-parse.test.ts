/**
 * The unpacker's tar reader (src/image/tar-parse.ts) against tar-stream, which it replaced on the hot
 * path: the same archives, written by GNU tar in every format it has and by tar-stream's packer, must
 * give the same entries with the same data, however the bytes are split into chunks.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, linkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import * as tar from 'tar-stream';
import { afterAll, describe, expect, it } from 'vitest';
import { TarParser, type TarHeader } from '../../../src/image/tar-parse.js';

interface Seen {
  header: Pick<TarHeader, 'name' | 'type' | 'mode' | 'uid' | 'gid' | 'size' | 'linkname'> & { mtime: number };
  data: string;
}

const work = mkdtempSync(join(tmpdir(), 'envy-tar-parse-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

function ours(archive: Buffer, chunkSizes: number[]): Seen[] {
  const seen: Seen[] = [];
  const parser = new TarParser((header) => {
    const entry: Seen = { header: { name: header.name, type: header.type, mode: header.mode, uid: header.uid, gid: header.gid, size: header.size, linkname: header.linkname, mtime: header.mtime.getTime() }, data: '' };
    seen.push(entry);
    const chunks: Buffer[] = [];
    return { data: (chunk) => void chunks.push(Buffer.from(chunk)), end: () => (entry.data = Buffer.concat(chunks).toString('hex')) };
  });
  let offset = 0;
  for (let i = 0; offset < archive.length; i++) {
    const size = chunkSizes[i % chunkSizes.length]!;
    parser.push(archive.subarray(offset, offset + size));
    offset += size;
  }
  parser.end();
  return seen;
}

async function theirs(archive: Buffer): Promise<Seen[]> {
  const seen: Seen[] = [];
  const extract = tar.extract();
  const feeding = new Promise<void>((resolve, reject) => {
    extract.on('finish', resolve);
    extract.on('error', reject);
  });
  Readable.from([archive]).pipe(extract);
  for await (const entry of extract) {
    const h = entry.header;
    const chunks: Buffer[] = [];
    for await (const chunk of entry) chunks.push(chunk as Buffer);
    seen.push({
      header: { name: h.name, type: (h.type ?? null) as TarHeader['type'], mode: h.mode!, uid: h.uid!, gid: h.gid!, size: h.size!, linkname: h.linkname ?? null, mtime: h.mtime!.getTime() },
      data: Buffer.concat(chunks).toString('hex'),
    });
  }
  await feeding;
  return seen;
}

/** A tree with long names (> 100 bytes, > 155 + 100 bytes), links, an empty file, a multi-block file. */
function tree(): string {
  const root = mkdtempSync(join(work, 'tree-'));
  const deep = join(root, 'd'.repeat(60), 'e'.repeat(60), 'f'.repeat(60));
  mkdirSync(deep, { recursive: true });
  writeFileSync(join(deep, `${'n'.repeat(90)}.txt`), 'deep file\n');
  writeFileSync(join(root, 'empty'), '');
  writeFileSync(join(root, 'big.bin'), Buffer.alloc(5000, 7));
  symlinkSync(`${'t'.repeat(120)}/target`, join(root, 'long-symlink'));
  linkSync(join(root, 'big.bin'), join(root, 'hard'));
  return root;
}

describe('TarParser', () => {
  const src = tree();
  const splits = [[1 << 20], [1], [511, 513], [7, 1024, 3]];
  for (const format of ['gnu', 'oldgnu', 'ustar', 'pax', 'posix'] as const) {
    it(`reads GNU tar's ${format} format as tar-stream does, however the input is chunked`, async () => {
      // ustar holds neither the longest names nor a uid over 2,097,151, which the other formats write as
      // base-256 (GNU) or a pax record (pax/posix); both readers keep the header's value.
      const args = format === 'ustar' ? ['-C', src, 'big.bin', 'empty', 'hard'] : ['--owner=3000000', '--group=7', '-C', src, '.'];
      const archive = execFileSync('tar', ['-c', `--format=${format}`, ...args]);
      const expected = await theirs(archive);
      expect(expected.length).toBeGreaterThan(2);
      for (const chunks of splits) expect(ours(archive, chunks)).toEqual(expected);
    });
  }

  it("reads tar-stream's own packer (pax headers for long names) the same way", async () => {
    const pack = tar.pack();
    pack.entry({ name: `${'x'.repeat(150)}/${'y'.repeat(150)}`, mode: 0o640, uid: 1000, gid: 1000, mtime: new Date(1_700_000_000_000) }, 'long name');
    pack.entry({ name: 'dir/', type: 'directory', mode: 0o755 });
    pack.entry({ name: 'link', type: 'symlink', linkname: 'z'.repeat(200) });
    pack.entry({ name: 'fifo', type: 'fifo' });
    pack.finalize();
    const chunks: Buffer[] = [];
    for await (const chunk of pack) chunks.push(chunk as Buffer);
    const archive = Buffer.concat(chunks);
    const expected = await theirs(archive);
    for (const split of splits) expect(ours(archive, split)).toEqual(expected);
  });

  it('refuses a truncated archive and a header with a bad checksum', () => {
    const archive = execFileSync('tar', ['-c', '-C', src, 'big.bin']);
    expect(() => ours(archive.subarray(0, 512 + 1000), [4096])).toThrow(/Unexpected end of data/);
    expect(() => ours(archive.subarray(0, 300), [4096])).toThrow(/Unexpected end of data/);
    const bad = Buffer.from(archive);
    bad[10] = bad[10]! ^ 0x20;
    expect(() => ours(bad, [4096])).toThrow(/Invalid tar header/);
  });
});
