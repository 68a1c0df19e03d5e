// One agent, several hosts at once (as several envy processes are, each on its own virtio-serial
// port in a VM; here each on its own connection to the agent's unix socket): every host has its own
// channels, and one leaving or breaking the protocol touches only its own processes.
import { connect as connectSocket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../../src/runtime/vm/agent-client.js';
import { AgentTransport } from '../../../src/runtime/vm/agent-transport.js';
import { collectStream, startAgent, type RunningAgent } from './agent-harness.js';

let agent: RunningAgent;
const ENV = { PATH: '/usr/bin:/bin' };

beforeAll(async () => {
  agent = await startAgent();
});
afterAll(async () => {
  await agent?.stop();
});

async function run(client: AgentClient, script: string, input = ''): Promise<{ code: number; stdout: string }> {
  const exec = client.exec({ argv: ['sh', '-c', script], env: ENV });
  const stdout = collectStream(exec.stdout);
  exec.stderr.resume();
  exec.stdin.end(input);
  return { code: await exec.exit, stdout: await stdout };
}

const connect = (): Promise<AgentClient> => AgentClient.connect(agent.socket, { timeoutMs: 5000, retryMs: 20 });

describe('agent with several hosts', () => {
  it('serves several hosts at once, each with its own channel numbers', async () => {
    const clients = await Promise.all([connect(), connect(), connect()]);
    expect(clients.map((c) => c.hello.pid)).toEqual([agent.process.pid, agent.process.pid, agent.process.pid]);
    // Each client's channel numbers start at 1: the agent must keep the hosts apart.
    const results = await Promise.all(
      clients.flatMap((client, c) => Array.from({ length: 5 }, (_, i) => run(client, `head -c ${50_000 * (c + 1) + i} /dev/zero | wc -c; exit ${c * 10 + i}`))),
    );
    results.forEach((r, n) => {
      const c = Math.floor(n / 5);
      const i = n % 5;
      expect(r).toEqual({ code: c * 10 + i, stdout: `${50_000 * (c + 1) + i}\n` });
    });
    const transport = new AgentTransport(clients[1]!, join(agent.dir, 'second-host'));
    await transport.init();
    await transport.writeFile('f', Buffer.alloc(3 << 20, 7), { mode: 0o644, mtimeMs: Date.now() });
    expect((await transport.readFile('f')).equals(Buffer.alloc(3 << 20, 7))).toBe(true);
    for (const client of clients) client.close();
  });

  it('a client that leaves takes only its own processes with it', async () => {
    const leaving = await connect();
    const staying = await connect();
    const pidOf = async (client: AgentClient): Promise<{ pid: number; exit: Promise<number> }> => {
      const exec = client.exec({ argv: ['sh', '-c', 'echo $$; exec sleep 300'], env: ENV });
      exec.stderr.resume();
      const pid = Number((await new Promise<Buffer>((resolve) => exec.stdout.once('data', resolve))).toString().trim());
      return { pid, exit: exec.exit };
    };
    const doomed = await pidOf(leaving);
    const kept = await pidOf(staying);
    leaving.close();
    await expect(doomed.exit).rejects.toThrow(/closed/);
    const alive = (pid: number): boolean => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    const deadline = Date.now() + 5000;
    while (alive(doomed.pid) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(alive(doomed.pid)).toBe(false);
    expect(alive(kept.pid)).toBe(true);
    expect((await run(staying, 'echo still here')).stdout).toBe('still here\n');
    process.kill(kept.pid, 'SIGKILL');
    expect(await kept.exit).toBe(137);
    staying.close();
  });

  it('cuts off a host that breaks the protocol, and only that host', async () => {
    const staying = await connect();
    const sleeper = staying.exec({ argv: ['sleep', '300'], env: ENV });
    sleeper.stderr.resume();
    sleeper.stdout.resume();
    await sleeper.started;
    // A frame of an unknown type: the agent answers with a protocol error and closes that connection.
    const raw = connectSocket(agent.socket);
    const answer = new Promise<Buffer>((resolve) => {
      const chunks: Buffer[] = [];
      raw.on('data', (chunk: Buffer) => chunks.push(chunk));
      raw.on('close', () => resolve(Buffer.concat(chunks)));
    });
    raw.write(Buffer.from([0x7e, 0, 0, 0, 1, 0, 0, 0, 0]));
    const bytes = await answer;
    expect(bytes[0]).toBe(0x8f);
    expect(bytes.subarray(13).toString()).toMatch(/protocol error: unknown frame type 0x7e/);
    expect((await run(staying, 'echo unaffected')).stdout).toBe('unaffected\n');
    sleeper.signal('SIGTERM');
    expect(await sleeper.exit).toBe(143);
    staying.close();
  });
});
