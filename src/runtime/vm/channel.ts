/**
 * What talking to a running VM needs, and no more: its state file and paths, and running a process
 * through its channel. Kept apart from runtime.ts (qemu, disks, initramfs) so that `envy exec` into a
 * running VM (src/cli/exec-fast.ts) loads only this and the agent client.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Arch } from '../../config/types.js';
import { EnvyError } from '../../errors.js';
import { environmentPaths } from '../../state/environments.js';
import { acquireLock, tryAcquireLock, type Lock } from '../../state/lock.js';
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
  /** The socket of the agent's first port (envy.0); port N's is agent-N.sock beside it. */
  agentSocket: string;
  /** How many ports the agent serves (absent: one, a VM booted by an older envy). */
  agentPorts?: number;
  /** What answers on the port: envy-agent, or the fallback shell of envy-init (no agent built). */
  channel: 'agent' | 'shell';
  /** Milliseconds from spawning qemu: the agent answered, the workspace was copied, provisioning done (bench/vm). */
  bootMs?: { answered: number; copied: number; ready: number; syncAgent?: number };
  /** Whether this boot resumed a saved boot state, saved one, or booted without (snapshot.ts), and what that took in ms. */
  bootState?: { use: 'restored' | 'saved' | 'off'; ms?: number };
}

/**
 * The agent's ports per VM. qemu's socket chardev takes one client per port, and each envy process
 * (an exec, a shell, the sync) holds one for as long as it talks to the guest: this many can at once,
 * more wait for a free one. Each port costs the guest ~0.5 MiB of receive buffers.
 */
export const AGENT_PORTS = 8;

/** The host-side socket of the agent's port `index` (virtio-serial port envy.INDEX). */
export function agentSocketAt(firstSocket: string, index: number): string {
  return index === 0 ? firstSocket : join(dirname(firstSocket), `agent-${index}.sock`);
}

export interface VmPaths {
  dir: string;
  disk: string;
  diskMeta: string;
  state: string;
  initrd: string;
  agentSocket: string;
  /** qemu's end of the sync agent's port (envy-sync). */
  syncSocket: string;
  /** qemu's end of envy-init's boot gate (envy-boot, snapshot.ts). */
  bootSocket: string;
  qmpSocket: string;
  qemuPid: string;
  qemuLog: string;
  serialLog: string;
  channelLock: string;
  startLock: string;
  /** The lock an envy process holds while it uses port `index`. */
  portLock: (index: number) => string;
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
    bootSocket: join(env.run, 'boot.sock'),
    qmpSocket: join(env.run, 'qmp.sock'),
    qemuPid: join(env.run, 'qemu.pid'),
    qemuLog: join(env.logs, 'qemu.log'),
    serialLog: join(env.logs, 'vm-console.log'),
    channelLock: join(env.run, 'channel.lock'),
    startLock: join(env.run, 'start.lock'),
    portLock: (index) => join(env.run, `port-${index}.lock`),
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

export interface AgentConnectOptions {
  /** Give up when no port frees up within this long (default: a day, like a lock wait). */
  waitMs?: number;
  /** Said once when every port is busy and we wait. */
  onWait?: (text: string) => void;
  /** What the lock files say this process is doing. */
  purpose?: string;
}

/**
 * A connection to the agent of a running VM on a port nobody else uses: the first free one of the
 * agent's ports (a lock file per port, taken without waiting), so any number of envy processes reach
 * one guest at once. The port is free again when the client closes or this process dies.
 */
export async function connectAgent(id: string, state: VmState, options: AgentConnectOptions = {}): Promise<AgentClient> {
  const paths = vmPaths(id);
  const ports = state.agentPorts ?? 1;
  const deadline = Date.now() + (options.waitMs ?? 24 * 3600_000);
  let said = false;
  for (;;) {
    for (let index = 0; index < ports; index++) {
      const lock: Lock | undefined = tryAcquireLock(paths.portLock(index), options.purpose ?? `talk to VM ${id}`);
      if (!lock) continue;
      try {
        const client = await AgentClient.connect(agentSocketAt(state.agentSocket, index), { timeoutMs: 10_000, retryMs: 20 });
        client.onClose(() => lock.release());
        return client;
      } catch (error) {
        lock.release();
        throw error;
      }
    }
    if (Date.now() >= deadline) {
      throw new EnvyError('BUSY', `all ${ports} agent ports of the VM ${id} are in use`, { hint: 'end an `envy shell` or `envy exec` into it, or try again' });
    }
    if (!said) {
      said = true;
      options.onWait?.(`all ${ports} agent ports of the VM ${id} are in use: waiting for one`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Run a process in the running VM through its channel; resolves to its exit code (128+n for signal n). */
export async function execInVm(config: EnvironmentConfig, state: VmState, spec: ProcessSpec, stdio: Stdio): Promise<number> {
  if (state.channel === 'agent') {
    const client = await connectAgent(config.id, state, { purpose: `exec in VM ${config.id}`, onWait: (text) => stdio.stderr.write(`envy: ${text}\n`) });
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
  // The fallback shell reads one port, one command at a time.
  const lock = await acquireLock(vmPaths(config.id).channelLock, { purpose: `exec in VM ${config.id}`, timeoutMs: 24 * 3600_000 });
  try {
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
