/**
 * `envy exec [-e K=V]... [-w DIR] [--root] [-f FILE] -- CMD...` into a running environment whose
 * env.yaml has not changed since `up`: no yargs, no yaml, no validation, no plan, no store. The
 * environment record holds what the process needs, and env.yaml's stat (or, when that moved, its
 * bytes' digest) proves it current. Anything else (an option this does not know, no record, an edited
 * env.yaml, a stopped environment) returns undefined and the full CLI takes over.
 *
 * This module is bundled on its own as CommonJS (dist/exec-fast.cjs), loaded by bin/envy.js before
 * anything else: that path must cost little more than Node's own start, and an ES module graph costs
 * the ESM loader plus a file per chunk (~25 ms measured).
 */
import { readFileSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { findSpecFile } from '../config/find.js';
import { NamespaceRuntime } from '../runtime/namespace/runtime.js';
import { isTerminal } from '../runtime/namespace/node-addon.js';
import { listRecords, type EnvironmentRecord } from '../state/environments.js';
import { reportError } from './report.js';

export interface FastExecArgs {
  file?: string;
  argv: string[];
  env: Record<string, string>;
  workdir?: string;
  root: boolean;
}

/** The options `envy exec` takes, parsed strictly; undefined for anything else (yargs then reports it). */
export function parseFastExecArgs(args: string[]): FastExecArgs | undefined {
  if (args[0] !== 'exec') return undefined;
  const separator = args.indexOf('--');
  if (separator < 0 || separator === args.length - 1) return undefined;
  const options: FastExecArgs = { env: {}, root: false, argv: args.slice(separator + 1) };
  for (let i = 1; i < separator; i++) {
    const flag = args[i]!;
    const value = args[i + 1];
    const hasValue = value !== undefined && i + 1 < separator;
    if (flag === '--root') options.root = true;
    else if ((flag === '-e' || flag === '--env') && hasValue && value.indexOf('=') > 0) {
      options.env[value.slice(0, value.indexOf('='))] = value.slice(value.indexOf('=') + 1);
      i++;
    } else if ((flag === '-w' || flag === '--workdir') && hasValue) {
      options.workdir = value;
      i++;
    } else if ((flag === '-f' || flag === '--file') && hasValue) {
      options.file = value;
      i++;
    } else return undefined;
  }
  return options;
}

function specUnchanged(file: string, record: EnvironmentRecord): boolean {
  const stats = statSync(file);
  const known = record.specStat;
  // ctime cannot be set by anyone but the kernel: with size, mtime and inode equal, the bytes are too.
  if (known && known.size === stats.size && known.mtimeMs === stats.mtimeMs && known.ctimeMs === stats.ctimeMs && known.ino === stats.ino) return true;
  // node:crypto costs ~9 ms to load: only when the stat moved (a touch, a checkout) do the bytes decide.
  const { createHash } = process.getBuiltinModule('node:crypto');
  return createHash('sha256').update(readFileSync(file)).digest('hex') === record.specDigest;
}

/** The record of the project's environment when env.yaml has not changed since `up`, else undefined. */
export function currentRecord(specFile: string | undefined): EnvironmentRecord | undefined {
  try {
    const file = specFile ? resolve(specFile) : findSpecFile(process.cwd());
    const record = listRecords().find((r) => r.specFile === file && r.projectDir === dirname(file));
    return record?.exec && specUnchanged(file, record) ? record : undefined;
  } catch {
    return undefined;
  }
}

/**
 * `replace`: become the helper instead of spawning it (bin/envy.js's own path, where nothing follows
 * the workload; the full CLI spawns, so --debug still records the helper's command line).
 */
export async function tryFastExec(args: FastExecArgs, { replace = false } = {}): Promise<number | undefined> {
  const record = currentRecord(args.file);
  if (!record?.exec) return undefined;
  const { identity, workdir, env, resources } = record.exec;
  const config = { id: record.id, hostname: record.name, rootfs: { layers: [] }, mounts: [], network: 'host' as const, user: identity, resources };
  const base = args.root ? { ...env, HOME: '/root', USER: 'root', LOGNAME: 'root' } : env;
  const term: Record<string, string> = process.env.TERM ? { TERM: process.env.TERM } : {};
  const spec = {
    argv: args.argv,
    env: { ...base, ...term, ...args.env },
    cwd: args.workdir ?? workdir,
    root: args.root,
    identity,
    // process.stdin would build a stream (~4 ms), node:tty loads node:net: ask the fds.
    tty: isTerminal(0) && isTerminal(1),
  };
  if (record.backend === 'vm') {
    // Become the agent client in C (like the helper below); this returns only when that cannot be.
    if (replace) (await import('../runtime/vm/native-exec.js')).replaceWithNativeExec(config, spec);
    // Only the channel and the agent client: qemu, disks and the initramfs stay out of this path.
    const { execInVm, runningVmState } = await import('../runtime/vm/channel.js');
    const state = runningVmState(record.id);
    return state ? execInVm(config, state, spec, process) : undefined;
  }
  const runtime = new NamespaceRuntime();
  if (!runtime.isRunning(config)) return undefined;
  // This returns only when the process cannot be replaced here (no addon): then spawn.
  if (replace) runtime.execReplacingProcess(config, spec);
  return runtime.exec(config, spec);
}

/** bin/envy.js's entry: the exit code, or undefined to hand over to the full CLI. */
export async function runFastExec(argv: string[]): Promise<number | undefined> {
  const args = parseFastExecArgs(argv);
  if (!args) return undefined;
  try {
    return await tryFastExec(args, { replace: true });
  } catch (error) {
    return reportError(error, false);
  }
}
