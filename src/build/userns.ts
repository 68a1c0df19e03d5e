/**
 * Layer work that must happen as root inside the user namespace: reading a
 * step's upper dir (files owned by subordinate ids, some unreadable to the
 * host user) and unpacking tarballs with their owners. Both run the bundled
 * layer worker under `envy-ns userns` with the same keep-id map as the runtime,
 * so an owner means the same thing when a layer is written and when it is run.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { EnvyError } from '../errors.js';
import { run, runWithInput } from '../exec.js';
import type { ExportResult } from '../image/export.js';
import type { ExtractResult } from '../image/extract.js';
import { packageRoot } from '../package-root.js';
import { ensureHelper } from '../runtime/namespace/helper.js';
import type { Identity } from '../runtime/types.js';
import type { VmDiskResult } from '../runtime/vm/disk-worker.js';

/** A directory's identity as a layer: the digest of its deterministic tar (image/export.ts tarTree). */
export interface LayerSnapshot {
  diffId: string;
  /** The store already had this layer (in `layersDir`): the snapshotted tree was removed instead of kept. */
  existing: boolean;
  size: number;
  entries: number;
  whiteouts: string[];
  opaqueDirs: string[];
}

function workerPath(): string {
  const path = join(packageRoot(), 'dist', 'layer-worker.js');
  if (!existsSync(path)) throw new EnvyError('INTERNAL', `${path} is missing`, { hint: 'run `npm run build` in the envy checkout' });
  return path;
}

async function inUserNamespace<T>(identity: Pick<Identity, 'uid' | 'gid'>, args: string[], what: string, input?: NodeJS.ReadableStream): Promise<T> {
  const helper = ensureHelper();
  const argv = ['userns', '--keep-id', `${identity.uid}:${identity.gid}`, '--', process.execPath, workerPath(), ...args];
  const options = { errorCode: 'BUILD' as const, hint: `${what} failed inside the user namespace` };
  const result = input ? await runWithInput(helper, argv, input, options) : await run(helper, argv, options);
  try {
    return JSON.parse(String(result.stdout).trim().split('\n').pop() ?? '') as T;
  } catch {
    throw new EnvyError('INTERNAL', `${what}: the layer worker answered ${JSON.stringify(String(result.stdout).slice(0, 200))}`);
  }
}

/**
 * The diff_id of `dir`'s deterministic tar, its mtimes then clamped to the epoch; in the same run, the
 * `remove` trees go, and so does `dir` when `layersDir` already holds a layer with that diff_id.
 */
export function snapshotInUserNamespace(
  identity: Pick<Identity, 'uid' | 'gid'>,
  dir: string,
  sourceDateEpoch: number | undefined,
  options: { layersDir: string; remove: string[] },
): Promise<LayerSnapshot> {
  const epoch = sourceDateEpoch === undefined ? '' : String(sourceDateEpoch);
  return inUserNamespace(identity, ['snapshot', dir, epoch, options.layersDir, ...options.remove], `snapshot of ${dir}`);
}

/**
 * Unpack a layer with its owners. A stream (a download, an archive member) is fed to the worker's stdin:
 * it is unpacked while it arrives, never copied to a file first.
 */
export function unpackInUserNamespace(identity: Pick<Identity, 'uid' | 'gid'>, source: string | NodeJS.ReadableStream, dest: string, label: string, expectedDiffId?: string): Promise<ExtractResult> {
  const args = ['unpack', typeof source === 'string' ? source : '-', dest, label, ...(expectedDiffId ? [expectedDiffId] : [])];
  return inUserNamespace(identity, args, `unpacking ${label}`, typeof source === 'string' ? undefined : source);
}

/** Remove trees that hold files of subordinate owners (the host user alone cannot). */
export async function removeInUserNamespace(identity: Pick<Identity, 'uid' | 'gid'>, paths: string[]): Promise<void> {
  if (paths.length === 0) return;
  await inUserNamespace(identity, ['remove', ...paths], `removing ${paths.join(', ')}`);
}

export async function ownByRootInUserNamespace(identity: Pick<Identity, 'uid' | 'gid'>, dir: string): Promise<void> {
  await inUserNamespace(identity, ['own-by-root', dir], `chowning ${dir} to root`);
}

/** Export an image from inside the namespace (its layers' owners are only right there); the output is the user's. */
export function exportInUserNamespace(
  identity: Pick<Identity, 'uid' | 'gid'>,
  storeRoot: string,
  imageKey: string,
  target: { oci: string } | { dockerArchive: string },
  tag: string | undefined,
): Promise<ExportResult> {
  const [kind, path] = 'oci' in target ? ['oci', target.oci] : ['docker-archive', target.dockerArchive];
  return inUserNamespace(identity, ['export', storeRoot, imageKey, kind, path, tag ?? '', `${identity.uid}:${identity.gid}`], `exporting to ${path}`);
}

/** The VM root disk, kernel and modules of an image (runtime/vm/disk-worker.ts); `lowers` top first. */
export function vmDiskInUserNamespace(identity: Pick<Identity, 'uid' | 'gid'>, out: string, lowers: string[]): Promise<VmDiskResult> {
  return inUserNamespace(identity, ['vm-disk', out, `${identity.uid}:${identity.gid}`, ...lowers], `building the VM disk in ${out}`);
}
