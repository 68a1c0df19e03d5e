// The aarch64 agent (a cross build) is a real arm64 binary: run it under qemu-user on this host and
// drive it through the same client, so a broken cross build fails here rather than in an arm64 guest.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentClient } from '../../../src/runtime/vm/agent-client.js';
import { AgentTransport } from '../../../src/runtime/vm/agent-transport.js';
import { collectStream, hostArch, startAgent, type RunningAgent } from './agent-harness.js';

const other = hostArch === 'x86_64' ? 'aarch64' : 'x86_64';
const emulator = `/usr/bin/qemu-${other}-static`;
let agent: RunningAgent;
let client: AgentClient;

beforeAll(async () => {
  agent = await startAgent({ arch: other, emulator });
  client = await agent.connect();
}, 60_000);
afterAll(async () => {
  client?.close();
  await agent?.stop();
});

describe(`the ${other} guest agent under ${emulator}`, () => {
  it('answers as that architecture and runs commands with exit codes and signals', async () => {
    expect(client.hello.arch).toBe(other);
    const exec = client.exec({ argv: ['sh', '-c', 'cat; exit 42'], env: { PATH: '/usr/bin:/bin' } });
    const out = collectStream(exec.stdout);
    exec.stderr.resume();
    exec.stdin.end('through the emulated agent');
    expect(await exec.exit).toBe(42);
    expect(await out).toBe('through the emulated agent');
    const killed = client.exec({ argv: ['sh', '-c', 'kill -KILL $$'], env: { PATH: '/usr/bin:/bin' } });
    killed.stdout.resume();
    killed.stderr.resume();
    expect(await killed.exit).toBe(137);
  });

  it('hashes and writes files for sync', async () => {
    const transport = new AgentTransport(client, `${agent.dir}/tree`);
    await transport.init();
    await transport.writeFile('f', Buffer.from('abc'), { mode: 0o640, mtimeMs: 1_700_000_000_000 });
    expect(await transport.hash('f')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    expect(await transport.stat('f')).toMatchObject({ type: 'file', mode: 0o640, size: 3, mtimeMs: 1_700_000_000_000 });
  });
});
