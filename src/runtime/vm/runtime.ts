/**
 * The VM runtime: an environment is a qemu process booting the image's own kernel on an ext4
 * copy of the image (a per-environment qcow2 overlay over the cached disk, so down/up keeps the
 * writable state and `down --rm` drops it), reached through the agent's virtio-serial port.
 *
 * qemu runs detached, like a namespace environment's init: it outlives the `envy up` that started
 * it. Until the guest answers, the state file names that envy as the VM's owner; a VM whose owner
 * died before it was ready (envy killed mid-boot) is killed by the next look at it, so an
 * interrupted boot leaves no orphan. SIGINT/SIGTERM during the boot kill it at once.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EnvyError } from '../../errors.js';
import { run } from '../../exec.js';
import type { ImageRecord, LayerStore } from '../../image/store.js';
import { packageRoot } from '../../package-root.js';
import type { Arch, PortSpec } from '../../config/types.js';
import { writeFileAtomic } from '../../state/atomic.js';
import { environmentPaths, listRecords } from '../../state/environments.js';
import { acquireLock, processStartTime } from '../../state/lock.js';
import { stateDir } from '../../state/paths.js';
import type { EnvironmentConfig, Identity, ProcessSpec, Runtime, RuntimeStatus } from '../types.js';
import { AgentClient } from './agent-client.js';
import { AGENT_PORTS, agentSocketAt, alive, connectAgent, execInVm, readState, vmPaths, type VmState } from './channel.js';
import { ShellChannel } from './shell-channel.js';
import { startGuestSyncAgent } from './guest-sync.js';
import { buildInitramfs } from './initramfs.js';
import { withoutNetModules } from './kernel.js';
import { prepareVmImage, type VmImage } from './image.js';
import { BOOT_PORT_NAME, chooseAccel, kvmBrokenMarker, qemuArgs, qemuBinary, type Accel, type QemuPlan } from './qemu.js';
import { BootGate, bootStateKey, bootStatePath, bootStateSupported, incomingArgs, Qmp, saveBootState, waitResumed, type BootStateUse } from './snapshot.js';
import { ninepModules, ninepShares, shareSetupLines } from './shares.js';
import { requireProgram } from './tools.js';

export { vmPaths, type VmPaths, type VmState } from './channel.js';

/** What booting needs beyond the EnvironmentConfig: the built image and the backend settings. */
export interface VmBoot {
  image: ImageRecord;
  store: LayerStore;
  identity: Identity;
  arch: Arch;
  /** Bytes. */
  memory: number;
  cpus: number;
  ports: PortSpec[];
}

export interface VmRuntimeOptions {
  /** Progress lines (preparing the disk, why TCG). Default: stderr. */
  message?: (text: string) => void;
  /** Where a process's output goes (default: this process's stdout and stderr; stdin is attached too). */
  stdio?: { stdin: NodeJS.ReadableStream; stdout: NodeJS.WritableStream; stderr: NodeJS.WritableStream };
}

/** Image keys the environments' VM disks are backed by. */
export function vmBackingKeys(): Set<string> {
  const keys = new Set<string>();
  for (const record of listRecords()) {
    try {
      const meta = JSON.parse(readFileSync(vmPaths(record.id).diskMeta, 'utf8')) as { imageKey?: string };
      if (meta.imageKey) keys.add(meta.imageKey);
    } catch {
      // no VM disk
    }
  }
  return keys;
}

/** Where provision() leaves the digest of what it set up, on the guest's disk. */
const PROVISIONED_DIR = '/var/lib/envy';
const BOOT_TIMEOUT_MS: Record<Accel, number> = { kvm: 60_000, tcg: 240_000 };
const KILL_WAIT_MS = 5000;
/** What qemu prints when /dev/kvm opens but cannot run the guest (nested or software KVM). */
const KVM_FAILURE = /KVM internal error|failed to set MSR|kvm run failed/i;
/** sun_path holds 108 bytes with the terminating NUL. */
const MAX_SOCKET_PATH = 107;
const POLL_MS = 50;

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
  }
}

async function waitGone(pid: number, startTime: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (alive(pid, startTime)) {
    if (Date.now() >= deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  return true;
}

async function kill(pid: number, startTime: string): Promise<void> {
  signal(pid, 'SIGTERM');
  if (!(await waitGone(pid, startTime, KILL_WAIT_MS))) {
    signal(pid, 'SIGKILL');
    await waitGone(pid, startTime, KILL_WAIT_MS);
  }
}

function tail(path: string, lines = 15): string[] {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-lines);
  } catch {
    return [];
  }
}

/** dist/envy-init-ARCH and, once built, dist/envy-agent-ARCH. */
function guestBinaries(arch: Arch): { init: string; agent?: string } {
  const dist = join(packageRoot(), 'dist');
  const init = join(dist, `envy-init-${arch}`);
  if (!existsSync(init)) {
    throw new EnvyError('HOST', `${init} is missing: envy could not build the ${arch} VM init`, {
      hint: arch === 'x86_64' ? 'install gcc and libc6-dev, then npm run build' : 'install gcc-aarch64-linux-gnu and libc6-dev-arm64-cross, then npm run build',
    });
  }
  const agent = join(dist, `envy-agent-${arch}`);
  return existsSync(agent) && process.env.ENVY_VM_NO_AGENT !== '1' ? { init, agent } : { init };
}

export class VmRuntime implements Runtime {
  readonly backend = 'vm' as const;
  private boot: VmBoot | undefined;

  constructor(private readonly options: VmRuntimeOptions = {}) {}

  /** The image and settings the next start() boots. */
  useImage(boot: VmBoot): void {
    this.boot = boot;
  }

  private message(text: string): void {
    (this.options.message ?? ((line) => process.stderr.write(`envy: ${line}\n`)))(text);
  }

  async start(config: EnvironmentConfig): Promise<RuntimeStatus> {
    const current = await this.status(config);
    if (current.state === 'running') return current;
    const paths = vmPaths(config.id);
    mkdirSync(environmentPaths(config.id).run, { recursive: true });
    mkdirSync(environmentPaths(config.id).logs, { recursive: true });
    const lock = await acquireLock(paths.startLock, { purpose: `start VM ${config.id}`, timeoutMs: 10 * 60_000 });
    try {
      const again = await this.status(config);
      if (again.state === 'running') return again;
      const boot = this.boot;
      if (!boot) throw new EnvyError('INTERNAL', `VM ${config.id}: start() without an image (useImage)`);
      const image = await prepareVmImage(boot.image, boot.store, boot.identity, boot.arch, (text) => this.message(text));
      await this.prepareDisk(config.id, image);
      const binaries = guestBinaries(boot.arch);
      const savable = bootStateSupported({ arch: boot.arch, shares: ninepShares(config) }).ok;
      const initramfs = buildInitramfs({
          init: binaries.init,
          ...(binaries.agent ? { agent: binaries.agent, agentPorts: AGENT_PORTS } : {}),
          // Each module costs tens of ms under TCG: no network card, no virtio_net.
          modules: [
            ...(config.network === 'none' ? withoutNetModules(image.modules) : image.modules),
            ...ninepModules(config, image, boot.image.layers.map((l) => boot.store.layerRoot(l.diffId)).reverse()),
          ],
          // qemu user networking's fixed addresses; `network: none` gets no network card at all.
          ...(config.network === 'none' ? {} : { net: { address: '10.0.2.15/24', gateway: '10.0.2.2' } }),
          ...(savable ? { bootPort: BOOT_PORT_NAME } : {}),
      });
      writeFileSync(paths.initrd, initramfs);
      let choice = chooseAccel(boot.arch);
      this.explainAccel(choice.accel, choice.reason);
      try {
        return await this.bootSaved(config, boot, image, choice.accel, binaries.agent ? 'agent' : 'shell', savable ? initramfs : undefined);
      } catch (error) {
        if (choice.accel !== 'kvm' || !(error instanceof BootFailure)) throw error;
        // KVM opened but the guest died: remember it, say so once, and use TCG.
        mkdirSync(join(stateDir(), 'vm'), { recursive: true });
        writeFileAtomic(kvmBrokenMarker(), `${error.summary}\n`);
        choice = { accel: 'tcg', reason: `a KVM boot failed (${error.summary})` };
        this.explainAccel(choice.accel, choice.reason);
        return await this.bootSaved(config, boot, image, 'tcg', binaries.agent ? 'agent' : 'shell', savable ? initramfs : undefined);
      }
    } finally {
      lock.release();
    }
  }

  /** Why TCG, once per reason and state dir: it is slow, and the user should know it is not a bug. */
  private explainAccel(accel: Accel, reason: string | undefined): void {
    if (accel !== 'tcg' || !reason) return;
    const noted = join(stateDir(), 'vm', 'accel-noted');
    let previous = '';
    try {
      previous = readFileSync(noted, 'utf8');
    } catch {
      // first time
    }
    if (previous.trim() === reason) return;
    this.message(`VMs run with TCG (software emulation, slower) because ${reason}`);
    mkdirSync(join(stateDir(), 'vm'), { recursive: true });
    writeFileAtomic(noted, `${reason}\n`);
  }

  /** The environment's disk: a qcow2 overlay over the image's cached ext4, recreated when the image changed. */
  private async prepareDisk(id: string, image: VmImage): Promise<void> {
    const paths = vmPaths(id);
    mkdirSync(paths.dir, { recursive: true });
    let previous: { imageKey?: string } = {};
    try {
      previous = JSON.parse(readFileSync(paths.diskMeta, 'utf8')) as { imageKey?: string };
    } catch {
      // no disk yet
    }
    if (existsSync(paths.disk) && previous.imageKey === image.key) return;
    if (existsSync(paths.disk)) this.message(`the image changed (${previous.imageKey?.slice(0, 12) ?? '?'} -> ${image.key.slice(0, 12)}): the VM disk starts fresh`);
    rmSync(paths.disk, { force: true });
    await run(requireProgram('qemu-img'), ['create', '-q', '-f', 'qcow2', '-b', image.rootfs, '-F', 'raw', paths.disk, String(image.diskSize)], {
      errorCode: 'RUNTIME',
    });
    writeFileAtomic(paths.diskMeta, `${JSON.stringify({ imageKey: image.key, backing: image.rootfs })}\n`);
  }

  /**
   * Boot from the saved boot state of this machine configuration when there is one, else boot the
   * kernel and save it at envy-init's gate (snapshot.ts). A state that does not load is removed, said
   * in the console log, and the boot starts over. `initramfs` undefined: no gate, a plain boot.
   */
  private async bootSaved(config: EnvironmentConfig, boot: VmBoot, image: VmImage, accel: Accel, channel: VmState['channel'], initramfs: Buffer | undefined): Promise<RuntimeStatus> {
    if (!initramfs) return this.bootOnce(config, boot, image, accel, channel);
    const plan = this.qemuPlan(config, boot, image, accel, channel, true);
    const path = bootStatePath(image, bootStateKey(plan, { qemu: requireProgram(qemuBinary(boot.arch)), initramfs, diskSize: image.diskSize }));
    if (existsSync(path)) {
      try {
        return await this.bootOnce(config, boot, image, accel, channel, { mode: 'restore', path });
      } catch (error) {
        if (!(error instanceof ResumeFailure)) throw error;
        rmSync(path, { force: true });
        writeFileSync(vmPaths(config.id).serialLog, `--- envy: the saved boot state ${path} did not resume (${error.summary}): removed; booting the kernel and saving it again ---\n`, { flag: 'a' });
      }
    }
    return this.bootOnce(config, boot, image, accel, channel, { mode: 'save', path });
  }

  /** qemu's settings for this boot; `gate`: with envy-init's boot gate port. */
  private qemuPlan(config: EnvironmentConfig, boot: VmBoot, image: VmImage, accel: Accel, channel: VmState['channel'], gate: boolean): QemuPlan {
    const paths = vmPaths(config.id);
    const ports = channel === 'agent' ? AGENT_PORTS : 1;
    return {
      arch: boot.arch,
      accel,
      kernel: image.kernel,
      initrd: paths.initrd,
      disk: paths.disk,
      memory: boot.memory,
      cpus: boot.cpus,
      hostname: config.hostname,
      agentSockets: Array.from({ length: ports }, (_, index) => agentSocketAt(paths.agentSocket, index)),
      qmpSocket: paths.qmpSocket,
      serialLog: paths.serialLog,
      pidFile: paths.qemuPid,
      ports: boot.ports,
      network: config.network !== 'none',
      syncSocket: paths.syncSocket,
      shares: ninepShares(config),
      ...(gate ? { bootSocket: paths.bootSocket } : {}),
    };
  }

  /**
   * envy-init's boot gate, host side. A fresh boot: wait for `ready`, save the machine, say `go`. A
   * resumed one: wait until qemu has loaded the saved state and runs it, say `go`. Returns the gate's
   * connection (closed once the agent answers: closing at once could drop `go` unread) and what
   * happened. A fresh boot that dies before the gate returns quietly: waitReady() tells why.
   */
  private async passGate(config: EnvironmentConfig, gate: { mode: 'restore' | 'save'; path: string }, qemuAlive: () => boolean): Promise<{ connection?: BootGate; use: BootStateUse; ms?: number }> {
    const paths = vmPaths(config.id);
    const started = Date.now();
    let connection: BootGate;
    try {
      connection = await BootGate.connect(paths.bootSocket, 30_000, qemuAlive);
    } catch (error) {
      if (gate.mode === 'restore') throw new ResumeFailure(this.qemuSummary(config.id, error));
      return { use: 'off' };
    }
    try {
      if (gate.mode === 'restore') {
        let qmp: Qmp | undefined;
        try {
          qmp = await Qmp.connect(paths.qmpSocket, 30_000, qemuAlive);
          await waitResumed(qmp, qemuAlive, 120_000);
        } catch (error) {
          throw new ResumeFailure(this.qemuSummary(config.id, error));
        } finally {
          qmp?.close();
        }
        connection.go(config.hostname, 'restored');
        return { connection, use: 'restored', ms: Date.now() - started };
      }
      try {
        await connection.ready(BOOT_TIMEOUT_MS.tcg, qemuAlive);
      } catch {
        return { connection, use: 'off' };
      }
      let use: BootStateUse = 'off';
      let ms: number | undefined;
      let qmp: Qmp | undefined;
      try {
        qmp = await Qmp.connect(paths.qmpSocket, 30_000, qemuAlive);
        ms = await saveBootState(qmp, gate.path, qemuAlive, 120_000);
        use = 'saved';
      } catch (error) {
        // The boot goes on without a saved state; the next one tries again.
        writeFileSync(paths.serialLog, `--- envy: could not save the boot state: ${(error as Error).message} ---\n`, { flag: 'a' });
      } finally {
        qmp?.close();
      }
      connection.go(config.hostname, use);
      return { connection, use, ...(ms === undefined ? {} : { ms }) };
    } catch (error) {
      connection.close();
      throw error;
    }
  }

  /** qemu's last words (or the error's), for a boot state that did not resume. */
  private qemuSummary(id: string, error: unknown): string {
    const qemu = tail(vmPaths(id).qemuLog).filter((line) => line.trim());
    return qemu.at(-1) ?? (error instanceof Error ? error.message : String(error));
  }

  private async bootOnce(
    config: EnvironmentConfig,
    boot: VmBoot,
    image: VmImage,
    accel: Accel,
    channel: VmState['channel'],
    gate?: { mode: 'restore' | 'save'; path: string },
  ): Promise<RuntimeStatus> {
    const paths = vmPaths(config.id);
    const ports = channel === 'agent' ? AGENT_PORTS : 1;
    const agentSockets = Array.from({ length: ports }, (_, index) => agentSocketAt(paths.agentSocket, index));
    for (const path of [...agentSockets, paths.syncSocket, paths.bootSocket, paths.qmpSocket, paths.qemuPid, paths.state]) rmSync(path, { force: true });
    if ([paths.qmpSocket, paths.syncSocket, paths.bootSocket, ...agentSockets].some((socket) => Buffer.byteLength(socket) > MAX_SOCKET_PATH)) {
      throw new EnvyError('HOST', `the VM's socket path ${paths.agentSocket} is longer than a unix socket allows (${MAX_SOCKET_PATH} bytes)`, {
        hint: 'use a shorter environment name, or point ENVY_HOME at a shorter directory',
      });
    }
    const args = [...qemuArgs(this.qemuPlan(config, boot, image, accel, channel, gate !== undefined)), ...(gate?.mode === 'restore' ? incomingArgs(gate.path) : [])];
    const how = gate?.mode === 'restore' ? `, resuming ${gate.path}` : '';
    writeFileSync(paths.serialLog, `--- envy: boot at ${new Date().toISOString()} (${accel}${how}) ---\n`, { flag: 'a' });
    const log = openSync(paths.qemuLog, 'w');
    const started = Date.now();
    const child = spawn(requireProgram(qemuBinary(boot.arch)), args, { detached: true, stdio: ['ignore', log, log] });
    closeSync(log);
    child.unref();
    const pid = child.pid;
    if (pid === undefined) throw new EnvyError('RUNTIME', `cannot start ${qemuBinary(boot.arch)}`, { details: tail(paths.qemuLog) });
    let startTime = processStartTime(pid);
    for (let i = 0; startTime === undefined && i < 20; i++) startTime = processStartTime(pid);
    const self = { pid: process.pid, startTime: processStartTime(process.pid) ?? '' };
    const state: VmState = {
      pid,
      startTime: startTime ?? '',
      owner: self,
      ready: false,
      arch: boot.arch,
      kernel: image.kernelVersion,
      accel,
      imageKey: image.key,
      startedAt: new Date().toISOString(),
      agentSocket: paths.agentSocket,
      agentPorts: ports,
      channel,
    };
    writeFileAtomic(paths.state, `${JSON.stringify(state)}\n`);
    // Interrupted mid-boot: the VM goes with us (a SIGKILL is caught by the next status() instead).
    const abort = () => {
      signal(pid, 'SIGKILL');
      process.exit(130);
    };
    process.once('SIGINT', abort);
    process.once('SIGTERM', abort);
    let gated: Awaited<ReturnType<VmRuntime['passGate']>> | undefined;
    try {
      // A KVM that fails stops the guest but leaves qemu running: that counts as dead here too.
      const qemuAlive = (): boolean => alive(pid, state.startTime) && !(accel === 'kvm' && tail(paths.qemuLog).some((l) => KVM_FAILURE.test(l)));
      if (gate) gated = await this.passGate(config, gate, qemuAlive);
      if (gated) state.bootState = { use: gated.use, ...(gated.ms === undefined ? {} : { ms: gated.ms }) };
      // The knock goes to the last port, so the first exec's connection to envy.0 never follows a
      // disconnect the guest may not have seen yet.
      await this.waitReady(config.id, pid, state.startTime, accel, channel, agentSockets.at(-1)!);
      gated?.connection?.close();
      const answered = Date.now() - started;
      // The workspace's sync agent starts now, beside the copy and provisioning, on ports of their
      // own: the sync process (started beside qemu) is knocking already, so its initial sync runs
      // while provisioning does.
      const syncAgent = channel === 'agent' ? this.startSyncAgent(config, state) : Promise.resolve(undefined);
      // Copy first: the one provisioning exec then also hands the copies to the env user (an exec
      // under TCG costs a few hundred ms).
      const copied = channel === 'agent' ? await this.copyIn(config, state) : [];
      const copiedAt = Date.now() - started;
      await this.provision(config, state, copied);
      const syncAgentAt = await syncAgent;
      state.bootMs = { answered, copied: copiedAt, ready: Date.now() - started, ...(syncAgentAt !== undefined ? { syncAgent: syncAgentAt - started } : {}) };
      state.ready = true;
      delete state.owner;
      writeFileAtomic(paths.state, `${JSON.stringify(state)}\n`);
      this.lastBootMs = Date.now() - started;
      return { state: 'running', pid, startedAt: state.startedAt, vm: { arch: state.arch, kernel: state.kernel, accel } };
    } catch (error) {
      signal(pid, 'SIGKILL');
      await waitGone(pid, state.startTime, KILL_WAIT_MS);
      rmSync(paths.state, { force: true });
      throw error;
    } finally {
      gated?.connection?.close();
      process.removeListener('SIGINT', abort);
      process.removeListener('SIGTERM', abort);
    }
  }

  /**
   * The live workspace's agent in the guest (guest-sync.ts), started with one frame to the control
   * agent; resolves to when it ran (Date.now()), or undefined when nothing is synced. A failure does
   * not fail the boot: the sync process starts the agent itself and reports what went wrong.
   */
  private async startSyncAgent(config: EnvironmentConfig, state: VmState): Promise<number | undefined> {
    const synced = config.mounts.filter((m) => m.vm === 'sync').map((m) => m.target);
    if (synced.length === 0 || !config.user) return undefined;
    try {
      const client = await connectAgent(config.id, state, { purpose: `start the sync agent in VM ${config.id}` });
      try {
        await startGuestSyncAgent(client, config.id, state, config.user, synced);
      } finally {
        client.close();
      }
      return Date.now();
    } catch {
      return undefined;
    }
  }

  /**
   * What the namespace runtime generates per run, written into the guest once per boot: the env
   * user's passwd and group lines (the user step's own lines go to a generated file in the build
   * namespace, so the image may lack them), hostname, hosts, and qemu's DNS forwarder.
   */
  private async provision(config: EnvironmentConfig, state: VmState, copied: string[]): Promise<void> {
    const quote = (v: string): string => `'${v.replace(/'/g, `'\\''`)}'`;
    const host = config.hostname.replace(/[^A-Za-z0-9.-]/g, '-').slice(0, 63);
    // Shell builtins wherever possible: under TCG every program the script starts costs 50-200 ms
    // (fork, exec, dynamic linking), so this runs two (mkdir, chown) where it ran ten.
    const lines: string[] = [
      // has FILE NAME ID: an entry with that name, or that id in the third field (passwd uid, group gid).
      'has() { while IFS=: read -r n _ i _ || [ -n "$n" ]; do { [ "$n" = "$2" ] || [ "$i" = "$3" ]; } && return 0; done < "$1"; return 1; }',
      `echo ${quote(host)} > /etc/hostname`,
      `printf '127.0.0.1\\tlocalhost\\n::1\\tlocalhost ip6-localhost ip6-loopback\\n127.0.1.1\\t%s\\n' ${quote(host)} > /etc/hosts`,
    ];
    // A link (systemd-resolved's stub) must not be written through.
    if (config.network !== 'none') lines.push(`if [ -L /etc/resolv.conf ]; then rm -f /etc/resolv.conf; fi; echo 'nameserver 10.0.2.3' > /etc/resolv.conf`);
    // Mount points of the namespace backend (the workspace among them) exist as directories, so a
    // process can start in them; their contents reach a VM only through sync (docs/vm.md).
    const dirs = config.mounts.map((mount) => mount.target);
    const user = config.user;
    if (user) {
      lines.push(
        `has /etc/group ${quote(user.name)} ${user.gid} || echo ${quote(`${user.name}:x:${user.gid}:`)} >> /etc/group`,
        `has /etc/passwd ${quote(user.name)} ${user.uid} || echo ${quote(`${user.name}:x:${user.uid}:${user.gid}:${user.name}:${user.home}:/bin/sh`)} >> /etc/passwd`,
      );
      dirs.unshift(user.home);
    }
    if (dirs.length > 0) lines.push(`mkdir -p ${dirs.map(quote).join(' ')}`);
    if (user) lines.push(`chown ${user.uid}:${user.gid} ${quote(user.home)}`);
    // Synced workspace targets handed to the user, 9p shares mounted (shares.ts).
    const shareLines = shareSetupLines(config);
    lines.push(...shareLines);
    // The disk keeps all of this across boots: when the same script ran on it before and the copy
    // brought nothing new, the exec (a second or more under TCG) is skipped.
    const digest = createHash('sha256').update(lines.join('\n')).digest('hex');
    // A 9p mount lasts one boot, so a VM with shares always runs the script.
    const mountsShares = ninepShares(config).length > 0;
    if (!mountsShares && copied.length === 0 && state.channel === 'agent' && (await this.provisionedDigest(config.id, state)) === digest) return;
    if (user && copied.length > 0) lines.push(`chown -R ${user.uid}:${user.gid} ${copied.map(quote).join(' ')}`);
    lines.push(`mkdir -p ${PROVISIONED_DIR} && echo ${digest} > ${PROVISIONED_DIR}/provisioned`);
    let output = '';
    const code = await this.runCaptured(config.id, state, ['/bin/sh', '-c', ['set -e', ...lines].join('\n')], (text) => (output += text), 30_000);
    if (code !== 0) throw new EnvyError('RUNTIME', `setting up the VM ${config.id} failed (exit ${code ?? 'timeout'})`, { details: output.trim().split('\n').slice(-10) });
  }

  /** What provision() last ran on this disk (its marker in the guest), read over the agent without an exec. */
  private async provisionedDigest(id: string, state: VmState): Promise<string | undefined> {
    const { AgentTransport } = await import('./agent-transport.js');
    const client = await connectAgent(id, state, { purpose: `check VM ${id}` });
    try {
      return (await new AgentTransport(client, PROVISIONED_DIR, id).readFile('provisioned')).toString().trim();
    } catch {
      return undefined; // a fresh disk
    } finally {
      client.close();
    }
  }

  /**
   * The writable bind mounts (the workspace, volumes, binds from env.yaml) copied into the guest at
   * boot: a one-shot, one-way sync over the agent (changed files only after the first boot); returns
   * the guest paths where something was copied, which provision() hands to the env user. The
   * workspace is not among them: it is kept live by the workspace sync process, or shared with 9p
   * (shares.ts).
   * Read-only binds (a host base's /usr) have no meaning in a VM with its own /usr and are skipped.
   */
  private async copyIn(config: EnvironmentConfig, state: VmState): Promise<string[]> {
    // A mount the sync process keeps live, or a 9p share, is not copied (shares.ts).
    const binds = config.mounts.filter((m) => m.type === 'bind' && m.source && !m.readonly && !m.vm);
    if (binds.length === 0) return [];
    const [{ SyncEngine }, { LocalTransport }, { AgentTransport }] = await Promise.all([
      import('../../sync/engine.js'),
      import('../../sync/local-transport.js'),
      import('./agent-transport.js'),
    ]);
    const client = await connectAgent(config.id, state, { purpose: `copy the workspace into VM ${config.id}` });
    const changed: string[] = [];
    try {
      for (const mount of binds) {
        const engine = new SyncEngine({ source: new LocalTransport(mount.source!), target: new AgentTransport(client, mount.target, config.id), direction: 'one-way', watch: false });
        const errors: Error[] = [];
        engine.on('error', (error: Error) => errors.push(error));
        await engine.start();
        if (engine.status().applied > 0) changed.push(mount.target);
        await engine.stop();
        if (errors[0]) throw new EnvyError('RUNTIME', `copying ${mount.source} into the VM at ${mount.target} failed: ${errors[0].message}`);
      }
    } finally {
      client.close();
    }
    return changed;
  }

  /** Run a command as root in the guest and collect its output (stdout and stderr together). */
  private async runCaptured(id: string, state: VmState, argv: string[], onOutput: (text: string) => void, timeoutMs: number): Promise<number | undefined> {
    if (state.channel === 'agent') {
      const client = await connectAgent(id, state, { purpose: `set up VM ${id}` });
      try {
        const exec = client.exec({ argv, env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' }, cwd: '/', uid: 0, gid: 0 });
        exec.stdin.end();
        exec.stdout.on('data', (chunk: Buffer) => onOutput(chunk.toString()));
        exec.stderr.on('data', (chunk: Buffer) => onOutput(chunk.toString()));
        let timer: NodeJS.Timeout | undefined;
        const timeout = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), timeoutMs)));
        try {
          return await Promise.race([exec.exit, timeout]);
        } finally {
          clearTimeout(timer);
        }
      } finally {
        client.close();
      }
    }
    const channel = await ShellChannel.connect(state.agentSocket, 5000);
    try {
      return await channel.run(argv.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' '), onOutput, timeoutMs);
    } finally {
      channel.close();
    }
  }

  /** Milliseconds from spawning qemu to the guest's first answer, for the last boot. */
  lastBootMs: number | undefined;

  private async waitReady(id: string, pid: number, startTime: string, accel: Accel, channel: VmState['channel'], socket: string): Promise<void> {
    const paths = vmPaths(id);
    const deadline = Date.now() + BOOT_TIMEOUT_MS[accel];
    const died = (): BootFailure => {
      const qemu = tail(paths.qemuLog);
      const consoleLines = tail(paths.serialLog);
      const summary = qemu.find((l) => KVM_FAILURE.test(l)) ?? qemu.at(-1) ?? consoleLines.at(-1) ?? 'qemu exited';
      return new BootFailure(`the VM ${id} stopped while booting: ${summary}`, summary, [
        ...qemu.map((l) => `qemu | ${l}`),
        ...consoleLines.map((l) => `console | ${l}`),
        `console log: ${paths.serialLog}`,
      ]);
    };
    while (Date.now() < deadline) {
      if (!alive(pid, startTime)) throw died();
      // A KVM that fails this way stops the guest but leaves qemu running: do not wait for the deadline.
      if (accel === 'kvm' && tail(paths.qemuLog).some((l) => KVM_FAILURE.test(l))) throw died();
      if (existsSync(socket)) {
        if (channel === 'agent') {
          // Short knocks, so a qemu that died is noticed within seconds, not at the deadline.
          try {
            const client = await AgentClient.connect(socket, { timeoutMs: 2000, retryMs: 50 });
            client.close();
            return;
          } catch {
            // not booted yet
          }
          continue;
        }
        let shell: ShellChannel | undefined;
        try {
          shell = await ShellChannel.connect(socket, 2000);
          // The shell is up once it answers; until then the line waits in the port's queue.
          while (Date.now() < deadline && alive(pid, startTime)) {
            const code = await shell.run('true', () => undefined, 1000);
            if (code === 0) return;
          }
        } catch {
          // qemu not listening yet
        } finally {
          shell?.close();
        }
      }
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
    if (!alive(pid, startTime)) throw died();
    throw new EnvyError('RUNTIME', `the VM ${id} did not answer within ${BOOT_TIMEOUT_MS[accel] / 1000} s`, {
      details: [...tail(paths.serialLog).map((l) => `console | ${l}`), `console log: ${paths.serialLog}`],
    });
  }

  async exec(config: EnvironmentConfig, spec: ProcessSpec): Promise<number> {
    const state = this.runningState(config.id);
    if (!state) throw new EnvyError('RUNTIME', `environment ${config.id} is not running`, { hint: 'start it with `envy up`' });
    return execInVm(config, state, spec, this.options.stdio ?? process);
  }

  runOnce(config: EnvironmentConfig): Promise<number> {
    return Promise.reject(new EnvyError('INTERNAL', `VM ${config.id}: build steps run in the namespace runtime, not in a VM`));
  }

  async stop(config: EnvironmentConfig, graceMs: number): Promise<void> {
    const state = readState(config.id);
    const paths = vmPaths(config.id);
    if (state && alive(state.pid, state.startTime)) {
      // Clean first: init stops every process, remounts / read-only and powers off.
      if (state.ready) {
        try {
          if (state.channel === 'agent') {
            const client = await connectAgent(config.id, state, { waitMs: 2000, purpose: `stop VM ${config.id}` });
            await Promise.race([client.shutdown(), new Promise((resolve) => setTimeout(resolve, 2000))]);
            client.close();
          } else {
            const shell = await ShellChannel.connect(state.agentSocket, 2000);
            shell.requestPowerOff();
            await new Promise((resolve) => setTimeout(resolve, 100));
            shell.close();
          }
        } catch {
          // the guest does not listen (or an exec holds the port): the kill below
        }
      }
      if (!(await waitGone(state.pid, state.startTime, graceMs))) await kill(state.pid, state.startTime);
      if (alive(state.pid, state.startTime)) throw new EnvyError('RUNTIME', `VM ${config.id} (qemu pid ${state.pid}) did not die after SIGKILL`);
    }
    const sockets = Array.from({ length: state?.agentPorts ?? 1 }, (_, index) => agentSocketAt(paths.agentSocket, index));
    for (const path of [paths.state, ...sockets, paths.bootSocket, paths.qmpSocket, paths.qemuPid]) rmSync(path, { force: true });
  }

  async status(config: EnvironmentConfig): Promise<RuntimeStatus> {
    const state = readState(config.id);
    if (!state || !alive(state.pid, state.startTime)) return { state: 'stopped' };
    if (!state.ready && state.owner && !alive(state.owner.pid, state.owner.startTime)) {
      // The envy that booted it died before the guest answered: nobody will use or stop this VM.
      await kill(state.pid, state.startTime);
      rmSync(vmPaths(config.id).state, { force: true });
      return { state: 'stopped' };
    }
    // Still booting under a live envy: not usable yet (start() waits on the start lock for it).
    if (!state.ready) return { state: 'stopped' };
    return { state: 'running', pid: state.pid, startedAt: state.startedAt, vm: { arch: state.arch, kernel: state.kernel, accel: state.accel } };
  }

  private runningState(id: string): VmState | undefined {
    const state = readState(id);
    return state && state.ready && alive(state.pid, state.startTime) ? state : undefined;
  }
}

/** A saved boot state that qemu could not load: the caller removes it and boots the kernel. */
class ResumeFailure extends EnvyError {
  constructor(readonly summary: string) {
    super('RUNTIME', `the saved boot state did not resume: ${summary}`);
  }
}

class BootFailure extends EnvyError {
  constructor(
    message: string,
    readonly summary: string,
    details: string[],
  ) {
    super('RUNTIME', message, { details });
  }
}
