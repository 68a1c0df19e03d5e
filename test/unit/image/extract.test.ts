import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { EnvyError } from '../../../src/errors.js';
import { extractLayer } from '../../../src/image/extract.js';
import { gzip, makeTar, zstd, type TestEntry } from './tar-helpers.js';

let work: string;
beforeEach(() => {
  work = mkdtempSync(join(tmpdir(), 'envy-extract-'));
});
afterEach(() => {
  execFileSync('chmod', ['-R', 'u+rwX', work]);
  rmSync(work, { recursive: true, force: true });
});

const LABEL = 'sha256:' + 'ab'.repeat(32);
const dest = (): string => join(work, 'layer');

async function extractEntries(entries: TestEntry[], wrap: (tar: Buffer) => Buffer = (t) => t) {
  const tar = await makeTar(entries);
  return { tar, result: await extractLayer(Readable.from([wrap(tar)]), dest(), { label: LABEL }) };
}

function getXattr(path: string, name: string): string | undefined {
  try {
    return execFileSync('getfattr', ['--absolute-names', '--only-values', '-n', name, path], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
  } catch {
    return undefined;
  }
}

describe('extractLayer: well-formed layers', () => {
  const entries: TestEntry[] = [
    { name: 'etc/', type: 'directory', mode: 0o755 },
    { name: 'etc/hostname', content: 'box\n', mode: 0o644, uid: 0, gid: 0 },
    { name: 'usr/bin/tool', content: '#!/bin/sh\n', mode: 0o755, uid: 1000, gid: 100 },
    { name: 'usr/bin/tool-link', type: 'link', linkname: 'usr/bin/tool' },
    { name: 'usr/bin/sh', type: 'symlink', linkname: '/bin/busybox' },
    { name: 'ro/', type: 'directory', mode: 0o555, mtime: new Date('2020-05-05T00:00:00Z') },
    { name: 'ro/inside', content: 'x', mode: 0o444 },
    { name: 'usr/bin/su', content: 'suid', mode: 0o4755 },
    { name: 'dev/null', type: 'character-device' },
    { name: 'dev/sda', type: 'block-device' },
  ];

  for (const [compression, wrap] of [
    ['none', (t: Buffer) => t],
    ['gzip', gzip],
    ['zstd', zstd],
  ] as const) {
    it(`unpacks ${compression} with modes, mtimes, links and a diff_id of the uncompressed tar`, async () => {
      const { tar, result } = await extractEntries(entries, wrap);
      expect(result.compression).toBe(compression);
      expect(result.diffId).toBe(`sha256:${createHash('sha256').update(tar).digest('hex')}`);
      expect(result.tarSize).toBe(tar.length);
      expect(readFileSync(join(dest(), 'etc/hostname'), 'utf8')).toBe('box\n');
      expect(statSync(join(dest(), 'usr/bin/tool')).mode & 0o7777).toBe(0o755);
      expect(statSync(join(dest(), 'usr/bin/tool-link')).ino).toBe(statSync(join(dest(), 'usr/bin/tool')).ino);
      expect(readlinkSync(join(dest(), 'usr/bin/sh'))).toBe('/bin/busybox');
      expect(statSync(join(dest(), 'ro')).mode & 0o777).toBe(0o555);
      expect(statSync(join(dest(), 'ro')).mtime.toISOString()).toBe('2020-05-05T00:00:00.000Z');
      expect(statSync(join(dest(), 'ro/inside')).mode & 0o777).toBe(0o444);
      // Unprivileged: the setuid bit is dropped and remembered, the owner recorded, devices skipped.
      expect(statSync(join(dest(), 'usr/bin/su')).mode & 0o7777).toBe(0o755);
      expect(result.strippedModes).toEqual({ 'usr/bin/su': 0o4755 });
      expect(result.owners['usr/bin/tool']).toEqual([1000, 100]);
      expect(result.skippedDevices).toBe(2);
      expect(existsSync(join(dest(), 'dev/null'))).toBe(false);
      expect(readdirSync(work)).toEqual(['layer']);
    });
  }

  it('turns .wh.NAME into a 0/0 character device and .wh..wh..opq into user.overlay.opaque=y', async () => {
    const { result } = await extractEntries([
      { name: 'etc/.wh.motd' },
      { name: 'var/cache/.wh..wh..opq' },
      { name: 'var/cache/kept', content: 'mine' },
      { name: '.wh.top' },
      // A whiteout next to a same-layer file of that name hides only lower layers: the file stays.
      { name: 'opt/.wh.same' },
      { name: 'opt/same', content: 'same layer' },
      { name: 'opt/.wh..wh.plnk' },
    ]);
    expect(result.whiteouts).toEqual(['etc/motd', 'opt/same', 'top']);
    expect(result.opaqueDirs).toEqual(['var/cache']);
    const motd = lstatSync(join(dest(), 'etc/motd'));
    expect(motd.isCharacterDevice()).toBe(true);
    expect(motd.rdev).toBe(0);
    expect(lstatSync(join(dest(), 'top')).isCharacterDevice()).toBe(true);
    expect(readFileSync(join(dest(), 'opt/same'), 'utf8')).toBe('same layer');
    expect(getXattr(join(dest(), 'var/cache'), 'user.overlay.opaque')).toBe('y');
    expect(readFileSync(join(dest(), 'var/cache/kept'), 'utf8')).toBe('mine');
    expect(existsSync(join(dest(), 'opt/.wh..wh.plnk'))).toBe(false);
    expect(readdirSync(join(dest(), 'etc'))).toEqual(['motd']);
  });

  it('lets a later entry replace an earlier one, and merges directories', async () => {
    await extractEntries([
      { name: 'a', type: 'symlink', linkname: '/etc' },
      { name: 'a/', type: 'directory' },
      { name: 'a/file', content: 'now a dir' },
      { name: 'b', content: 'first' },
      { name: 'b', content: 'second' },
    ]);
    expect(lstatSync(join(dest(), 'a')).isDirectory()).toBe(true);
    expect(readFileSync(join(dest(), 'a/file'), 'utf8')).toBe('now a dir');
    expect(readFileSync(join(dest(), 'b'), 'utf8')).toBe('second');
  });

  it('rejects a tar whose diff_id differs from the expected one, leaving nothing', async () => {
    const tar = await makeTar([{ name: 'x', content: 'x' }]);
    await expect(extractLayer(Readable.from([tar]), dest(), { label: LABEL, expectedDiffId: `sha256:${'0'.repeat(64)}` })).rejects.toThrow(
      /diff_id sha256:[0-9a-f]{64}, but the image config says sha256:0000/,
    );
    expect(readdirSync(work)).toEqual([]);
  });
});

describe('extractLayer: malicious layers are rejected whole', () => {
  const cases: { title: string; entries: TestEntry[]; message: RegExp }[] = [
    { title: 'a ../ path', entries: [{ name: 'ok', content: '1' }, { name: '../x', content: 'escape' }], message: /entry "\.\.\/x" has a "\.\." component/ },
    { title: 'a nested .. path', entries: [{ name: 'a/b/../../../x', content: 'escape' }], message: /entry "a\/b\/\.\.\/\.\.\/\.\.\/x" has a "\.\." component/ },
    { title: 'an absolute path', entries: [{ name: '/etc/x', content: 'escape' }], message: /entry "\/etc\/x" has an absolute path/ },
    {
      title: 'a file written through a symlink placed earlier',
      entries: [{ name: 'etc', type: 'symlink', linkname: '/etc' }, { name: 'etc/passwd', content: 'root::0:0' }],
      message: /entry "etc\/passwd" goes through the symlink "etc" placed by an earlier entry/,
    },
    {
      title: 'a relative symlink pointing up, then a file through it',
      entries: [{ name: 'up', type: 'symlink', linkname: '../../..' }, { name: 'up/tmp/x', content: 'x' }],
      message: /entry "up\/tmp\/x" goes through the symlink "up"/,
    },
    {
      title: 'a directory through a symlink',
      entries: [{ name: 'l', type: 'symlink', linkname: '/' }, { name: 'l/sub/', type: 'directory' }],
      message: /entry "l\/sub\/" goes through the symlink "l"/,
    },
    {
      title: 'a hard link out of the tree',
      entries: [{ name: 'shadow', type: 'link', linkname: '../../../etc/shadow' }],
      message: /entry "shadow" has a "\.\." component in its hard link target/,
    },
    {
      title: 'a hard link to an absolute path',
      entries: [{ name: 'shadow', type: 'link', linkname: '/etc/shadow' }],
      message: /entry "shadow" has an absolute hard link target/,
    },
    {
      title: 'a hard link to a file not in the layer',
      entries: [{ name: 'h', type: 'link', linkname: 'missing' }],
      message: /entry "h" is a hard link to "missing", which is not an earlier file of this layer/,
    },
    {
      title: 'a hard link through a symlinked directory',
      entries: [{ name: 'd', type: 'symlink', linkname: '/etc' }, { name: 'h', type: 'link', linkname: 'd/shadow' }],
      message: /entry "h" is a hard link to "d\/shadow", which is not an earlier file/,
    },
    {
      title: 'a whiteout through a symlink',
      entries: [{ name: 's', type: 'symlink', linkname: '/tmp' }, { name: 's/.wh.victim' }],
      message: /entry "s\/\.wh\.victim" goes through the symlink "s"/,
    },
  ];
  for (const { title, entries, message } of cases) {
    it(`rejects ${title}, naming the layer and the entry, and writes nothing`, async () => {
      const outside = join(work, 'outside-marker');
      const error = await extractEntries(entries).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(EnvyError);
      expect((error as EnvyError).message).toContain(`layer ${LABEL}: `);
      expect((error as EnvyError).message).toMatch(message);
      expect(readdirSync(work)).toEqual([]);
      expect(existsSync(outside)).toBe(false);
    });
  }

  it('rejects a truncated gzip layer', async () => {
    const tar = await makeTar([{ name: 'big', content: 'y'.repeat(100_000) }]);
    const gz = gzip(tar);
    const error = await extractLayer(Readable.from([gz.subarray(0, gz.length / 2)]), dest(), { label: LABEL }).catch((e: unknown) => e);
    expect((error as EnvyError).message).toMatch(new RegExp(`layer ${LABEL} could not be unpacked`));
    expect(readdirSync(work)).toEqual([]);
  });

  it.each([
    ['gzip', gzip],
    ['zstd', zstd],
    ['none', (t: Buffer) => t],
  ] as const)('fails with the source stream\'s own error (a download that failed its digest), leaving nothing: %s', async (_name, wrap) => {
    const blob = wrap(await makeTar(Array.from({ length: 50 }, (_, i) => ({ name: `d/f${i}`, content: 'x'.repeat(5000 + i) }))));
    async function* failing(): AsyncGenerator<Buffer> {
      yield blob.subarray(0, Math.floor(blob.length / 2));
      throw new EnvyError('IMAGE', 'blob sha256:abc has digest sha256:def: its content does not match, deleted');
    }
    const error = await extractLayer(Readable.from(failing(), { objectMode: false }), dest(), { label: LABEL }).catch((e: unknown) => e);
    expect((error as EnvyError).message).toMatch(/its content does not match/);
    expect(readdirSync(work)).toEqual([]);
  });

  it('reads a layer from a file path (zstd as a stream filter)', async () => {
    const path = join(work, 'blob');
    writeFileSync(path, zstd(await makeTar([{ name: 'f', content: 'from file' }])));
    const result = await extractLayer(path, dest(), { label: LABEL });
    expect(result.compression).toBe('zstd');
    expect(readFileSync(join(dest(), 'f'), 'utf8')).toBe('from file');
    expect(readdirSync(work).sort()).toEqual(['blob', 'layer']);
  });
});
