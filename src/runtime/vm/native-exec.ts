/**
 * `envy exec` into a running VM as the exec fast path does it: this process becomes dist/envy-vm-exec
 * (native/envy-vm-exec.c), the agent client in C, as it becomes envy-ns for a namespace environment.
 * Kept apart from channel.ts so that this path loads neither the agent client nor node:net: it reads
 * the VM's state file and execve's.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { packageRoot } from '../../package-root.js';
import { environmentPaths } from '../../state/environments.js';
import { replaceProcessWithEnv } from '../namespace/node-addon.js';
import { isInitAlive } from '../namespace/state.js';
import type { EnvironmentConfig, ProcessSpec } from '../types.js';
import type { VmState } from './channel.js';

/**
 * Become the C client for `spec` in the running VM of `config.id`. It takes a port the way
 * connectAgent does (the same lock files) and reports failures as execInVm does. Returns false,
 * having done nothing, when it cannot: no client built, no addon, no running VM with the agent
 * (the fallback shell channel), or ENVY_VM_EXEC_NODE=1; the caller then runs the Node client.
 */
export function replaceWithNativeExec(config: EnvironmentConfig, spec: ProcessSpec): false {
  if (process.env.ENVY_VM_EXEC_NODE === '1') return false;
  const client = join(packageRoot(), 'dist', 'envy-vm-exec');
  if (!existsSync(client)) return false;
  let state: VmState;
  try {
    state = JSON.parse(readFileSync(join(environmentPaths(config.id).run, 'vm.json'), 'utf8')) as VmState;
  } catch {
    return false;
  }
  if (!state.ready || state.channel !== 'agent' || !isInitAlive({ pid: state.pid, startTime: state.startTime })) return false;
  const user = spec.root ? { uid: 0, gid: 0 } : { uid: spec.identity?.uid ?? config.user?.uid ?? 0, gid: spec.identity?.gid ?? config.user?.gid ?? 0 };
  const args = ['--run', dirname(state.agentSocket), '--ports', String(state.agentPorts ?? 1), '--id', config.id, '--uid', String(user.uid), '--gid', String(user.gid)];
  if (spec.cwd) args.push('--cwd', spec.cwd);
  if (spec.tty) args.push('--tty');
  return replaceProcessWithEnv(client, [...args, '--', ...spec.argv], Object.entries(spec.env).map(([k, v]) => `${k}=${v}`));
}
