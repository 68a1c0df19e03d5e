/**
 * A real server as a service: Redis from Debian bookworm (packages.apt), started by `envy up` under
 * the supervisor, ready once `redis-cli ping` answers, reachable from the host on 127.0.0.1 (network:
 * host; RESP spoken over a plain socket here) and from another process in the environment, and gone
 * after `envy down`.
 */
import { createConnection, createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { debianHome, envy, runAsUser, userTempDir, type RunResult } from '../harness.js';

let project: { path: string; remove: () => void };
let home: { path: string; remove: () => void };
let port: number;

const run = (args: string[], timeoutMs = 120_000): Promise<RunResult> =>
  envy(args, { cwd: project.path, env: { ENVY_HOME: home.path, CI: 'true' }, timeoutMs });

function ok(result: RunResult): RunResult {
  if (result.code !== 0) throw new Error(`exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`);
  return result;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

/** Send RESP commands on one connection; resolve with the raw replies once `replies` lines arrived. */
function resp(commands: string[][], replies: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    let data = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no reply from redis on ${port}: ${JSON.stringify(data)}`));
    }, 5_000);
    socket.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    socket.on('data', (chunk: Buffer) => {
      data += chunk.toString();
      if (data.split('\r\n').length - 1 >= replies) {
        clearTimeout(timer);
        socket.end();
        resolve(data);
      }
    });
    socket.write(commands.map((argv) => `*${argv.length}\r\n${argv.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`).join(''));
  });
}

describe('Redis from Debian as a service', () => {
  beforeAll(async () => {
    project = userTempDir('envy-redis-');
    // The run's shared home: the Debian base is bootstrapped once per run (harness.ts, debianHome).
    home = { path: debianHome(), remove: () => {} };
    port = await freePort();
    const spec = [
      'name: redis',
      'base: {debian: bookworm}',
      'packages:',
      '  apt: [redis-server]',
      'network: host',
      'services:',
      '  redis:',
      `    run: redis-server --port ${port} --bind 127.0.0.1 --save '' --appendonly no`,
      `    ready: {run: "redis-cli -p ${port} ping | grep -qx PONG", interval: 200ms, timeout: 30s}`,
      '',
    ].join('\n');
    await runAsUser('sh', ['-c', 'cat > "$1"', 'sh', join(project.path, 'env.yaml')], { input: spec });
  });
  afterAll(async () => {
    await run(['down', '--rm']);
    project.remove();
  });

  test('up starts it and waits until it answers; the host and envy exec reach it; down stops it', async () => {
    const up = ok(await run(['up'], 600_000));
    expect(up.stdout).toContain('services: redis ready');
    expect(await resp([['PING']], 1)).toBe('+PONG\r\n');
    expect(await resp([['SET', 'greeting', 'from the host'], ['GET', 'greeting']], 3)).toBe('+OK\r\n$13\r\nfrom the host\r\n');
    expect(ok(await run(['exec', '--', 'redis-cli', '-p', String(port), 'ping'])).stdout).toBe('PONG\n');
    expect(ok(await run(['exec', '--', 'redis-cli', '-p', String(port), 'get', 'greeting'])).stdout).toBe('from the host\n');
    expect(ok(await run(['logs', 'redis'])).stdout).toMatch(/Ready to accept connections/);
    const status = JSON.parse(ok(await run(['status', '--json'])).stdout) as { environments: { services: { name: string; state: string }[] }[] };
    expect(status.environments[0]!.services).toMatchObject([{ name: 'redis', state: 'ready' }]);

    ok(await run(['down']));
    await expect(resp([['PING']], 1)).rejects.toThrow(/ECONNREFUSED/);
  }, 900_000);
});
