/**
 * Resource limits. With cgroup v2 delegation (a writable cgroup of ours with the memory and pids
 * controllers enabled for children) envy makes a child cgroup per environment; without it — the
 * common case for unprivileged users outside systemd sessions — only rlimits apply, and envy says so.
 */
import { accessSync, constants, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { EnvironmentConfig } from '../types.js';

export type CgroupSupport = { kind: 'delegated'; dir: string } | { kind: 'none'; reason: string };

let cached: CgroupSupport | undefined;

export function detectCgroupDelegation(): CgroupSupport {
  if (cached) return cached;
  const root = '/sys/fs/cgroup';
  if (!existsSync(join(root, 'cgroup.controllers'))) return (cached = { kind: 'none', reason: 'cgroup v2 is not the unified hierarchy here' });
  let own: string | undefined;
  try {
    own = readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((line) => line.startsWith('0::'))?.slice(3);
  } catch {
    own = undefined;
  }
  if (own === undefined) return (cached = { kind: 'none', reason: 'this process is in no cgroup v2 group' });
  const dir = join(root, own);
  try {
    accessSync(dir, constants.W_OK);
    const enabled = readFileSync(join(dir, 'cgroup.subtree_control'), 'utf8').split(/\s+/);
    if (!enabled.includes('memory') || !enabled.includes('pids')) return (cached = { kind: 'none', reason: `${dir} does not delegate the memory and pids controllers` });
  } catch {
    return (cached = { kind: 'none', reason: `${dir} is not writable by this user (no cgroup delegation)` });
  }
  return (cached = { kind: 'delegated', dir });
}

/** A child cgroup carrying the environment's limits, or undefined when there is no delegation. */
export function prepareCgroup(config: EnvironmentConfig, support: CgroupSupport): string | undefined {
  if (support.kind !== 'delegated') return undefined;
  const { memory, pids, cpus } = config.resources;
  if (memory === undefined && pids === undefined && cpus === undefined) return undefined;
  const dir = join(support.dir, `envy-${config.id}`);
  mkdirSync(dir, { recursive: true });
  if (memory !== undefined) writeFileSync(join(dir, 'memory.max'), String(memory));
  if (pids !== undefined) writeFileSync(join(dir, 'pids.max'), String(pids));
  if (cpus !== undefined) writeFileSync(join(dir, 'cpu.max'), `${Math.round(cpus * 100000)} 100000`);
  return dir;
}

/** rlimit flags approximating `resources` (RLIMIT_DATA for memory: RLIMIT_AS breaks JITs that reserve address space). */
export function rlimitArgs(config: EnvironmentConfig): string[] {
  const args: string[] = [];
  const { memory, pids } = config.resources;
  if (memory !== undefined) args.push('--rlimit', `data=${memory}`);
  if (pids !== undefined) args.push('--rlimit', `nproc=${pids}`);
  return args;
}

const warned = new Set<string>();

/** What happens to each limit without cgroups (shared by the warning and `envy doctor`). */
export function rlimitFallback(resources: { memory?: unknown; pids?: unknown; cpus?: unknown }): string {
  const parts: string[] = [];
  if (resources.memory !== undefined) parts.push('memory is approximated with RLIMIT_DATA per process');
  if (resources.pids !== undefined) parts.push('pids with RLIMIT_NPROC');
  if (resources.cpus !== undefined) parts.push('cpus is not enforced');
  return parts.join(', ');
}

/** The one-line warning when limits were asked for but cgroups cannot enforce them. */
export function limitsWarning(config: EnvironmentConfig, support: CgroupSupport): string | undefined {
  const { memory, pids, cpus } = config.resources;
  if (support.kind === 'delegated' || (memory === undefined && pids === undefined && cpus === undefined)) return undefined;
  const message = `envy: warning: cgroup limits are unavailable (${support.reason}): ${rlimitFallback(config.resources)}\n`;
  if (warned.has(message)) return undefined;
  warned.add(message);
  return message;
}
