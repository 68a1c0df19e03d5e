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
 * The agent is started on demand (once per boot, or again if it died) through the control agent:
 * a root exec gives the port and a copy of the agent binary to the user (init keeps its own copy in
 * root's /run/envy), a user exec starts it in a session of its own, so it outlives that exec.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createHash } from 'node:crypto';
import { PassThrough } from 'node:stream';
import { EnvyError } from '../../errors.js';
import { writeFileAtomic } from '../../state/atomic.js';
import type { EnvironmentConfig, Identity } from '../types.js';
import { AgentClient } from './agent-client.js';
import { execInVm, runningVmState, vmPaths } from './channel.js';
import { SYNC_PORT_NAME } from './qemu.js';

const SYNC_AGENT = '/run/envy-sync/agent';
const PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** Run a short shell script in the guest through the control agent; its exit code and output. */
async function guestScript(id: string, script: string, identity: Identity | undefined): Promise<{ code: number; output: string }> {
  const state = runningVmState(id);
  if (!state) throw new EnvyError('RUNTIME', `the VM of ${id} is not running`);
  let output = '';
  const sink = new PassThrough();
  sink.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const stdin = new PassThrough();
  stdin.end();
  const config: EnvironmentConfig = { id, hostname: id, rootfs: { layers: [] }, mounts: [], network: 'none', resources: {}, ...(identity ? { user: identity } : {}) };
  const code = await execInVm(config, state, { argv: ['/bin/sh', '-c', script], env: { PATH }, cwd: '/', root: !identity, ...(identity ? { identity } : {}), tty: false }, { stdin, stdout: sink, stderr: sink });
  return { code, output: output.trim() };
}

/**
 * A connection to the VM's sync agent, starting the agent first when nobody answers on its port.
 * `identity`: the env user it runs as.
 */
export async function connectGuestSync(id: string, identity: Identity, log: (line: string) => void = () => undefined): Promise<AgentClient> {
  const state = runningVmState(id);
  if (!state) throw new EnvyError('RUNTIME', `the VM of ${id} is not running`, { hint: 'envy up starts it' });
  if (state.channel !== 'agent') {
    throw new EnvyError('RUNTIME', `the VM of ${id} runs without envy's guest agent, so its workspace cannot be synced`, { hint: 'build the agent (npm run build) and run envy up again' });
  }
  const socket = vmPaths(id).syncSocket;
  // qemu accepts at once whether or not the agent runs, so only a connect timing out says it does not.
  // The marker names the boot the agent was started in: on any other boot, waiting would be for nothing.
  const marker = join(dirname(socket), 'sync-agent.boot');
  const boot = `${state.pid}:${state.startTime}`;
  if (existsSync(marker) && readFileSync(marker, 'utf8') === boot) {
    try {
      return await AgentClient.connect(socket, { timeoutMs: 1500, retryMs: 100 });
    } catch {
      log('the sync agent in the guest does not answer; starting it again');
    }
  }
  const owner = `${identity.uid}:${identity.gid}`;
  const prepared = await guestScript(
    id,
    [
      'set -e',
      'port=',
      `for p in /sys/class/virtio-ports/*; do [ "$(cat "$p/name" 2>/dev/null)" = ${SYNC_PORT_NAME} ] && port=/dev/\${p##*/}; done`,
      `[ -n "$port" ] || { echo "no virtio-serial port named ${SYNC_PORT_NAME} (a VM booted by an older envy: envy down, then envy up)"; exit 1; }`,
      `chown ${owner} "$port"`,
      `mkdir -p /run/envy-sync && cp /run/envy/agent ${SYNC_AGENT}.new && chmod 0755 ${SYNC_AGENT}.new && mv -f ${SYNC_AGENT}.new ${SYNC_AGENT}`,
      'echo "$port"',
    ].join('\n'),
    undefined,
  );
  const port = prepared.output.split('\n').at(-1) ?? '';
  if (prepared.code !== 0 || !port.startsWith('/dev/')) {
    throw new EnvyError('RUNTIME', `cannot start the sync agent in the VM of ${id}: ${prepared.output.split('\n').at(-1) || `exit ${prepared.code}`}`);
  }
  // setsid: a session of its own, so nothing aimed at this exec's process group reaches it.
  const started = await guestScript(
    id,
    `command -v setsid >/dev/null 2>&1 && s=setsid || s=; $s ${SYNC_AGENT} --port '${port}' </dev/null >/dev/null 2>&1 &`,
    identity,
  );
  if (started.code !== 0) throw new EnvyError('RUNTIME', `cannot start the sync agent in the VM of ${id} (exit ${started.code}): ${started.output}`);
  const client = await AgentClient.connect(socket, { timeoutMs: 30_000, retryMs: 100 });
  writeFileAtomic(marker, boot);
  return client;
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
