/**
 * One layer worker (`layer-worker.js jobs`, root in the user namespace) for all of a build's snapshots and
 * removals. It is started when the build begins, so its Node start overlaps the first step's run; a worker
 * per step cost a namespace and a Node start each, which on a small step was most of the step's time.
 */
import { EnvyError } from '../errors.js';
import { startProcess } from '../exec.js';
import { ensureHelper } from '../runtime/namespace/helper.js';
import type { Identity } from '../runtime/types.js';
import { readWorkerAnswers } from './unpack-protocol.js';
import { workerPath, type LayerSnapshot } from './userns.js';

type Worker = Awaited<ReturnType<typeof startProcess>>;

export class LayerJobSession {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (result: unknown) => void; reject: (error: Error) => void }>();
  private failure: Error | undefined;
  private closed = false;

  private constructor(private readonly worker: Worker) {
    void this.readAnswers();
    worker.done.then(
      () => this.fail(new EnvyError('INTERNAL', 'the layer worker exited with jobs pending')),
      (error: unknown) => this.fail(error instanceof Error ? error : new Error(String(error))),
    );
  }

  /** Starts the worker; a failure to start surfaces at the first job. */
  static start(identity: Pick<Identity, 'uid' | 'gid'>): Promise<LayerJobSession> {
    return Promise.resolve().then(() => startProcess(ensureHelper(), ['userns', '--keep-id', `${identity.uid}:${identity.gid}`, '--', process.execPath, workerPath(), 'jobs'], {
      errorCode: 'BUILD',
      hint: 'layer work failed inside the user namespace',
    })).then((worker) => new LayerJobSession(worker));
  }

  /** As snapshotInUserNamespace (userns.ts), in this session's worker. */
  snapshot(dir: string, sourceDateEpoch: number | undefined, options: { layersDir: string; remove: string[] }): Promise<LayerSnapshot> {
    return this.call<LayerSnapshot>('snapshot', [dir, sourceDateEpoch === undefined ? '' : String(sourceDateEpoch), options.layersDir, ...options.remove]);
  }

  /** As removeInUserNamespace (userns.ts), in this session's worker. */
  async remove(paths: string[]): Promise<void> {
    if (paths.length > 0) await this.call('remove', paths);
  }

  /** Let the worker finish its jobs and exit. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.worker.stdin.end();
    await this.worker.done.catch(() => undefined);
  }

  private call<T>(job: string, args: string[]): Promise<T> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    const answered = new Promise<unknown>((resolve, reject) => this.waiting.set(id, { resolve, reject }));
    this.worker.stdin.write(`${JSON.stringify({ id, job, args })}\n`);
    return answered as Promise<T>;
  }

  private async readAnswers(): Promise<void> {
    await readWorkerAnswers(this.worker.stdout, (answer) => {
      const waiter = this.waiting.get(answer.id);
      this.waiting.delete(answer.id);
      if (answer.error === undefined) waiter?.resolve(answer.result);
      else waiter?.reject(new EnvyError('BUILD', answer.error, { hint: 'layer work failed inside the user namespace' }));
    });
  }

  private fail(error: Error): void {
    this.failure ??= error;
    for (const waiter of this.waiting.values()) waiter.reject(this.failure);
    this.waiting.clear();
  }
}
