// The multiplexer in front of the agent: several clients (as several envy processes would be) share
// the agent's single connection, each with its own channels, and one leaving kills only its processes.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../../src/runtime/vm/agent-client.js';
import { AgentMux } from '../../../src/runtime/vm/agent-mux.js';
import { AgentTransport } from '../../../src/runtime/vm/agent-transport.js';
import { collectStream, startAgent, type RunningAgent } from './agent-harness.js';

let agent: RunningAgent;
let mux: AgentMux;
const ENV = { PATH: '/usr/bin:/bin' };

beforeAll(async () => {
  agent = await startAgent();
  mux = await AgentMux.start(agent.socket, join(agent.dir, 'mux.sock'), { timeoutMs: 20_000, retryMs: 20 });
});
afterAll(async () => {
  mux?.close();
  await agent?.stop();
});

async function run(client: AgentClient, script: string, input = ''): Promise<{ code: number; stdout: string }> {
  const exec = client.exec({ argv: ['sh', '-c', script], env: ENV });
  const stdout = collectStream(exec.stdout);
  exec.stderr.resume();
  exec.stdin.end(input);
  return { code: await exec.exit, stdout: await stdout };
}

const connect = (): Promise<AgentClient> => AgentClient.connect(mux.path, { timeoutMs: 5000, retryMs: 20 });

describe('agent multiplexer', () => {
  it('lets several clients run at once over the one agent connection', async () => {
    const clients = await Promise.all([connect(), connect(), connect()]);
    expect(clients.map((c) => c.hello.pid)).toEqual([agent.process.pid, agent.process.pid, agent.process.pid]);
    // Each client's channel numbers start at 1: the mux must keep them apart.
    const results = await Promise.all(
      clients.flatMap((client, c) => Array.from({ length: 5 }, (_, i) => run(client, `head -c ${50_000 * (c + 1) + i} /dev/zero | wc -c; exit ${c * 10 + i}`))),
    );
    results.forEach((r, n) => {
      const c = Math.floor(n / 5);
      const i = n % 5;
      expect(r).toEqual({ code: c * 10 + i, stdout: `${50_000 * (c + 1) + i}\n` });
    });
    const transport = new AgentTransport(clients[1]!, join(agent.dir, 'via-mux'));
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

  it('disconnects its clients when the agent goes away', async () => {
    const client = await connect();
    const lost = new Promise<Error>((resolve) => client.onClose(resolve));
    await agent.stop();
    expect((await mux.closed).message).toMatch(/closed/);
    expect((await lost).message).toMatch(/closed/);
  });
});
