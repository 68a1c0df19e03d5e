// Initial sync of a 10,000-file, 200 MB tree into an empty target, envy's engine vs `rsync -a` of the
// same tree into the same kind of target (same filesystem). Median of 3 runs each. Target: envy no slower.
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { hasProgram } from '../lib.mjs';
import { loadSync, makeTree, tempDir } from './lib.mjs';

const RUNS = 3;
const { SyncEngine, LocalTransport } = await loadSync();
const dir = tempDir('initial');
const host = join(dir, 'host');
const bytes = makeTree(host, { files: 10_000, totalBytes: 200 * 1024 * 1024 });
console.log(`tree: 10,000 files, ${(bytes / 1024 / 1024).toFixed(0)} MB, in ${dir}\n`);

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const envyRuns = [];
const envyWatchRuns = [];
const rsyncRuns = [];
for (let run = 0; run < RUNS; run++) {
  for (const watch of [false, true]) {
    const envTarget = join(dir, `env-${run}-${watch}`);
    const engine = new SyncEngine({ source: new LocalTransport(host), target: new LocalTransport(envTarget), watch });
    const started = performance.now();
    await engine.start();
    (watch ? envyWatchRuns : envyRuns).push(performance.now() - started);
    await engine.stop();
    rmSync(envTarget, { recursive: true, force: true });
  }
  let started;

  if (hasProgram('rsync')) {
    const rsyncTarget = join(dir, `rsync-${run}`);
    started = performance.now();
    const result = spawnSync('rsync', ['-a', `${host}/`, `${rsyncTarget}/`], { stdio: 'inherit' });
    rsyncRuns.push(performance.now() - started);
    if (result.status !== 0) throw new Error(`rsync exited with ${result.status}`);
    rmSync(rsyncTarget, { recursive: true, force: true });
  }
}
rmSync(dir, { recursive: true, force: true });
console.log('| tool | median ms | runs ms | × rsync -a |');
console.log('|---|---:|---|---:|');
const base = rsyncRuns.length > 0 ? median(rsyncRuns) : null;
console.log(`| envy sync, start() with watching (watchers' scans overlap the copy, then a rescan) | ${median(envyWatchRuns).toFixed(0)} | ${envyWatchRuns.map((x) => x.toFixed(0)).join(', ')} | ${base ? (median(envyWatchRuns) / base).toFixed(2) : '–'} |`);
console.log(`| envy sync, copy only (watch: false) | ${median(envyRuns).toFixed(0)} | ${envyRuns.map((x) => x.toFixed(0)).join(', ')} | ${base ? (median(envyRuns) / base).toFixed(2) : '–'} |`);
if (base) console.log(`| rsync -a | ${base.toFixed(0)} | ${rsyncRuns.map((x) => x.toFixed(0)).join(', ')} | 1.00 |`);
else console.log('| rsync -a | not installed (apt-get install rsync) | | |');
