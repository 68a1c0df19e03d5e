// The guest agent's own cost (issue 7: exec into a running VM within 50 ms of `envy exec` into a
// namespace env). The agent runs on this host over a unix socket, so this is the protocol, the client
// and the agent's fork/exec without the virtio-serial hop (MACHINE-FACTS: 7–15 ms per round trip
// under TCG), which a VM run adds. Anchor: Node's own spawn of the same `true`.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const arch = process.arch === 'arm64' ? 'aarch64' : 'x86_64';
const dir = mkdtempSync(join(tmpdir(), 'envy-agent-bench-'));
const outfile = join(dir, 'client.mjs');
await build({ entryPoints: [join(root, 'src/runtime/vm/agent-client.ts')], bundle: true, platform: 'node', format: 'esm', target: 'node20', outfile, logLevel: 'error' });
const { AgentClient } = await import(pathToFileURL(outfile).href);

const socket = join(dir, 'agent.sock');
const agent = spawn(join(root, 'dist', `envy-agent-${arch}`), ['--listen', `unix:${socket}`], { stdio: 'inherit' });
const env = { PATH: '/usr/bin:/bin' };

function stats(samples) {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
  return { p50: at(50), p95: at(95) };
}

async function execOnce(client, argv = ['true']) {
  const exec = client.exec({ argv, env });
  exec.stdout.resume();
  exec.stderr.resume();
  exec.stdin.end();
  return exec.exit;
}

function nodeSpawn() {
  return new Promise((resolve) => spawn('true', { stdio: 'ignore' }).on('exit', resolve));
}

async function time(fn, runs) {
  const samples = [];
  for (let i = 0; i < runs; i++) {
    const start = process.hrtime.bigint();
    await fn();
    samples.push(Number(process.hrtime.bigint() - start) / 1e6);
  }
  return stats(samples);
}

try {
  const client = await AgentClient.connect(socket, { retryMs: 10 });
  for (let i = 0; i < 20; i++) await execOnce(client); // warm-up
  const rows = [];
  rows.push(['Node spawn of `true` (anchor)', await time(nodeSpawn, 200)]);
  rows.push(['exec `true` over an open connection', await time(() => execOnce(client), 200)]);
  client.close();
  rows.push([
    'connect + hello + exec `true` + close (a fresh `envy exec`)',
    await time(async () => {
      const c = await AgentClient.connect(socket, { retryMs: 10 });
      await execOnce(c);
      c.close();
    }, 100),
  ]);
  const c = await AgentClient.connect(socket, { retryMs: 10 });
  const size = 256 * 1024 * 1024;
  const big = c.exec({ argv: ['head', '-c', String(size), '/dev/zero'], env });
  big.stderr.resume();
  const start = process.hrtime.bigint();
  let received = 0;
  big.stdout.on('data', (d) => (received += d.length));
  await big.exit;
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  c.close();

  console.log('| what | p50 ms | p95 ms |');
  console.log('|---|---:|---:|');
  for (const [name, s] of rows) console.log(`| ${name} | ${s.p50.toFixed(2)} | ${s.p95.toFixed(2)} |`);
  console.log(`\nstdout throughput: ${(received / 1024 / 1024 / seconds).toFixed(0)} MiB/s (${received} bytes in ${seconds.toFixed(2)} s)`);
  console.log('target: exec into a running VM within 50 ms of `envy exec` into a namespace env (the virtio hop adds 7–15 ms under TCG)');
} finally {
  agent.kill();
  rmSync(dir, { recursive: true, force: true });
}
