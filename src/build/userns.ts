/**
 * Layer work that must happen as root inside the user namespace: reading a
 * step's upper dir (files owned by subordinate ids, some unreadable to the
 * host user) and unpacking tarballs with their owners. Both run the bundled
 * layer worker under `envy-ns userns` with the same keep-id map as the runtime,
 * so an owner means the same thing when a layer is written and when it is run.
 */
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { EnvyError } from '../errors.js';
import { run, runWithInput, startProcess } from '../exec.js';
import type { ExportResult } from '../image/export.js';
import type { ExtractResult } from '../image/extract.js';
import { fileRangeOf } from '../image/file-range.js';
import { packageRoot } from '../package-root.js';
import { ensureHelper } from '../runtime/namespace/helper.js';
import type { Identity } from '../runtime/types.js';
import type { VmDiskResult } from '../runtime/vm/disk-worker.js';
import { encodeFrame, encodeFrameParts, FrameType, readWorkerAnswers, type UnpackJob } from './unpack-protocol.js';

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

export function workerPath(): string {
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

/**
 * One layer worker that unpacks every layer of a pull or an import, as they stream in (frames over its
 * stdin: unpack-protocol.ts). A worker per layer meant a namespace and a Node start per layer, which
 * under load cost more than unpacking a small layer. Close it when the base is in the store.
 */
export class UnpackSession {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (result: ExtractResult) => void; reject: (error: Error) => void }>();
  private failure: Error | undefined;

  private constructor(private readonly worker: Awaited<ReturnType<typeof startProcess>>) {
    void this.readAnswers();
    worker.done.then(
      () => this.fail(new EnvyError('INTERNAL', 'the layer worker exited with unpacks pending')),
      (error: unknown) => this.fail(error instanceof Error ? error : new Error(String(error))),
    );
  }

  static async start(identity: Pick<Identity, 'uid' | 'gid'>): Promise<UnpackSession> {
    const worker = await startProcess(ensureHelper(), ['userns', '--keep-id', `${identity.uid}:${identity.gid}`, '--', process.execPath, workerPath(), 'unpack-session'], {
      errorCode: 'BUILD',
      hint: 'unpacking failed inside the user namespace',
    });
    return new UnpackSession(worker);
  }

  /** An Unpacker (store.ts) that hands the layer to this session's worker. */
  readonly unpack = async (source: string | NodeJS.ReadableStream, dest: string, options: { label: string; expectedDiffId?: string }): Promise<ExtractResult> => {
    if (this.failure) throw this.failure;
    const id = this.nextId++;
    const answered = new Promise<ExtractResult>((resolve, reject) => this.waiting.set(id, { resolve, reject }));
    // A range of a file (an archive member) is read by the worker itself: its bytes never cross the pipe.
    const range = fileRangeOf(source);
    const file = typeof source === 'string' ? { path: source } : range ? { path: range.path, range: { start: range.start, end: range.end } } : {};
    const job: UnpackJob = { ...file, dest, label: options.label, ...(options.expectedDiffId ? { expectedDiffId: options.expectedDiffId } : {}) };
    await this.send(encodeFrame(FrameType.Start, id, Buffer.from(JSON.stringify(job))));
    if (range) (source as NodeJS.ReadableStream & { destroy(): void }).destroy();
    if (typeof source === 'string' || range) return answered;
    let inputError: unknown;
    try {
      for await (const chunk of source) {
        if (this.failure) break;
        await this.sendParts(encodeFrameParts(FrameType.Data, id, Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk)));
      }
      await this.send(encodeFrame(FrameType.End, id));
    } catch (error) {
      inputError = error;
      await this.send(encodeFrame(FrameType.Abort, id, Buffer.from(error instanceof Error ? error.message : String(error)))).catch(() => undefined);
    }
    // Wait for the worker's answer even when the input failed: it is still removing what it wrote.
    const result = await answered.catch((error: unknown) => {
      throw inputError ?? error;
    });
    if (inputError) throw inputError;
    return result;
  };

  /** Let the worker finish what it has and exit. */
  async close(): Promise<void> {
    this.worker.stdin.end();
    await this.worker.done.catch(() => undefined);
  }

  private async send(frame: Buffer): Promise<void> {
    if (this.failure) throw this.failure;
    if (!this.worker.stdin.write(frame)) await once(this.worker.stdin as unknown as NodeJS.EventEmitter, 'drain');
  }

  /** A data frame as two writes in one writev: the payload (a download's chunk) is not copied. */
  private async sendParts([header, payload]: [Buffer, Buffer]): Promise<void> {
    if (this.failure) throw this.failure;
    const stdin = this.worker.stdin as unknown as NodeJS.WritableStream & { cork(): void; uncork(): void };
    stdin.cork();
    stdin.write(header);
    const ready = stdin.write(payload);
    stdin.uncork();
    if (!ready) await once(stdin as unknown as NodeJS.EventEmitter, 'drain');
  }

  private async readAnswers(): Promise<void> {
    await readWorkerAnswers(this.worker.stdout, (answer) => {
      const waiter = this.waiting.get(answer.id);
      this.waiting.delete(answer.id);
      if (answer.result) waiter?.resolve(answer.result as ExtractResult);
      else waiter?.reject(new EnvyError('BUILD', answer.error ?? 'the layer worker failed', { hint: 'unpacking failed inside the user namespace' }));
    });
  }

  private fail(error: Error): void {
    this.failure ??= error;
    for (const waiter of this.waiting.values()) waiter.reject(this.failure);
    this.waiting.clear();
  }
}
