// Shared benchmark helpers: hyperfine when present (it warms up and reports medians), a Node loop otherwise.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export function hasProgram(name) {
  return spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;
}

/**
 * Time shell commands; returns [{ name, medianMs, meanMs, stddevMs }].
 * `commands` is [{ name, command, cwd? }]. All run in the same hyperfine invocation so they share conditions.
 */
export function timeCommands(commands, { runs = 20, warmup = 3, cwd } = {}) {
  if (hasProgram('hyperfine')) {
    const dir = mkdtempSync(join(tmpdir(), 'envy-bench-'));
    try {
      const out = join(dir, 'result.json');
      const args = ['--runs', String(runs), '--warmup', String(warmup), '-N', '--export-json', out, '--style', 'none'];
      for (const c of commands) args.push('-n', c.name, c.command);
      execFileSync('hyperfine', args, { stdio: ['ignore', 'ignore', 'inherit'], cwd });
      const { results } = JSON.parse(readFileSync(out, 'utf8'));
      // CPU time (user + system, children included) moves far less than wall time on a loaded machine.
      return results.map((r, i) => ({ name: commands[i].name, medianMs: r.median * 1000, meanMs: r.mean * 1000, stddevMs: (r.stddev ?? 0) * 1000, cpuMs: (r.user + r.system) * 1000 }));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  return commands.map((c) => {
    const samples = [];
    for (let i = 0; i < warmup + runs; i++) {
      const start = process.hrtime.bigint();
      spawnSync('sh', ['-c', c.command], { stdio: 'ignore', cwd });
      if (i >= warmup) samples.push(Number(process.hrtime.bigint() - start) / 1e6);
    }
    samples.sort((a, b) => a - b);
    const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
    return { name: c.name, medianMs: samples[Math.floor(samples.length / 2)], meanMs: mean, stddevMs: 0 };
  });
}

/**
 * Print a Markdown table of results with a ratio column against `baseline` (a result name), and the
 * mean CPU time and its ratio when hyperfine measured it (the figures to read under load).
 */
export function printTable(results, baseline) {
  const base = results.find((r) => r.name === baseline);
  const cpu = results.every((r) => r.cpuMs !== undefined);
  console.log(`| command | median ms | mean ± σ ms | × ${baseline} |${cpu ? ' CPU ms | CPU × |' : ''}`);
  console.log(`|---|---:|---:|---:|${cpu ? '---:|---:|' : ''}`);
  for (const r of results) {
    const ratio = base ? (r.medianMs / base.medianMs).toFixed(2) : '–';
    const cpuColumns = cpu ? ` ${r.cpuMs.toFixed(1)} | ${base ? (r.cpuMs / base.cpuMs).toFixed(2) : '–'} |` : '';
    console.log(`| ${r.name} | ${r.medianMs.toFixed(1)} | ${r.meanMs.toFixed(1)} ± ${r.stddevMs.toFixed(1)} | ${ratio} |${cpuColumns}`);
  }
}
