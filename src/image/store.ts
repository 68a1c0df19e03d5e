/**
 * The layer store under `stateDir()/store`:
 *
 *   blobs/sha256/<hex>            compressed blobs as downloaded (digest-verified), configs, manifests
 *   blobs/sha256/.partial-<hex>   a download in progress (resumed with Range by the next pull)
 *   layers/sha256/<diffid hex>/   root/ (the unpacked layer, an overlay lowerdir) + meta.json
 *   images/<key>.json             an image: ordered layer diff_ids + runtime config
 *   refs/<holder>.json            which images an environment or build holds (reference counts)
 *   locks/                        O_EXCL lock files (src/state/lock.ts)
 *
 * Crash safety: every layer is unpacked into layers/.tmp-* and renamed into
 * place only once complete with its meta.json, so a layer dir that exists is
 * whole; image records and refs are written atomically, after one fsync of the
 * layer and blob dirs (the durability barrier: docs/images.md); temp dirs of
 * dead processes are swept on open. Concurrency: a lock per layer/blob serialises the work on
 * one digest (a second puller waits, then finds it done), and one store lock
 * guards image records, refs and gc. Lock files rather than flock(2): Node has
 * no flock, and the lock files carry pid + start time, so a SIGKILLed owner is
 * detected and its lock taken over (src/state/lock.ts).
 */
import { lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EnvyError } from '../errors.js';
import { fsyncDir, writeFileAtomic } from '../state/atomic.js';
import { acquireLock, isAlive, type Lock } from '../state/lock.js';
import { stateDir } from '../state/paths.js';
import { digestHex, isDigest, sha256File } from './digest.js';
import { extractLayer, removeTree, type ExtractOptions, type ExtractResult, type LayerSource } from './extract.js';
import { tarTree, type TreeOwnership } from './export.js';
import { TEMP_PREFIX, tempName, tempOwnerAlive } from './temp.js';

export interface LayerMeta {
  diffId: string;
  /** Bytes of the uncompressed tar. */
  size: number;
  /** What made the layer: `pull docker.io/library/debian@sha256:...`, `oci-import ...`, a build step label. */
  createdBy: string;
  createdAt: string;
  /** The compressed blob it came from, when it came from one. */
  blobDigest?: string;
  compression?: ExtractResult['compression'];
  entries: number;
  skippedDevices: number;
  whiteouts: string[];
  opaqueDirs: string[];
  /** Whether tar owners were applied (unpacked as root in a user namespace). */
  chowned: boolean;
  owners: Record<string, [number, number]>;
  strippedModes: Record<string, number>;
}

export interface ImageConfig {
  env: string[];
  /** The image's creation time (RFC 3339), when its config has one: the build epoch of a pulled base. */
  created?: string;
  cmd?: string[];
  entrypoint?: string[];
  workdir?: string;
  user?: string;
  labels?: Record<string, string>;
}

export interface ImageLayer {
  diffId: string;
  /** The compressed blob in blobs/, when the store has one (pulled or imported). */
  blobDigest?: string;
  mediaType?: string;
  blobSize?: number;
}

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface ImageRecord {
  /** Store key: `sha256-<hex>` of the manifest for pulled/imported images, a step key for builds. */
  key: string;
  /** Where it came from (a reference, an archive path, a build). */
  source: string;
  /** The resolved manifest digest (what env.lock pins). */
  manifestDigest?: string;
  /** The OCI config blob in blobs/, when the store has one. */
  configDigest?: string;
  platform?: Platform;
  layers: ImageLayer[];
  config: ImageConfig;
  createdAt: string;
  /**
   * The image a build step ran on. gc keeps the ancestors of every image it keeps: the executor walks a
   * plan from its base, so a kept image whose intermediate records were collected would rebuild all.
   */
  parent?: string;
  /**
   * What the build step that made this image resolved (a packages step's versions by package name, a
   * kernel step's package): a cache hit, in this project or another one sharing the store, puts them
   * in env.lock as a fresh build would.
   */
  resolved?: { packages?: Record<string, string>; kernel?: { package: string; version: string } };
}

export interface GcOptions {
  /** Keep anything written more recently than this (ms; default 10 minutes): a build in flight has not recorded its refs yet. */
  graceMs?: number;
  /** How to delete a layer tree (the runtime passes one that works inside the user namespace for subuid-owned files). */
  removeTree?: (path: string) => Promise<void> | void;
}

export interface GcResult {
  images: string[];
  layers: string[];
  blobs: string[];
  bytesFreed: number;
}

export type Unpacker = (source: LayerSource, dest: string, options: ExtractOptions) => Promise<ExtractResult>;

/**
 * Where addLayer reads a layer from: a file, a stream, or a function that opens one. The function is
 * called only once the layer's lock is held and the layer is known to be missing, so a download starts
 * only when its bytes are needed, and two processes never download the same layer at once.
 */
export type LayerInput = LayerSource | (() => LayerSource | Promise<LayerSource>);

export interface AddLayerOptions {
  /** Names the layer in errors. */
  label: string;
  createdBy: string;
  /** The diff_id the image config promises; lets a cached layer skip the work entirely. */
  expectedDiffId?: string;
  blobDigest?: string;
  /** Runs the unpacking (default: in this process, without chown). */
  unpack?: Unpacker;
  chown?: boolean;
  /** How to delete a half-made layer (with `chown`, its files belong to subordinate ids: see GcOptions). */
  removeTree?: (path: string) => Promise<void> | void;
  /** Also hold the blob's lock while unpacking: the input writes the blob's .partial file (a download). */
  lockBlob?: boolean;
}

const KEY = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$/;

export function defaultStoreRoot(): string {
  return join(stateDir(), 'store');
}

/** The store key of an image known by its manifest digest. */
export function imageKeyForDigest(digest: string): string {
  return `sha256-${digestHex(digest)}`;
}

export class LayerStore {
  /** Leftovers of killed processes that sweep() could not remove (see sweepStale). */
  private readonly stale: string[] = [];

  private constructor(readonly root: string) {}

  /** Open (creating if needed) the store and sweep what killed processes left behind. */
  static open(root: string = defaultStoreRoot()): LayerStore {
    const store = new LayerStore(root);
    for (const dir of ['blobs/sha256', 'layers/sha256', 'images', 'refs', 'locks']) mkdirSync(join(root, dir), { recursive: true });
    store.sweep();
    return store;
  }

  // ---- paths -------------------------------------------------------------

  blobPath(digest: string): string {
    return join(this.root, 'blobs/sha256', digestHex(digest, 'blob digest'));
  }

  partialBlobPath(digest: string): string {
    return join(this.root, 'blobs/sha256', `.partial-${digestHex(digest, 'blob digest')}`);
  }

  layerDir(diffId: string): string {
    return join(this.root, 'layers/sha256', digestHex(diffId, 'layer diff_id'));
  }

  /** The unpacked tree: what the runtime stacks as an overlay lowerdir. */
  layerRoot(diffId: string): string {
    return join(this.layerDir(diffId), 'root');
  }

  private imagePath(key: string): string {
    if (!KEY.test(key)) throw new EnvyError('INTERNAL', `invalid image key "${key}"`);
    return join(this.root, 'images', `${key}.json`);
  }

  private refPath(holder: string): string {
    return join(this.root, 'refs', `${encodeURIComponent(holder).replace(/^\./, '%2E')}.json`);
  }

  // ---- locks -------------------------------------------------------------

  async lock(name: string, purpose: string): Promise<Lock> {
    return acquireLock(join(this.root, 'locks', `${name}.lock`), { purpose });
  }

  private async withLock<T>(name: string, purpose: string, body: () => Promise<T> | T): Promise<T> {
    const lock = await this.lock(name, purpose);
    try {
      return await body();
    } finally {
      lock.release();
    }
  }

  // ---- blobs -------------------------------------------------------------

  hasBlob(digest: string): boolean {
    return isFile(this.blobPath(digest));
  }

  readBlob(digest: string): Buffer {
    return readFileSync(this.blobPath(digest));
  }

  /**
   * Move a fully written file into blobs/ if its content matches `digest`;
   * otherwise delete it and fail, naming the blob.
   */
  async commitBlob(digest: string, file: string, where: string): Promise<void> {
    const actual = await sha256File(file);
    if (actual.digest !== digest) {
      rmSync(file, { force: true });
      throw new EnvyError('IMAGE', `blob ${digest} from ${where} has digest ${actual.digest}: its content does not match, deleted`, {
        hint: 'the source is corrupt or was tampered with; try again, and report it to the image publisher if it persists',
      });
    }
    renameSync(file, this.blobPath(digest));
  }

  /** Write a small blob (config, manifest) we already hold in memory, verifying its digest. */
  async putBlob(digest: string, data: Uint8Array, where: string): Promise<void> {
    if (this.hasBlob(digest)) return;
    const temp = join(this.root, 'blobs/sha256', tempName('blob'));
    writeFileSync(temp, data);
    await this.commitBlob(digest, temp, where);
  }

  /** A temp path for a blob being written (swept if its process dies). */
  blobTempPath(): string {
    return join(this.root, 'blobs/sha256', tempName('blob'));
  }

  async withBlobLock<T>(digest: string, body: () => Promise<T>): Promise<T> {
    return this.withLock(`blob-${digestHex(digest)}`, `fetch blob ${digest}`, body);
  }

  // ---- layers ------------------------------------------------------------

  hasLayer(diffId: string): boolean {
    return isFile(join(this.layerDir(diffId), 'meta.json'));
  }

  readLayerMeta(diffId: string): LayerMeta {
    try {
      return JSON.parse(readFileSync(join(this.layerDir(diffId), 'meta.json'), 'utf8')) as LayerMeta;
    } catch (error) {
      throw new EnvyError('STATE', `layer ${diffId} is not in the store (${this.layerDir(diffId)})`, {
        hint: 'pull or build the image again; `envy gc` may have removed it',
        cause: error,
      });
    }
  }

  /**
   * Unpack a layer blob into the store and return its metadata. With a known
   * diff_id a layer already present costs nothing; two processes adding the
   * same layer serialise on its lock and the second finds it done.
   */
  async addLayer(input: LayerInput, options: AddLayerOptions): Promise<LayerMeta> {
    if (options.expectedDiffId && this.hasLayer(options.expectedDiffId)) return this.readLayerMeta(options.expectedDiffId);
    const lockKey = options.expectedDiffId ?? options.blobDigest;
    const body = async (): Promise<LayerMeta> => {
      if (options.expectedDiffId && this.hasLayer(options.expectedDiffId)) return this.readLayerMeta(options.expectedDiffId);
      const temp = join(this.root, 'layers', tempName('layer'));
      mkdirSync(temp, { mode: 0o700 });
      try {
        const unpack = options.unpack ?? extractLayer;
        const source = typeof input === 'function' ? await input() : input;
        const result = await unpack(source, join(temp, 'root'), {
          label: options.label,
          expectedDiffId: options.expectedDiffId,
          chown: options.chown,
        });
        const meta: LayerMeta = {
          diffId: result.diffId,
          size: result.tarSize,
          createdBy: options.createdBy,
          createdAt: new Date().toISOString(),
          ...(options.blobDigest ? { blobDigest: options.blobDigest } : {}),
          compression: result.compression,
          entries: result.entries,
          skippedDevices: result.skippedDevices,
          whiteouts: result.whiteouts,
          opaqueDirs: result.opaqueDirs,
          chowned: result.chowned,
          owners: result.owners,
          strippedModes: result.strippedModes,
        };
        writeFileSync(join(temp, 'meta.json'), `${JSON.stringify(meta)}\n`);
        if (this.hasLayer(meta.diffId)) {
          // Known only after unpacking (no expected diff_id): someone stored it meanwhile.
          await this.removeTemp(temp, options);
          return this.readLayerMeta(meta.diffId);
        }
        try {
          renameSync(temp, this.layerDir(meta.diffId));
        } catch (error) {
          const code = (error as NodeJS.ErrnoException).code;
          if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw error;
          await this.removeTemp(temp, options);
          return this.readLayerMeta(meta.diffId);
        }
        return meta;
      } catch (error) {
        // The failure is what the user needs to see; a temp dir left behind is swept by the next open.
        await this.removeTemp(temp, options).catch(() => undefined);
        throw error;
      }
    };
    const locked = options.lockBlob && options.blobDigest ? (): Promise<LayerMeta> => this.withBlobLock(options.blobDigest!, body) : body;
    return lockKey ? this.withLock(`layer-${digestHex(lockKey)}`, `unpack ${options.label}`, locked) : locked();
  }

  /**
   * Take a directory (a build step's overlay upper dir, a host base skeleton) as
   * a layer: its diff_id is the digest of its deterministic tar (the one export
   * writes, mtimes clamped to `sourceDateEpoch`), and the directory itself is
   * moved into the store (it must be on the store's filesystem). Identical
   * content already stored wins and the directory is removed.
   */
  async commitLayerDir(dir: string, options: { createdBy: string; ownership?: TreeOwnership; sourceDateEpoch?: number }): Promise<LayerMeta> {
    const ownership: TreeOwnership = options.ownership ?? { chowned: false, owners: {}, strippedModes: {} };
    const tree = await tarTree(dir, ownership, undefined, { gzip: false, sourceDateEpoch: options.sourceDateEpoch });
    return this.withLock(`layer-${digestHex(tree.diffId)}`, `commit ${options.createdBy}`, async () => {
      if (this.hasLayer(tree.diffId)) {
        removeTree(dir);
        return this.readLayerMeta(tree.diffId);
      }
      const temp = join(this.root, 'layers', tempName('commit'));
      mkdirSync(temp, { mode: 0o700 });
      try {
        try {
          renameSync(dir, join(temp, 'root'));
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== 'EXDEV') throw error;
          throw new EnvyError('INTERNAL', `cannot move ${dir} into the store at ${this.root}: different filesystems`, {
            hint: 'build dirs must live under the state dir (ENVY_HOME) so layers are committed by rename',
          });
        }
        const meta: LayerMeta = {
          diffId: tree.diffId,
          size: tree.size,
          createdBy: options.createdBy,
          createdAt: new Date().toISOString(),
          entries: tree.entries,
          skippedDevices: 0,
          whiteouts: tree.whiteouts,
          opaqueDirs: tree.opaqueDirs,
          ...ownership,
        };
        writeFileSync(join(temp, 'meta.json'), `${JSON.stringify(meta)}\n`);
        renameSync(temp, this.layerDir(tree.diffId));
        return meta;
      } catch (error) {
        await this.removeTemp(temp, {}).catch(() => undefined);
        throw error;
      }
    });
  }

  /**
   * Take a prepared temp dir (`layers/.tmp-*`, holding the layer's tree as `root/`, its diff_id already
   * computed: a build step's snapshotted upper dir) as a layer: meta.json is written into it and the dir
   * is renamed into place, under the layer's lock. Identical content already stored wins: the dir is
   * removed with `removeTree` (its tree may belong to subordinate ids).
   */
  async adoptLayerDir(dir: string, meta: Omit<LayerMeta, 'createdAt'>, options: Pick<AddLayerOptions, 'removeTree'> = {}): Promise<LayerMeta> {
    return this.withLock(`layer-${digestHex(meta.diffId)}`, `commit ${meta.createdBy}`, async () => {
      if (this.hasLayer(meta.diffId)) {
        await this.removeTemp(dir, options);
        return this.readLayerMeta(meta.diffId);
      }
      if (!isDirectory(join(dir, 'root'))) throw new EnvyError('INTERNAL', `${dir} has no root/ to commit as layer ${meta.diffId}`);
      const full: LayerMeta = { ...meta, createdAt: new Date().toISOString() };
      writeFileSync(join(dir, 'meta.json'), `${JSON.stringify(full)}\n`);
      renameSync(dir, this.layerDir(meta.diffId));
      return full;
    });
  }

  private async removeTemp(temp: string, options: Pick<AddLayerOptions, 'removeTree'>): Promise<void> {
    await (options.removeTree ?? removeTree)(temp);
  }

  // ---- images ------------------------------------------------------------

  hasImage(key: string): boolean {
    return isFile(this.imagePath(key));
  }

  readImage(key: string): ImageRecord {
    try {
      return JSON.parse(readFileSync(this.imagePath(key), 'utf8')) as ImageRecord;
    } catch (error) {
      throw new EnvyError('STATE', `image ${key} is not in the store`, { hint: 'pull or build it again', cause: error });
    }
  }

  listImages(): ImageRecord[] {
    return readdirSync(join(this.root, 'images'))
      .filter((name) => name.endsWith('.json') && !name.startsWith('.'))
      .map((name) => this.readImage(name.slice(0, -'.json'.length)));
  }

  /** Record an image whose layers are all in the store. */
  async writeImage(record: ImageRecord): Promise<void> {
    for (const layer of record.layers) {
      if (!this.hasLayer(layer.diffId)) throw new EnvyError('INTERNAL', `image ${record.key} names layer ${layer.diffId}, which is not in the store`);
    }
    // The one durability barrier of a pull, an import or a build step: layers and blobs were committed by
    // rename alone (atomic, so a SIGKILL never leaves half of one), and the record naming them is
    // written only once their directory entries are on disk. An fsync per layer, on ext4, waited for all
    // of the layer's data each time.
    fsyncDir(join(this.root, 'layers/sha256'));
    fsyncDir(join(this.root, 'blobs/sha256'));
    await this.withLock('store', `write image ${record.key}`, () => writeFileAtomic(this.imagePath(record.key), `${JSON.stringify(record, null, 2)}\n`));
  }

  // ---- references --------------------------------------------------------

  /** Record that `holder` (e.g. `env:<id>`, `build:<key>`) uses these images; replaces its previous set. */
  async setRefs(holder: string, imageKeys: string[]): Promise<void> {
    for (const key of imageKeys) if (!this.hasImage(key)) throw new EnvyError('INTERNAL', `cannot reference image ${key}: not in the store`);
    await this.withLock('store', `refs ${holder}`, () => {
      if (imageKeys.length === 0) rmSync(this.refPath(holder), { force: true });
      else writeFileAtomic(this.refPath(holder), `${JSON.stringify({ holder, images: [...new Set(imageKeys)].sort(), updatedAt: new Date().toISOString() })}\n`);
    });
  }

  async removeRefs(holder: string): Promise<void> {
    await this.setRefs(holder, []);
  }

  /** image key → holders that use it. */
  referenceCounts(): Map<string, string[]> {
    const counts = new Map<string, string[]>();
    for (const name of readdirSync(join(this.root, 'refs'))) {
      if (!name.endsWith('.json') || name.startsWith('.')) continue;
      const ref = JSON.parse(readFileSync(join(this.root, 'refs', name), 'utf8')) as { holder: string; images: string[] };
      for (const key of ref.images) counts.set(key, [...(counts.get(key) ?? []), ref.holder]);
    }
    return counts;
  }

  // ---- gc and consistency ------------------------------------------------

  /**
   * Remove images no holder references, then layers and blobs no remaining image
   * uses; report what went and the bytes freed. Everything younger than the
   * grace period stays: a pull or build in flight has not written its records yet.
   */
  async gc(options: GcOptions = {}): Promise<GcResult> {
    const graceMs = options.graceMs ?? 10 * 60_000;
    const cutoff = Date.now() - graceMs;
    const remove = options.removeTree ?? removeTree;
    await this.sweepStale(remove);
    return this.withLock('store', 'gc', async () => {
      const result: GcResult = { images: [], layers: [], blobs: [], bytesFreed: 0 };
      const referenced = this.referenceCounts();
      const liveLayers = new Set<string>();
      const liveBlobs = new Set<string>();
      const images = this.listImages();
      const byKey = new Map(images.map((image) => [image.key, image]));
      const kept = new Set<string>();
      for (const image of images) {
        if (!referenced.has(image.key) && statSync(this.imagePath(image.key)).mtimeMs < cutoff) continue;
        for (let key: string | undefined = image.key; key !== undefined && !kept.has(key); key = byKey.get(key)?.parent) kept.add(key);
      }
      for (const image of images) {
        const path = this.imagePath(image.key);
        if (!kept.has(image.key)) {
          result.bytesFreed += diskUsage(path);
          rmSync(path);
          result.images.push(image.key);
          continue;
        }
        for (const layer of image.layers) {
          liveLayers.add(digestHex(layer.diffId));
          if (layer.blobDigest) liveBlobs.add(digestHex(layer.blobDigest));
        }
        for (const digest of [image.manifestDigest, image.configDigest]) if (digest && isDigest(digest)) liveBlobs.add(digestHex(digest));
      }
      for (const hex of readdirSync(join(this.root, 'layers/sha256'))) {
        const dir = join(this.root, 'layers/sha256', hex);
        if (liveLayers.has(hex) || statSync(dir).mtimeMs >= cutoff) continue;
        const bytes = diskUsage(dir);
        // Renamed out of the namespace first: a crash mid-delete leaves a temp (swept), never a half layer.
        const trash = join(this.root, 'layers', tempName('gc'));
        renameSync(dir, trash);
        await remove(trash);
        result.bytesFreed += bytes;
        result.layers.push(`sha256:${hex}`);
      }
      for (const name of readdirSync(join(this.root, 'blobs/sha256'))) {
        const path = join(this.root, 'blobs/sha256', name);
        const hex = name.startsWith('.partial-') ? name.slice('.partial-'.length) : name;
        if (name.startsWith(TEMP_PREFIX) || liveBlobs.has(hex) || statSync(path).mtimeMs >= cutoff) continue;
        if (name.startsWith('.partial-') && this.blobLockHeld(hex)) continue;
        result.bytesFreed += diskUsage(path);
        rmSync(path, { force: true });
        result.blobs.push(name.startsWith('.partial-') ? name : `sha256:${hex}`);
      }
      return result;
    });
  }

  private blobLockHeld(hex: string): boolean {
    try {
      const owner = JSON.parse(readFileSync(join(this.root, 'locks', `blob-${hex}.lock`), 'utf8')) as { pid: number; startTime: string };
      return isAlive(owner);
    } catch {
      return false;
    }
  }

  private readLayerMetaQuietly(hex: string): LayerMeta | undefined {
    try {
      return JSON.parse(readFileSync(join(this.root, 'layers/sha256', hex, 'meta.json'), 'utf8')) as LayerMeta;
    } catch {
      return undefined;
    }
  }

  /** Problems that would make the store lie: images naming missing layers, layers without metadata. */
  verify(): string[] {
    const problems: string[] = [];
    for (const hex of readdirSync(join(this.root, 'layers/sha256'))) {
      const meta = this.readLayerMetaQuietly(hex);
      if (!meta) problems.push(`layer sha256:${hex} has no readable meta.json`);
      else if (meta.diffId !== `sha256:${hex}`) problems.push(`layer sha256:${hex} says it is ${meta.diffId}`);
      if (!isDirectory(join(this.root, 'layers/sha256', hex, 'root'))) problems.push(`layer sha256:${hex} has no root/`);
    }
    for (const image of this.listImages()) {
      for (const layer of image.layers) if (!this.hasLayer(layer.diffId)) problems.push(`image ${image.key} names missing layer ${layer.diffId}`);
    }
    for (const name of readdirSync(join(this.root, 'blobs/sha256'))) {
      if (/^[a-f0-9]{64}$/.test(name) || name.startsWith('.partial-') || name.startsWith(TEMP_PREFIX)) continue;
      problems.push(`unexpected file blobs/sha256/${name}`);
    }
    return problems;
  }

  /**
   * Remove temp dirs and files whose owning process is gone. A half-made layer of subordinate-owned
   * files cannot be removed from out here: it waits for sweepStale() with a namespace-side remover.
   */
  /** Remove what sweep() could not, with a remover that works in the user namespace; best effort. */
  async sweepStale(remove: (path: string) => Promise<void> | void): Promise<void> {
    for (const path of this.stale.splice(0)) {
      try {
        await remove(path);
      } catch {
        // still there: the next open tries again
      }
    }
  }

  private sweep(): void {
    for (const dir of ['layers', 'blobs/sha256', 'images', 'refs']) {
      const path = join(this.root, dir);
      for (const name of readdirSync(path)) {
        if (name.startsWith(TEMP_PREFIX)) {
          if (tempOwnerAlive(name)) continue;
          try {
            removeTree(join(path, name));
          } catch {
            this.stale.push(join(path, name));
          }
          continue;
        }
        // writeFileAtomic's temps: .<name>.<pid>.<ms>.tmp
        const atomic = /^\..+\.(\d+)\.\d+\.tmp$/.exec(name);
        if (atomic && !pidRunning(Number(atomic[1]))) rmSync(join(path, name), { force: true });
      }
    }
  }
}

function pidRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

function isDirectory(path: string): boolean {
  try {
    return lstatSync(path).isDirectory();
  } catch {
    return false;
  }
}

/** Bytes a tree occupies on disk, each hard-linked inode counted once. */
export function diskUsage(path: string, seen = new Set<number>()): number {
  let stat;
  try {
    stat = lstatSync(path);
  } catch {
    return 0;
  }
  let total = 0;
  if (!seen.has(stat.ino)) {
    seen.add(stat.ino);
    total += stat.blocks * 512;
  }
  if (stat.isDirectory()) {
    let names: string[] = [];
    try {
      names = readdirSync(path);
    } catch {
      return total;
    }
    for (const name of names) total += diskUsage(join(path, name), seen);
  }
  return total;
}
