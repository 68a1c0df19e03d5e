/**
 * envy's initramfs: an uncompressed newc cpio holding the static stage-1 init (native/envy-init.c)
 * as /init, the kernel modules the root disk and the agent channel need (in load order), the
 * agent binary when there is one, and /envy/init.conf telling init what to do. No device nodes:
 * init mounts devtmpfs first. Written by hand (the format is a header and the bytes, padded to 4)
 * so no cpio program is needed.
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';

export interface InitramfsEntry {
  path: string;
  /** File bytes, or undefined for a directory. */
  data?: Buffer;
  mode: number;
}

function pad4(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4);
}

function header(ino: number, mode: number, size: number, nameLength: number): Buffer {
  const fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, nameLength, 0];
  return Buffer.from(`070701${fields.map((f) => f.toString(16).padStart(8, '0')).join('')}`, 'latin1');
}

export function cpio(entries: InitramfsEntry[]): Buffer {
  const parts: Buffer[] = [];
  let offset = 0;
  const push = (buffer: Buffer): void => {
    parts.push(buffer);
    offset += buffer.length;
  };
  const add = (ino: number, path: string, mode: number, data: Buffer | undefined): void => {
    const name = Buffer.from(`${path}\0`, 'utf8');
    push(header(ino, mode, data?.length ?? 0, name.length));
    push(name);
    push(pad4(offset));
    if (data) {
      push(data);
      push(pad4(offset));
    }
  };
  entries.forEach((entry, index) => add(index + 1, entry.path, entry.data ? 0o100000 | entry.mode : 0o040000 | entry.mode, entry.data));
  add(0, 'TRAILER!!!', 0, undefined);
  return Buffer.concat(parts);
}

export interface InitConfig {
  /** Module files on the host, in load order. */
  modules: string[];
  /** The agent binary on the host, when there is one. */
  agent?: string;
  init: string;
  /** How many virtio-serial ports (envy.0, envy.1, ...) the agent serves; default 1. */
  agentPorts?: number;
  hostname?: string;
  /** eth0's address/prefix and gateway (qemu user networking: 10.0.2.15/24 via 10.0.2.2). */
  net?: { address: string; gateway: string };
  /** The virtio-serial port of the boot gate, where the machine may be saved and resumed (snapshot.ts). */
  bootPort?: string;
}

export const AGENT_PORT_NAME = 'envy.0';

export function buildInitramfs(config: InitConfig): Buffer {
  const entries: InitramfsEntry[] = [
    { path: 'init', data: readFileSync(config.init), mode: 0o755 },
    { path: 'envy', mode: 0o755 },
    { path: 'modules', mode: 0o755 },
  ];
  const conf: string[] = ['root /dev/vda', `port ${AGENT_PORT_NAME}`];
  config.modules.forEach((file, index) => {
    const path = `modules/${String(index).padStart(2, '0')}-${basename(file)}`;
    entries.push({ path, data: readFileSync(file), mode: 0o644 });
    conf.push(`module /${path}`);
  });
  if (config.agent) {
    entries.push({ path: 'envy/agent', data: readFileSync(config.agent), mode: 0o755 });
    conf.push('agent /envy/agent');
    for (let index = 1; index < (config.agentPorts ?? 1); index++) conf.push(`agent-port envy.${index}`);
  }
  if (config.hostname) conf.push(`hostname ${config.hostname}`);
  if (config.net) conf.push(`net ${config.net.address} ${config.net.gateway}`);
  if (config.bootPort) conf.push(`boot-port ${config.bootPort}`);
  entries.push({ path: 'envy/init.conf', data: Buffer.from(`${conf.join('\n')}\n`), mode: 0o644 });
  return cpio(entries);
}
