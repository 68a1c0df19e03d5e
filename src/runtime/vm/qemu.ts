/**
 * qemu's command line for an environment, and the choice between KVM and TCG.
 *
 * KVM is used only when it can work: the guest has the host's architecture, /dev/kvm opens
 * read-write for this user, and it is not kvm_pvm (a software virtualiser some cloud hosts expose
 * inside their VMs: /dev/kvm opens fine there, yet guests abort with "KVM internal error", and
 * `accel=kvm:tcg` does not fall back since KVM "works"). A KVM boot that dies anyway is caught by
 * the runtime, which marks KVM broken (vm/kvm-broken under the state dir) and boots with TCG.
 */
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { hostArch } from '../../config/normalize.js';
import type { Arch, PortSpec } from '../../config/types.js';
import { stateDir } from '../../state/paths.js';
import { ninepQemuArgs, type NinepShare } from './shares.js';

/** The virtio-serial port of the workspace sync's agent (the control agent's is envy.0). */
export const SYNC_PORT_NAME = 'envy-sync';

export type Accel = 'kvm' | 'tcg';

export interface AccelChoice {
  accel: Accel;
  /** Why not KVM, when TCG. */
  reason?: string;
}

export function kvmBrokenMarker(): string {
  return join(stateDir(), 'vm', 'kvm-broken');
}

export function chooseAccel(arch: Arch, env: NodeJS.ProcessEnv = process.env): AccelChoice {
  const forced = env.ENVY_VM_ACCEL;
  if (forced === 'tcg') return { accel: 'tcg', reason: 'ENVY_VM_ACCEL=tcg' };
  if (arch !== hostArch()) return { accel: 'tcg', reason: `the guest is ${arch} on an ${hostArch()} host` };
  if (existsSync('/sys/module/kvm_pvm')) return { accel: 'tcg', reason: '/dev/kvm is kvm_pvm (nested software virtualisation), under which guests crash' };
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    return {
      accel: 'tcg',
      reason: existsSync('/dev/kvm') ? '/dev/kvm is not read-write for this user (add yourself to the kvm group)' : 'there is no /dev/kvm (no hardware virtualisation)',
    };
  }
  if (forced !== 'kvm' && existsSync(kvmBrokenMarker())) {
    return { accel: 'tcg', reason: `a KVM boot failed before (${readFileSync(kvmBrokenMarker(), 'utf8').trim()}); remove ${kvmBrokenMarker()} to try again` };
  }
  return { accel: 'kvm' };
}

export interface QemuPlan {
  arch: Arch;
  accel: Accel;
  kernel: string;
  initrd: string;
  disk: string;
  /** Bytes. */
  memory: number;
  cpus: number;
  hostname: string;
  /** One socket per agent port, envy.0 first. */
  agentSockets: string[];
  qmpSocket: string;
  serialLog: string;
  pidFile: string;
  ports: PortSpec[];
  /** A virtio network card on qemu's user network (for `ports` and outbound traffic). */
  network: boolean;
  /** A second agent port, `envy-sync`, for the workspace sync (shares.ts). */
  syncSocket?: string;
  /** Host directories shared with virtio-9p (shares.ts). */
  shares?: NinepShare[];
  /** The boot gate's port, `envy-boot` (snapshot.ts): the machine may be saved or resumed there. */
  bootSocket?: string;
}

/** The virtio-serial port of envy-init's boot gate. */
export const BOOT_PORT_NAME = 'envy-boot';

/**
 * The boot gate's port. With it, the hostname goes to the guest through the gate, not on the kernel
 * command line: the saved machine (kernel command line included) is shared by every environment of a
 * configuration.
 */
function bootGateArgs(plan: Pick<QemuPlan, 'bootSocket'>): string[] {
  if (!plan.bootSocket) return [];
  return ['-chardev', `socket,id=boot0,path=${plan.bootSocket},server=on,wait=off`, '-device', `virtserialport,chardev=boot0,name=${BOOT_PORT_NAME}`];
}

export function qemuBinary(arch: Arch): string {
  return arch === 'aarch64' ? 'qemu-system-aarch64' : 'qemu-system-x86_64';
}

/**
 * What the guest kernel skips at boot, measured under TCG (docs/vm.md): the crypto self-tests
 * (~0.7 s of crypto_algapi_init, plus crc32c's when ext4 loads), probing 32 legacy UARTs for one
 * console, and the IO-APIC timer check. Only words the kernel itself knows: anything else would reach
 * init as an argument (dotted module parameters never do).
 */
const FAST_BOOT: Record<Arch, string[]> = {
  x86_64: ['cryptomgr.notests', '8250.nr_uarts=1', 'no_timer_check'],
  aarch64: ['cryptomgr.notests'],
};

/** The kernel's command line: the serial console, panic → exit, boot shortcuts, and settings for envy-init. */
export function kernelCommandLine(plan: Pick<QemuPlan, 'arch' | 'hostname' | 'bootSocket'>): string {
  const console = plan.arch === 'aarch64' ? 'ttyAMA0' : 'ttyS0';
  // ENVY_HOSTNAME reaches init as an environment variable (the kernel passes on NAME=VALUE words it does not know).
  const hostname = plan.bootSocket ? [] : [`ENVY_HOSTNAME=${plan.hostname.replace(/[^A-Za-z0-9.-]/g, '-').slice(0, 63)}`];
  return [`console=${console}`, 'panic=-1', 'quiet', 'loglevel=4', ...FAST_BOOT[plan.arch], ...hostname].join(' ');
}

/**
 * The x86_64 CPU under TCG: x86-64-v2 (what RHEL 9 and its kin require), not `max`. With `max` the
 * guest kernel boots markedly slower under emulation (~3 s of ~10 s in A/B runs on a loaded 2-core
 * host), and v3 cannot be had anyway (TCG in qemu 7.2 lacks FMA).
 */
export const TCG_X86_CPU = 'qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16';

/**
 * qboot, qemu's minimal firmware (Debian's qemu-system-data ships it), instead of SeaBIOS for x86_64:
 * it only loads the kernel through fw_cfg and passes qemu's ACPI tables on, ~0.3 s sooner under TCG
 * (A/B on a quiet host: 3.52-3.68 s vs 3.72-4.00 s to the agent's answer). SeaBIOS where it is missing.
 */
export const QBOOT = '/usr/share/qemu/qboot.rom';

function firmware(arch: Arch): string[] {
  return arch === 'x86_64' && existsSync(QBOOT) ? ['-bios', QBOOT] : [];
}

export function qemuArgs(plan: QemuPlan): string[] {
  const machine =
    plan.arch === 'aarch64'
      ? ['-machine', `virt,accel=${plan.accel}`, '-cpu', plan.accel === 'kvm' ? 'host' : 'cortex-a57']
      : ['-machine', `q35,accel=${plan.accel}`, '-cpu', plan.accel === 'kvm' ? 'host' : TCG_X86_CPU];
  // Only loopback: a forwarded port is never reachable from the network.
  const forwards = plan.ports.map((p) => `,hostfwd=${p.protocol}:127.0.0.1:${p.host}-:${p.container}`).join('');
  return [
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    ...machine,
    ...firmware(plan.arch),
    '-m',
    `${Math.max(128, Math.floor(plan.memory / (1024 * 1024)))}M`,
    '-smp',
    String(plan.cpus),
    '-kernel',
    plan.kernel,
    '-initrd',
    plan.initrd,
    '-append',
    kernelCommandLine(plan),
    '-chardev',
    `file,id=console0,path=${plan.serialLog},append=on`,
    '-serial',
    'chardev:console0',
    '-drive',
    `file=${plan.disk},format=qcow2,if=none,id=disk0,cache=writeback,discard=unmap`,
    '-device',
    'virtio-blk-pci,drive=disk0',
    '-device',
    'virtio-serial-pci',
    ...plan.agentSockets.flatMap((socket, index) => [
      '-chardev',
      `socket,id=agent${index},path=${socket},server=on,wait=off`,
      '-device',
      `virtserialport,chardev=agent${index},name=envy.${index}`,
    ]),
    ...(plan.syncSocket ? ['-chardev', `socket,id=sync0,path=${plan.syncSocket},server=on,wait=off`, '-device', `virtserialport,chardev=sync0,name=${SYNC_PORT_NAME}`] : []),
    ...ninepQemuArgs(plan.shares ?? []),
    ...bootGateArgs(plan),
    ...(plan.network ? ['-netdev', `user,id=net0${forwards}`, '-device', 'virtio-net-pci,netdev=net0'] : []),
    '-qmp',
    `unix:${plan.qmpSocket},server=on,wait=off`,
    '-pidfile',
    plan.pidFile,
  ];
}
