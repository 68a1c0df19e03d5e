// execAttached on a real terminal: a Node process whose stdio is a pty (made by pty-driver.py) runs a
// command in the agent; the pty is detected, raw mode lets keystrokes through, a resize of the local
// terminal (SIGWINCH) reaches the remote one, and the remote exit status becomes the local one.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { build } from 'esbuild';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type RunningAgent } from './agent-harness.js';

let agent: RunningAgent;
let dir: string;
let driver: string;

beforeAll(async () => {
  agent = await startAgent();
  dir = mkdtempSync(join(tmpdir(), 'envy-attach-test-'));
  driver = join(dir, 'attach.mjs');
  const entry = join(dir, 'attach.ts');
  writeFileSync(
    entry,
    [
      `import { AgentClient, execAttached } from ${JSON.stringify(join(import.meta.dirname, '../../../src/runtime/vm/agent-client.ts'))};`,
      `const [socket, ...argv] = process.argv.slice(2);`,
      `const client = await AgentClient.connect(socket, { timeoutMs: 10000, retryMs: 20 });`,
      `const code = await execAttached(client, { argv, env: { PATH: '/usr/bin:/bin', TERM: 'xterm' } });`,
      `client.close();`,
      `process.exit(code);`,
    ].join('\n'),
  );
  await build({ entryPoints: [entry], outfile: driver, bundle: true, platform: 'node', format: 'esm', target: 'node20', logLevel: 'error' });
});
afterAll(async () => {
  await agent?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('execAttached on a terminal', () => {
  it('gives the command a pty of the local size, follows a resize, passes keys and the exit status', () => {
    const script = 'tty; stty size; echo READY; read line; stty size; echo "got:$line"; exit 3';
    const result = spawnSync(
      'python3',
      [join(import.meta.dirname, 'pty-driver.py'), 'READY', 'typed\r', process.execPath, driver, agent.socket, 'sh', '-c', script],
      { encoding: 'utf8', timeout: 60_000 },
    );
    // libuv keeps ONLCR in raw mode, so the remote CRLF arrives as CR CR LF: harmless on a terminal.
    const lines = result.stdout.split(/\r*\n/);
    expect(result.status, result.stdout + result.stderr).toBe(3);
    expect(lines[0]).toMatch(/^\/dev\/pts\/\d+$/);
    expect(lines[1]).toBe('30 100');
    expect(lines).toContain('50 132');
    expect(lines).toContain('got:typed');
  });
});
