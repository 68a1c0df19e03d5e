/**
 * Saved boot state: a VM's machine state taken at envy-init's boot gate (after the kernel's boot and
 * the modules, before the root disk is mounted), so later boots resume there instead of booting the
 * kernel again (what Firecracker's snapshots do). docs/vm.md, "Saved boot state".
 *
 * - The first boot of a configuration stops at the gate: envy-init says `ready` on the `envy-boot`
 *   port, the host stops the machine, migrates it to a file through QMP (`exec:` — qemu 7.2 has no
 *   `file:` URI), resumes it and says `go`. Later boots start qemu with the same machine and
 *   `-incoming` from that file, wait until QMP reports it running and say `go`.
 * - `go` carries what must differ per boot: the wall clock, a random seed (the guest reseeds its
 *   generator from it, or every resumed copy would draw the same numbers), the hostname. envy-init
 *   also drops the root disk's cached blocks, since the probe before the gate read another disk.
 * - The file is keyed by everything that shapes the saved machine: qemu's binary, firmware, kernel,
 *   initramfs, the machine arguments with the per-environment paths and forwarded ports taken out
 *   (they live on the host side, outside the migrated state), the disk's size. It lives in the VM
 *   image's directory (`snapshots/`), so gc collects it with the image. A file that does not load
 *   is removed, said once in the console log, and the boot starts over and saves a new one.
 */
import { randomBytes, createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, renameSync, rmSync, statSync } from 'node:fs';
import { release } from 'node:os';
import { connect, type Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { EnvyError } from '../../errors.js';
import type { VmImage } from './image.js';
import { QBOOT, qemuArgs, type QemuPlan } from './qemu.js';

/** Bumped when envy-init's gate or the go message changes meaning: older files are then never used. */
const FORMAT = 'envy-boot-state-1';
/** Migration's default bandwidth cap (32 MiB/s) would make the save take seconds. */
const UNLIMITED_BANDWIDTH = 64 * 1024 * 1024 * 1024;

export type BootStateUse = 'restored' | 'saved' | 'off';

/** Whether a boot can save and resume its machine, and why not. */
export function bootStateSupported(plan: Pick<QemuPlan, 'arch' | 'shares'>, env: NodeJS.ProcessEnv = process.env): { ok: true } | { ok: false; reason: string } {
  if (env.ENVY_VM_SNAPSHOT === '0') return { ok: false, reason: 'ENVY_VM_SNAPSHOT=0' };
  // Only x86_64 has been tested resuming (an arm64 guest under `virt` should work the same way).
  if (plan.arch !== 'x86_64') return { ok: false, reason: `not tested for ${plan.arch} guests` };
  // A 9p share's fsdev is per environment and is part of the device set the guest probed.
  if ((plan.shares ?? []).length > 0) return { ok: false, reason: 'the environment has a 9p share' };
  return { ok: true };
}

function fileStamp(path: string): string {
  const real = realpathSync(path);
  const stat = statSync(real, { bigint: true });
  return `${real}:${stat.dev}:${stat.ino}:${stat.size}:${stat.mtimeNs}`;
}

/**
 * The key of the machine state `plan` boots into. Per-environment paths and ports are replaced by
 * placeholders: sockets, logs and the disk's file are host-side (qemu opens what the new command line
 * names), and hostfwd rules are slirp's host side. What the guest saw stays: the device set, memory,
 * CPUs, accelerator, the kernel and initramfs bytes, the disk's size (the probe read its capacity).
 */
export function bootStateKey(plan: QemuPlan, parts: { qemu: string; initramfs: Buffer; diskSize: number }): string {
  const generic: QemuPlan = {
    ...plan,
    initrd: '@initrd',
    disk: '@disk',
    hostname: '@hostname',
    agentSockets: plan.agentSockets.map((_, index) => `@agent${index}`),
    qmpSocket: '@qmp',
    serialLog: '@console',
    pidFile: '@pid',
    ports: [],
    ...(plan.syncSocket ? { syncSocket: '@sync' } : {}),
    ...(plan.bootSocket ? { bootSocket: '@boot' } : {}),
  };
  const hash = createHash('sha256');
  for (const part of [
    FORMAT,
    JSON.stringify(qemuArgs(generic)),
    fileStamp(parts.qemu),
    fileStamp(plan.kernel),
    existsSync(QBOOT) ? fileStamp(QBOOT) : 'no qboot',
    createHash('sha256').update(parts.initramfs).digest('hex'),
    String(parts.diskSize),
    plan.accel === 'kvm' ? hostCpu() : 'emulated cpu',
  ]) {
    hash.update(part).update('\0');
  }
  return hash.digest('hex');
}

/**
 * Under KVM the guest runs on the host's CPU (`-cpu host`) and the host kernel's KVM: a state saved on
 * another CPU model or host kernel must not be resumed. TCG emulates a fixed model.
 */
function hostCpu(): string {
  let cpu = '';
  try {
    const first = readFileSync('/proc/cpuinfo', 'utf8').split('\n\n')[0] ?? '';
    cpu = first
      .split('\n')
      .filter((line) => /^(vendor_id|cpu family|model|model name|stepping|microcode|flags)\s*:/.test(line))
      .join('\n');
  } catch {
    // no /proc: the host kernel's release still counts
  }
  return `${release()}\n${cpu}`;
}

export function bootStatePath(image: VmImage, key: string): string {
  return join(image.dir, 'snapshots', `${key.slice(0, 32)}.vmstate`);
}

/** `-incoming` for a boot that resumes from `path`. */
export function incomingArgs(path: string): string[] {
  return ['-incoming', `exec:cat ${shellQuote(path)}`];
}

function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

/** qemu's machine protocol, one command at a time (events are skipped). */
export class Qmp {
  private buffer = '';
  private waiting: ((line: Record<string, unknown>) => void) | undefined;
  private closed: Error | undefined;

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      for (let end = this.buffer.indexOf('\n'); end >= 0; end = this.buffer.indexOf('\n')) {
        const line = this.buffer.slice(0, end).trim();
        this.buffer = this.buffer.slice(end + 1);
        if (!line) continue;
        const message = JSON.parse(line) as Record<string, unknown>;
        if ('event' in message || 'QMP' in message) continue;
        const waiter = this.waiting;
        this.waiting = undefined;
        waiter?.(message);
      }
    });
    const gone = (): void => {
      this.closed ??= new Error('qemu closed its QMP socket');
      const waiter = this.waiting;
      this.waiting = undefined;
      waiter?.({ error: { desc: this.closed.message } });
    };
    socket.on('close', gone);
    socket.on('error', (error) => {
      this.closed = error;
      gone();
    });
  }

  static async connect(path: string, timeoutMs: number, alive: () => boolean): Promise<Qmp> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const socket = await connectUnix(path);
        const qmp = new Qmp(socket);
        await qmp.command('qmp_capabilities');
        return qmp;
      } catch (error) {
        if (Date.now() > deadline || !alive()) throw error;
        await sleep(10);
      }
    }
  }

  command(execute: string, args?: Record<string, unknown>): Promise<unknown> {
    if (this.closed) return Promise.reject(this.closed);
    return new Promise((resolve, reject) => {
      this.waiting = (message) => {
        if ('error' in message) reject(new Error(`QMP ${execute}: ${(message.error as { desc?: string }).desc ?? JSON.stringify(message.error)}`));
        else resolve(message.return);
      };
      this.socket.write(`${JSON.stringify(args ? { execute, arguments: args } : { execute })}\n`);
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

function connectUnix(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    socket.once('connect', () => {
      socket.removeListener('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The host's end of envy-init's boot gate (the `envy-boot` port). */
export class BootGate {
  private buffer = '';
  private lineWaiter: ((line: string) => void) | undefined;
  private lines: string[] = [];

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      for (let end = this.buffer.indexOf('\n'); end >= 0; end = this.buffer.indexOf('\n')) {
        this.lines.push(this.buffer.slice(0, end).trim());
        this.buffer = this.buffer.slice(end + 1);
      }
      if (this.lines.length > 0 && this.lineWaiter) {
        const waiter = this.lineWaiter;
        this.lineWaiter = undefined;
        waiter(this.lines.shift()!);
      }
    });
    socket.on('error', () => undefined);
  }

  /** Connect as soon as qemu listens (it must be connected before the guest says ready). */
  static async connect(path: string, timeoutMs: number, alive: () => boolean): Promise<BootGate> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        return new BootGate(await connectUnix(path));
      } catch (error) {
        if (Date.now() > deadline || !alive()) throw new EnvyError('RUNTIME', `cannot reach the VM's boot port ${path}: ${(error as Error).message}`);
        await sleep(10);
      }
    }
  }

  /** The guest's `ready`; rejects when `alive` turns false or time runs out. */
  async ready(timeoutMs: number, alive: () => boolean): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline && alive()) {
      const line = this.lines.shift() ?? (await new Promise<string | undefined>((resolve) => {
        const timer = setTimeout(() => {
          this.lineWaiter = undefined;
          resolve(undefined);
        }, 100);
        this.lineWaiter = (value) => {
          clearTimeout(timer);
          resolve(value);
        };
      }));
      if (line === 'ready') return;
    }
    throw new EnvyError('RUNTIME', alive() ? `the VM did not reach its boot gate within ${Math.round(timeoutMs / 1000)} s` : 'qemu exited before the VM reached its boot gate');
  }

  /** Let the guest on: the clock now, a fresh seed, the hostname, and how this boot got here (for the console log). */
  go(hostname: string, how: BootStateUse): void {
    const name = hostname.replace(/[^A-Za-z0-9.-]/g, '-').slice(0, 63) || '-';
    const ns = BigInt(Date.now()) * 1_000_000n + (process.hrtime.bigint() % 1_000_000n);
    this.socket.write(`go ${ns} ${randomBytes(32).toString('hex')} ${name} ${how}\n`);
  }

  close(): void {
    this.socket.end();
    this.socket.destroy();
  }
}

/**
 * Save the stopped machine to `path` (temp file + rename, so a half-written state is never used),
 * then let it run on. Returns the milliseconds it took.
 */
export async function saveBootState(qmp: Qmp, path: string, alive: () => boolean, timeoutMs: number): Promise<number> {
  const started = Date.now();
  mkdirSync(dirname(path), { recursive: true });
  removeStaleTemps(dirname(path));
  const temp = `${path}.tmp-${process.pid}`;
  await qmp.command('stop');
  try {
    await qmp.command('migrate-set-parameters', { 'max-bandwidth': UNLIMITED_BANDWIDTH });
    await qmp.command('migrate', { uri: `exec:cat > ${shellQuote(temp)}` });
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const status = (await qmp.command('query-migrate')) as { status?: string; 'error-desc'?: string };
      if (status.status === 'completed') break;
      if (status.status === 'failed' || status.status === 'cancelled') throw new Error(`saving the VM's boot state failed: ${status['error-desc'] ?? status.status}`);
      if (Date.now() > deadline || !alive()) throw new Error(`saving the VM's boot state did not finish within ${timeoutMs / 1000} s`);
      await sleep(10);
    }
    renameSync(temp, path);
  } catch (error) {
    rmSync(temp, { force: true });
    throw error;
  } finally {
    await qmp.command('cont');
  }
  return Date.now() - started;
}

/** Half-written states of saves that were killed (an envy interrupted mid-save kills its qemu). */
function removeStaleTemps(dir: string): void {
  for (const name of readdirSync(dir)) {
    const pid = /\.tmp-(\d+)$/.exec(name)?.[1];
    if (!pid) continue;
    try {
      process.kill(Number(pid), 0);
      continue; // that envy is still saving
    } catch {
      rmSync(join(dir, name), { force: true });
    }
  }
}

/** Wait until a qemu started with `-incoming` has loaded the saved machine, and run it. */
export async function waitResumed(qmp: Qmp, alive: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const status = (await qmp.command('query-status')) as { status?: string };
    if (status.status === 'running') return;
    // The machine was saved stopped, and qemu restores the saved run state: it loads as paused.
    if (status.status === 'paused') {
      await qmp.command('cont');
      continue;
    }
    if (status.status !== 'inmigrate' && status.status !== 'prelaunch') throw new Error(`the resumed VM is ${status.status ?? 'in an unknown state'}`);
    if (Date.now() > deadline || !alive()) throw new Error('the saved boot state did not load');
    await sleep(10);
  }
}
