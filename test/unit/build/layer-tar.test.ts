import { execFileSync } from 'node:child_process';
import { linkSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, test } from 'vitest';
import { tarTree } from '../../../src/image/export.js';

const owned = { chowned: true, owners: {}, strippedModes: {} };
// The build's layer identity is tarTree's digest (the layer worker snapshots upper dirs with it).
async function snapshotDirectory(root: string, options: { sourceDateEpoch?: number; output?: string }) {
  return tarTree(root, owned, options.output, { gzip: false, sourceDateEpoch: options.sourceDateEpoch });
}

let work: string;
beforeEach(() => {
  work = mkdtempSync(join(tmpdir(), 'envy-snapshot-'));
});
afterEach(() => rmSync(work, { recursive: true, force: true }));

function makeTree(root: string): void {
  mkdirSync(join(root, 'etc/app'), { recursive: true });
  mkdirSync(join(root, 'usr/bin'), { recursive: true });
  writeFileSync(join(root, 'etc/app/config'), 'key=value\n');
  writeFileSync(join(root, 'usr/bin/tool'), '#!/bin/sh\necho hi\n', { mode: 0o755 });
  linkSync(join(root, 'usr/bin/tool'), join(root, 'usr/bin/tool-alias'));
  symlinkSync('tool', join(root, 'usr/bin/t'));
  writeFileSync(join(root, 'big'), Buffer.alloc(3 * 1024 * 1024, 7));
}

test('the same tree gives the same diff_id whatever its mtimes and creation order, with SOURCE_DATE_EPOCH', async () => {
  const a = join(work, 'a');
  const b = join(work, 'b');
  makeTree(a);
  // cp -a keeps the hard link (fs.cpSync would not: the trees would differ for real).
  execFileSync('cp', ['-a', a, b]);
  utimesSync(join(b, 'etc/app/config'), new Date(), new Date());
  const epoch = 1_700_000_000;
  const first = await snapshotDirectory(a, { sourceDateEpoch: epoch });
  const second = await snapshotDirectory(b, { sourceDateEpoch: epoch });
  expect(second.diffId).toBe(first.diffId);
  expect(first.diffId).toMatch(/^sha256:[0-9a-f]{64}$/);
});

test('a content change changes the diff_id', async () => {
  const a = join(work, 'a');
  makeTree(a);
  const before = await snapshotDirectory(a, { sourceDateEpoch: 0 });
  writeFileSync(join(a, 'etc/app/config'), 'key=other\n');
  const after = await snapshotDirectory(a, { sourceDateEpoch: 0 });
  expect(after.diffId).not.toBe(before.diffId);
});

test('GNU tar reads the output: sorted entries, hard link as a link, opaque marker, clamped mtimes', async () => {
  const a = join(work, 'a');
  makeTree(a);
  const out = join(work, 'layer.tar');
  execFileSync('setfattr', ['-n', 'user.overlay.opaque', '-v', 'y', join(a, 'etc/app')]);
  const result = await snapshotDirectory(a, { sourceDateEpoch: 86400, output: out });
  const listing = execFileSync('tar', ['-tvf', out], { encoding: 'utf8' }).trim().split('\n');
  const names = execFileSync('tar', ['-tf', out], { encoding: 'utf8' }).trim().split('\n');
  expect(names).toEqual(['big', 'etc/', 'etc/app/', 'etc/app/.wh..wh..opq', 'etc/app/config', 'usr/', 'usr/bin/', 'usr/bin/t', 'usr/bin/tool', 'usr/bin/tool-alias']);
  expect(listing.find((l) => l.includes('usr/bin/tool-alias link to'))).toMatch(/^h.* usr\/bin\/tool-alias link to usr\/bin\/tool$/);
  expect(listing.find((l) => l.endsWith('usr/bin/t -> tool'))).toMatch(/^l/);
  for (const line of listing) expect(line).toContain('1970-01-02');
  expect(result.opaqueDirs).toEqual(['etc/app']);
  expect(execFileSync('sha256sum', [out], { encoding: 'utf8' }).split(' ')[0]).toBe(result.diffId.slice(7));
});
