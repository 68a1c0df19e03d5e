/**
 * The guest end of a VM's workspace sync: a second envy-agent on its own virtio-serial port
 * (`envy-sync`), running as the env user, to which the workspace sync process (`envy __sync ID`) holds
 * a connection for as long as the VM runs.
 *
 * Why a port and an agent of its own rather than one of the control agent's `envy.N` ports: the sync
 * holds its connection for the VM's whole life, so it would take one of the ports execs and shells
 * share for good, and its bulk copies would queue beside their keystrokes. The name is outside the
 * `envy.N` pattern, so the control agent (PID 1) leaves the port alone. Why as the env user: files it
 * writes belong to that user, as they do on the host, and what it may touch in the guest is what
 * that user may.
 *
 * The boot starts it (runtime.ts, as soon as the control agent answers) with one `serve` frame: the
 * control agent makes the workspace directory, hands it and the port to the user and runs its own
 * binary as that user in a session of its own. The sync process, started beside qemu, is already
 * knocking on the port by then. If the agent died later, the sync process starts it the same way.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createHash } from 'node:crypto';
import { EnvyError } from '../../errors.js';
import { writeFileAtomic } from '../../state/atomic.js';
import type { Identity } from '../types.js';
import { AgentClient } from './agent-client.js';
import { alive, connectAgent, readState, vmPaths, type VmState } from './channel.js';
import { SYNC_PORT_NAME } from './qemu.js';

/** How long the sync process waits for a VM that `up` is still preparing (a first disk takes a while). */
const BOOT_WAIT_MS = 10 * 60_000;

/** Names one boot of the VM: qemu's pid and start time. */
function bootOf(state: VmState): string {
  return `${state.pid}:${state.startTime}`;
}

/** Where the boot the sync agent was last started in is noted. */
function markerPath(id: string): string {
  return join(dirname(vmPaths(id).syncSocket), 'sync-agent.boot');
}

function startedOnBoot(id: string, state: VmState): boolean {
  const marker = markerPath(id);
  return existsSync(marker) && readFileSync(marker, 'utf8') === bootOf(state);
}

/**
 * Start the VM's sync agent through a connection to the control agent (`client`): one `serve`
 * frame, answered once the agent runs as `identity` on the port, with `dirs` (the workspace and the
 * other synced mounts) made and given to it: it could not make them at the top of the tree itself,
 * and its initial sync may run before the boot's provisioning does.
 */
export async function startGuestSyncAgent(client: AgentClient, id: string, state: VmState, identity: Pick<Identity, 'uid' | 'gid'>, dirs: string[]): Promise<void> {
  try {
    await client.serve({ uid: identity.uid, gid: identity.gid, port: SYNC_PORT_NAME, dirs });
  } catch (error) {
    const message = (error as Error).message;
    if ((error as { code?: string }).code === 'ENOENT' || /unknown frame type/.test(message)) {
      throw new EnvyError('RUNTIME', `cannot start the sync agent in the VM of ${id}: it was booted by an older envy (no port ${SYNC_PORT_NAME}, or an agent without serve)`, {
        hint: 'envy down, then envy up',
      });
    }
    throw new EnvyError('RUNTIME', `cannot start the sync agent in the VM of ${id}: ${message}`);
  }
  writeFileAtomic(markerPath(id), bootOf(state));
}

/** The VM's state once qemu runs (booting or ready); `wait`: while `up` prepares it. */
async function liveState(id: string, wait: boolean, deadline: number): Promise<VmState> {
  for (;;) {
    const state = readState(id);
    if (state && alive(state.pid, state.startTime)) return state;
    if (!wait || Date.now() > deadline) throw new EnvyError('RUNTIME', `the VM of ${id} is not running`, { hint: 'envy up starts it' });
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/**
 * A connection to the VM's sync agent. `up` starts the sync process beside qemu: while the VM
 * boots, this knocks on the port until the agent the boot starts answers. On a running VM whose
 * agent was not started on this boot, or no longer answers, it starts the agent itself.
 * `identity`: the env user it runs as; `dirs`: the guest directories it syncs.
 */
export async function connectGuestSync(id: string, identity: Identity, dirs: string[], log: (line: string) => void = () => undefined): Promise<AgentClient> {
  const socket = vmPaths(id).syncSocket;
  const deadline = Date.now() + BOOT_WAIT_MS;
  for (let seen = false; ; seen = true) {
    const state = await liveState(id, !seen, deadline);
    if (state.channel !== 'agent') {
      throw new EnvyError('RUNTIME', `the VM of ${id} runs without envy's guest agent, so its workspace cannot be synced`, { hint: 'build the agent (npm run build) and run envy up again' });
    }
    // qemu accepts at once whether or not the agent runs, so only a connect timing out says it does not.
    const started = startedOnBoot(id, state);
    if (started || !state.ready) {
      try {
        return await AgentClient.connect(socket, { timeoutMs: started ? 1500 : 1000, retryMs: 50 });
      } catch {
        if (!started) continue; // still booting, or the boot's start failed: look again
        log('the sync agent in the guest does not answer; starting it again');
      }
    }
    const control = await connectAgent(id, state, { purpose: `start the sync agent in VM ${id}` });
    try {
      await startGuestSyncAgent(control, id, state, identity, dirs);
    } finally {
      control.close();
    }
    return await AgentClient.connect(socket, { timeoutMs: 30_000, retryMs: 50 });
  }
}

/**
 * Names the VM disk the guest's copy lives on. A two-way sync's agreed state is only true of that
 * disk: on a fresh disk (a new image, `down --rm`) it would read as "deleted in the guest" and
 * delete the host's files. disk.json is written once per disk, when it is made.
 */
export function guestDiskIdentity(id: string): string {
  const meta = vmPaths(id).diskMeta;
  const stats = statSync(meta);
  return createHash('sha256').update(`${readFileSync(meta, 'utf8')}\0${stats.mtimeMs}\0${stats.ino}`).digest('hex').slice(0, 16);
}
