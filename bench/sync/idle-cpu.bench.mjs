// CPU used by envy while idle-watching a 10,000-file tree for 10 s (process.cpuUsage, user + system),
// inotify and forced polling. Anchor: docker-sync is reported to peg a core (100%).
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { loadSync, makeTree, tempDir } from './lib.mjs';

const IDLE_MS = 10_000;
const { SyncEngine, LocalTransport } = await loadSync();
const dir = tempDir('idle');
const host = join(dir, 'host');
makeTree(host, { files: 10_000 });
console.log('| watch mode | CPU ms over 10 s | % of one core | RSS MB |');
console.log('|---|---:|---:|---:|');
for (const forcePolling of [false, true]) {
  const env = join(dir, `env-${forcePolling}`);
  const engine = new SyncEngine({ source: new LocalTransport(host), target: new LocalTransport(env), forcePolling });
  await engine.start();
  const before = process.cpuUsage();
  await new Promise((resolve) => setTimeout(resolve, IDLE_MS));
  const used = process.cpuUsage(before);
  const cpuMs = (used.user + used.system) / 1000;
  const mode = engine.status().watchMode;
  await engine.stop();
  console.log(`| ${mode} | ${cpuMs.toFixed(0)} | ${((cpuMs / IDLE_MS) * 100).toFixed(1)} | ${(process.memoryUsage().rss / 1024 / 1024).toFixed(0)} |`);
}
rmSync(dir, { recursive: true, force: true });
