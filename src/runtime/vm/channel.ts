/**
 * What talking to a running VM needs, and no more: its state file and paths, and running a process
 * through its channel. Kept apart from runtime.ts (qemu, disks, initramfs) so that `envy exec` into a
 * running VM (src/cli/exec-fast.ts) loads only this and the agent client.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Arch } from '../../config/types.js';
import { EnvyError } from '../../errors.js';
import { environmentPaths } from '../../state/environments.js';
import { acquireLock } from '../../state/lock.js';
import { isInitAlive } from '../namespace/state.js';
import type { EnvironmentConfig, ProcessSpec } from '../types.js';
import { AgentClient, AgentErrnoError, execAttached } from './agent-client.js';
import type { Accel } from './qemu.js';
import { commandLine, ShellChannel } from './shell-channel.js';

/** The state file of a running VM (run/vm.json). */
export interface VmState {
  pid: number;
  startTime: string;
  /** The envy that booted it, until the guest answered. */
  owner?: { pid: number; startTime: string };
  ready: boolean;
  arch: Arch;
  kernel: string;
  accel: Accel;
  imageKey: string;
  startedAt: string;
  agentSocket: string;
  /** What answers on the port: envy-agent, or the fallback shell of envy-init (no agent built). */
  channel: 'agent' | 'shell';
}

export interface VmPaths {
  dir: string;
  disk: string;
  diskMeta: string;
  state: string;
  initrd: string;
  agentSocket: string;
  /** qemu's end of the sync agent's port (envy.1). */
  syncSocket: string;
  qmpSocket: string;
  qemuPid: string;
  qemuLog: string;
  serialLog: string;
  channelLock: string;
  startLock: string;
}

export function vmPaths(id: string): VmPaths {
  const env = environmentPaths(id);
  const dir = join(env.root, 'vm');
  return {
    dir,
    disk: join(dir, 'disk.qcow2'),
    diskMeta: join(dir, 'disk.json'),
    state: join(env.run, 'vm.json'),
    initrd: join(env.run, 'initramfs.cpio'),
    agentSocket: join(env.run, 'agent.sock'),
    syncSocket: join(env.run, 'sync.sock'),
    qmpSocket: join(env.run, 'qmp.sock'),
    qemuPid: join(env.run, 'qemu.pid'),
    qemuLog: join(env.logs, 'qemu.log'),
    serialLog: join(env.logs, 'vm-console.log'),
    channelLock: join(env.run, 'channel.lock'),
    startLock: join(env.run, 'start.lock'),
  };
}

export function readState(id: string): VmState | undefined {
  try {
    return JSON.parse(readFileSync(vmPaths(id).state, 'utf8')) as VmState;
  } catch {
    return undefined;
  }
}

/** This very process (pid reuse aside) and not a zombie: a qemu that exited under its spawning envy stays one until that envy exits. */
export function alive(pid: number, startTime: string): boolean {
  return isInitAlive({ pid, startTime });
}

/** The state of the environment's VM when it runs and its guest answered, else undefined. */
export function runningVmState(id: string): VmState | undefined {
  const state = readState(id);
  return state && state.ready && alive(state.pid, state.startTime) ? state : undefined;
}

type Stdio = { stdin: NodeJS.ReadableStream; stdout: NodeJS.WritableStream; stderr: NodeJS.WritableStream };

/** Run a process in the running VM through its channel; resolves to its exit code (128+n for signal n). */
export async function execInVm(config: EnvironmentConfig, state: VmState, spec: ProcessSpec, stdio: Stdio): Promise<number> {
  const lock = await acquireLock(vmPaths(config.id).channelLock, { purpose: `exec in VM ${config.id}`, timeoutMs: 24 * 3600_000 });
  try {
    if (state.channel === 'agent') {
      const client = await AgentClient.connect(state.agentSocket, { timeoutMs: 10_000, retryMs: 20 });
      try {
        const user = spec.root ? { uid: 0, gid: 0 } : { uid: spec.identity?.uid ?? config.user?.uid ?? 0, gid: spec.identity?.gid ?? config.user?.gid ?? 0 };
        try {
          return await execAttached(client, { argv: spec.argv, env: spec.env, cwd: spec.cwd, ...user, tty: spec.tty }, stdio as Parameters<typeof execAttached>[2]);
        } catch (error) {
          // The process could not start: the same codes and one-line message as the namespace runtime.
          if (!(error instanceof AgentErrnoError)) throw error;
          stdio.stderr.write(`envy: ${error.message}\n`);
          return error.code === 'ENOENT' && !/working directory/.test(error.message) ? 127 : 126;
        }
      } finally {
        client.close();
      }
    }
    const shell = await ShellChannel.connect(state.agentSocket, 5000);
    try {
      const code = await shell.run(commandLine(spec), (text) => stdio.stdout.write(text));
      if (code === undefined) throw new EnvyError('RUNTIME', `the VM ${config.id} closed the channel while ${spec.argv[0]} ran`);
      return code;
    } finally {
      shell.close();
    }
  } finally {
    lock.release();
  }
}
