/**
 * Runs the real guest agent binary on the host as the unprivileged test user, listening on a unix
 * socket, so the client and the sync transport are exercised without a VM.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { AgentClient } from '../../../src/runtime/vm/agent-client.js';
import { asUserArgv, envyRoot, userTempDir } from '../harness.js';

export const hostArch = process.arch === 'arm64' ? 'aarch64' : 'x86_64';

export function agentBinary(arch: string = hostArch): string {
  return join(envyRoot(), 'dist', `envy-agent-${arch}`);
}

export interface RunningAgent {
  dir: string;
  socket: string;
  process: ChildProcess;
  log: () => string;
  connect: () => Promise<AgentClient>;
  stop: () => Promise<void>;
}

/** Start the agent (optionally through an emulator such as qemu-aarch64-static) on a fresh socket. */
export async function startAgent(options: { arch?: string; emulator?: string } = {}): Promise<RunningAgent> {
  const binary = agentBinary(options.arch);
  if (!existsSync(binary)) throw new Error(`${binary} was not built (see the build output)`);
  const temp = userTempDir('envy-agent-test-');
  const socket = join(temp.path, 'agent.sock');
  const command = [...asUserArgv(), ...(options.emulator ? [options.emulator] : []), binary, '--listen', `unix:${socket}`];
  const child = spawn(command[0]!, command.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  return {
    dir: temp.path,
    socket,
    process: child,
    log: () => stderr,
    connect: () => AgentClient.connect(socket, { timeoutMs: 20_000, retryMs: 20 }),
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }
      temp.remove();
    },
  };
}

export async function collectStream(stream: NodeJS.ReadableStream): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString();
}
