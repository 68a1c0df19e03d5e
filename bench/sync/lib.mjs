// Shared by the sync benchmarks: an on-the-fly esbuild bundle of src/sync (dist/ holds only the CLI
// bundle), temp trees, and percentiles.
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');

export async function loadSync() {
  const outdir = mkdtempSync(join(tmpdir(), 'envy-sync-bench-build-'));
  const outfile = join(outdir, 'sync.mjs');
  await build({
    entryPoints: [join(root, 'src/sync/index.ts')],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    outfile,
    logLevel: 'error',
  });
  return import(pathToFileURL(outfile).href);
}

export function tempDir(label) {
  return mkdtempSync(join(tmpdir(), `envy-sync-bench-${label}-`));
}

/** 100 packages × 100 files; `totalBytes` spread so most files are small and a few are large. */
export function makeTree(dir, { files = 10_000, totalBytes = 0 } = {}) {
  const largeCount = totalBytes > 0 ? Math.max(1, Math.floor(files / 100)) : 0;
  const smallBytes = totalBytes > 0 ? Math.floor((totalBytes * 0.4) / (files - largeCount)) : 0;
  const largeBytes = totalBytes > 0 ? Math.floor((totalBytes * 0.6) / largeCount) : 0;
  let written = 0;
  for (let i = 0; i < files; i++) {
    const sub = join(dir, `pkg${Math.floor(i / 100)}`, i % 2 === 0 ? 'src' : 'test');
    if (i % 100 < 2) mkdirSync(sub, { recursive: true });
    const isLarge = i < largeCount * 100 && i % 100 === 50;
    const size = totalBytes === 0 ? 32 : isLarge ? largeBytes : smallBytes;
    const body = Buffer.alloc(size, `${i} `);
    writeFileSync(join(sub, `f${i}.txt`), body);
    written += size;
  }
  return written;
}

export function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}
