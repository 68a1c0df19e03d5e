/**
 * Runs as root inside a user namespace (started by `envy-ns userns`), where a
 * layer's files have the owners the image gives them and every file can be
 * read and chowned. Each job answers with one JSON line on stdout:
 *   snapshot DIR EPOCH LAYERS [REMOVE...]  the deterministic tar digest of DIR (a step's upper dir, already
 *                        where the layer will live); DIR's mtimes clamped to EPOCH, or DIR removed when
 *                        LAYERS/<hex>/meta.json shows the store has that layer; the REMOVE trees removed
 *   unpack TAR DEST LABEL [DIFFID]  a layer tarball (`-`: stdin, streamed from a download or an archive)
 *                        extracted with its owners into DEST; with DIFFID, a tar of any other content is refused
 *   unpack-session       several layers unpacked at once from one stdin (unpack-protocol.ts frames); one
 *                        JSON line per layer as each finishes: {id, result} or {id, error}
 *   remove PATH...       trees with files of subordinate owners (overlay work dirs, layers)
 *   jobs                 snapshot and remove jobs as JSON lines on stdin, one answer line each (a build's worker)
 *   own-by-root DIR      every entry of DIR chowned to 0:0 (layers made by the host user)
 *   export STORE KEY oci|docker-archive PATH TAG UID:GID  the image exported with the owners its layers
 *                        mean, the output then handed to UID:GID (the invoking user, mapped inside)
 *   vm-disk OUT UID:GID LOWER...  the VM's ext4 root disk, kernel and modules from the image's layers
 *                        (runtime/vm/disk-worker.ts), handed to UID:GID
 * Errors go to stderr as one line and exit 1.
 */
import { createReadStream, existsSync, lchownSync, lstatSync, lutimesSync, readdirSync } from 'node:fs';
import { once } from 'node:events';
import { join } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { extractLayer, removeTree } from '../image/extract.js';
import { exportImage, tarTree } from '../image/export.js';
import { LayerStore } from '../image/store.js';
import { vmDiskJob } from '../runtime/vm/disk-worker.js';
import { FrameType, readFrames, type UnpackJob } from './unpack-protocol.js';
import type { LayerSnapshot } from './userns.js';

function clampMtimes(path: string, epoch: number): void {
  const stat = lstatSync(path);
  if (stat.isDirectory()) for (const name of readdirSync(path)) clampMtimes(join(path, name), epoch);
  if (stat.mtimeMs > epoch * 1000) lutimesSync(path, epoch, epoch);
}

/**
 * Serve the unpack jobs framed on stdin (see unpack-protocol.ts) until it closes. The layers are unpacked
 * concurrently in this one process: creating files is what costs, and it does not go faster in parallel
 * on one filesystem, but starting one worker per layer (a namespace and a Node each) did cost.
 */
/** A job's file source: the file, or a member's byte range of it (read here, not streamed over stdin). */
function jobSource(job: UnpackJob): string | Readable | undefined {
  if (job.path === undefined || !job.range) return job.path;
  return createReadStream(job.path, { start: job.range.start, end: job.range.end });
}

async function unpackSession(): Promise<undefined> {
  const streams = new Map<number, PassThrough>();
  const finished = new Map<number, Promise<void>>();
  const answer = (line: object): void => void process.stdout.write(`${JSON.stringify(line)}\n`);
  const start = (id: number, job: UnpackJob): void => {
    const stream = job.path === undefined ? new PassThrough() : undefined;
    if (stream) streams.set(id, stream);
    const work = extractLayer(jobSource(job) ?? stream!, job.dest, { label: job.label, chown: true, ...(job.expectedDiffId ? { expectedDiffId: job.expectedDiffId } : {}) }).then(
      (result) => answer({ id, result }),
      (error: unknown) => answer({ id, error: (error instanceof Error ? error.message : String(error)).split('\n')[0] }),
    );
    // A job that stopped reading (it failed) must not hold up the frames of the others.
    finished.set(id, work.finally(() => streams.get(id)?.resume()));
  };
  for await (const frame of readFrames(process.stdin)) {
    const stream = streams.get(frame.id);
    switch (frame.type) {
      case FrameType.Start:
        start(frame.id, JSON.parse(frame.payload.toString('utf8')) as UnpackJob);
        break;
      case FrameType.Data:
        if (stream && !stream.write(frame.payload)) await Promise.race([once(stream, 'drain'), finished.get(frame.id)]);
        break;
      case FrameType.End:
        stream?.end();
        break;
      case FrameType.Abort:
        stream?.destroy(new Error(frame.payload.toString('utf8')));
        break;
    }
  }
  await Promise.all(finished.values());
  return undefined;
}

async function snapshot(args: string[]): Promise<LayerSnapshot> {
  const [dir, epochArg, layersDir, ...removals] = args as [string, string, string, ...string[]];
  const epoch = epochArg === '' ? undefined : Number(epochArg);
  // Running as root in the namespace, lstat shows the owners the image means: record them as they are.
  const tree = await tarTree(dir, { chowned: true, owners: {}, strippedModes: {} }, undefined, { gzip: false, sourceDateEpoch: epoch });
  // Overlay leaves work/work at mode 000: removeTree opens it up.
  for (const path of removals) removeTree(path);
  const existing = existsSync(join(layersDir, tree.diffId.slice('sha256:'.length), 'meta.json'));
  if (existing) removeTree(dir);
  // The tar clamped mtimes to the epoch; clamp the tree too, so the stored layer re-tars (envy export)
  // to the very diff_id it is recorded under.
  else if (epoch !== undefined) clampMtimes(dir, epoch);
  return { diffId: tree.diffId, existing, size: tree.size, entries: tree.entries, whiteouts: tree.whiteouts, opaqueDirs: tree.opaqueDirs };
}

function remove(paths: string[]): { removed: number } {
  // Overlay leaves work/work at mode 000 and layers may hold read-only dirs: removeTree opens them up.
  for (const path of paths) removeTree(path);
  return { removed: paths.length };
}

/**
 * A build's snapshot and remove jobs, one JSON line each on stdin ({id, job, args}), answered one JSON line
 * each ({id, result} or {id, error}), in order, until stdin closes. One worker serves a whole build: a
 * worker per step cost a user namespace and a Node start each (0.2-0.6 s), more than snapshotting a
 * small step's layer.
 */
async function jobSession(): Promise<undefined> {
  let pending = '';
  for await (const chunk of process.stdin) {
    pending += (chunk as Buffer).toString('utf8');
    let newline: number;
    while ((newline = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, newline);
      pending = pending.slice(newline + 1);
      if (!line.trim()) continue;
      const { id, job, args } = JSON.parse(line) as { id: number; job: string; args: string[] };
      let answer: object;
      try {
        if (job === 'snapshot' && args.length >= 3) answer = { id, result: await snapshot(args) };
        else if (job === 'remove') answer = { id, result: remove(args) };
        else throw new Error(`unknown job ${job}`);
      } catch (error) {
        answer = { id, error: (error instanceof Error ? error.message : String(error)).split('\n')[0] };
      }
      process.stdout.write(`${JSON.stringify(answer)}\n`);
    }
  }
  return undefined;
}

async function main(argv: string[]): Promise<unknown> {
  const [job, ...args] = argv;
  if (job === 'snapshot' && args.length >= 3) return snapshot(args);
  if (job === 'unpack' && (args.length === 3 || args.length === 4)) {
    const source = args[0] === '-' ? process.stdin : args[0]!;
    return extractLayer(source, args[1]!, { label: args[2]!, chown: true, ...(args[3] ? { expectedDiffId: args[3] } : {}) });
  }
  if (job === 'unpack-session' && args.length === 0) return unpackSession();
  if (job === 'remove' && args.length > 0) return remove(args);
  if (job === 'jobs' && args.length === 0) return jobSession();
  if (job === 'own-by-root' && args.length === 1) {
    let entries = 0;
    const walk = (path: string): void => {
      lchownSync(path, 0, 0);
      entries++;
      if (lstatSync(path).isDirectory()) for (const name of readdirSync(path)) walk(join(path, name));
    };
    walk(args[0]!);
    return { entries };
  }
  if (job === 'export' && args.length === 6) {
    const [storeRoot, key, kind, output, tag, owner] = args as [string, string, string, string, string, string];
    const store = LayerStore.open(storeRoot);
    const target = kind === 'oci' ? { oci: output } : { dockerArchive: output };
    const result = await exportImage(store.readImage(key), store, target, tag ? { tag } : {});
    const [uid, gid] = owner.split(':').map(Number) as [number, number];
    const chownTree = (path: string): void => {
      lchownSync(path, uid, gid);
      if (lstatSync(path).isDirectory()) for (const name of readdirSync(path)) chownTree(join(path, name));
    };
    chownTree(output);
    return result;
  }
  if (job === 'vm-disk') return vmDiskJob(args, { node: process.execPath, worker: process.argv[1]! });
  throw new Error(`usage: layer-worker snapshot DIR EPOCH LAYERS [REMOVE...] | unpack TAR|- DEST LABEL [DIFFID] | remove PATH... | own-by-root DIR | export STORE KEY KIND PATH TAG UID:GID (got: ${argv.join(' ')})`);
}

main(process.argv.slice(2)).then(
  (result) => {
    if (result !== undefined) process.stdout.write(`${JSON.stringify(result)}\n`);
  },
  (error: unknown) => {
    const message = error instanceof Error ? error.message : String(error);
    process.stderr.write(`${message.split('\n')[0]}\n`);
    process.exitCode = 1;
  },
);
