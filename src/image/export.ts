/**
 * OCI export: write a stored image as an OCI image layout or a docker-archive
 * that podman, docker and Kubernetes tooling load unchanged. Layers are
 * re-tarred from the unpacked store deterministically (entries sorted,
 * mtimes clamped to SOURCE_DATE_EPOCH, owners as the layer recorded them, no
 * user/group names, gzip with a fixed header), so the same layer gives the
 * same digest on every machine. Overlay whiteouts (0/0 char devices, the
 * opaque xattr) turn back into OCI `.wh.` entries.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, lstatSync, mkdirSync, readdirSync, readlinkSync, renameSync, rmSync, statSync, writeFileSync, type Stats } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import * as tar from 'tar-stream';
import { EnvyError } from '../errors.js';
import { run } from '../exec.js';
import { fsyncDir } from '../state/atomic.js';
import { digestHex, HashingStream } from './digest.js';
import { removeTree } from './extract.js';
import { MediaType } from './media-types.js';
import type { OciImageConfig } from './oci.js';
import type { ImageRecord, LayerMeta, LayerStore } from './store.js';
import { tempName } from './temp.js';

export type ExportTarget = { oci: string } | { dockerArchive: string };

export interface ExportOptions {
  /** Image name for the index annotation / RepoTags, e.g. `localhost/myenv:latest`. */
  tag?: string;
  /** Clamp mtimes (and set `created`) to this; default $SOURCE_DATE_EPOCH when set. */
  sourceDateEpoch?: number;
}

export interface ExportResult {
  manifestDigest?: string;
  configDigest: string;
  layers: { diffId: string; digest: string; size: number }[];
}

const OPAQUE_XATTR = 'user.overlay.opaque';

function epochFromEnv(): number | undefined {
  const value = process.env.SOURCE_DATE_EPOCH;
  if (value === undefined || value === '') return undefined;
  if (!/^\d+$/.test(value)) {
    throw new EnvyError('USAGE', `SOURCE_DATE_EPOCH="${value}" is not a number of seconds`, { hint: 'set it to e.g. $(git log -1 --format=%ct)' });
  }
  return Number(value);
}

/** Directories of `root` carrying the opaque xattr (one getfattr for the whole tree). */
async function opaqueDirs(root: string): Promise<Set<string>> {
  // -h: read a symlink's own attributes; without it a dangling link (bin -> usr/bin in a layer) fails the walk.
  const result = await run('getfattr', ['-R', '-P', '-h', '--absolute-names', '-d', '-m', `^${OPAQUE_XATTR.replace(/\./g, '\\.')}$`, root], {
    errorCode: 'IMAGE',
    hint: 'export reads overlay opaque markers with getfattr (Debian: apt-get install attr)',
  });
  const dirs = new Set<string>();
  let current: string | undefined;
  for (const line of String(result.stdout).split('\n')) {
    if (line.startsWith('# file: ')) current = line.slice('# file: '.length);
    else if (current && line.startsWith(`${OPAQUE_XATTR}=`) && /="?y"?$/.test(line)) dirs.add(current);
  }
  return dirs;
}

/** Write one layer as a deterministic tar (optionally gzipped) to `output`; returns the tar's and the blob's digests. */
export async function writeLayerTar(store: LayerStore, diffId: string, output: string, options: { gzip: boolean; sourceDateEpoch?: number }): Promise<{ diffId: string; digest: string; size: number }> {
  return tarTree(store.layerRoot(diffId), store.readLayerMeta(diffId), output, options);
}

/** What the re-tarring needs to know about a tree beyond what lstat says. */
export type TreeOwnership = Pick<LayerMeta, 'chowned' | 'owners' | 'strippedModes'>;

/**
 * Tar `root` deterministically into `output` (or only hash it, when output is
 * undefined: a build step's diff_id). Returns the tar's digest (the diff_id),
 * the blob's digest and the blob's size.
 */
export async function tarTree(
  root: string,
  ownership: TreeOwnership,
  output: string | undefined,
  options: { gzip: boolean; sourceDateEpoch?: number },
): Promise<{ diffId: string; digest: string; size: number; whiteouts: string[]; opaqueDirs: string[]; entries: number }> {
  const meta = ownership;
  const opaque = await opaqueDirs(root);
  const pack = tar.pack();
  const tarHash = new HashingStream();
  const blobHash = new HashingStream();
  const source = pack as unknown as NodeJS.ReadableStream;
  const sink = (): NodeJS.WritableStream => (output === undefined ? new Writable({ write: (_chunk, _encoding, done) => done() }) : createWriteStream(output));
  const writing = options.gzip ? pipeline(source, tarHash, createGzip({ level: 6 }), blobHash, sink()) : pipeline(source, tarHash, sink());
  writing.catch(() => {});
  const writer = new LayerTarWriter(pack, root, meta, opaque, options.sourceDateEpoch);
  try {
    await writer.walk('');
    pack.finalize();
    await writing;
  } catch (error) {
    pack.destroy();
    throw error;
  }
  const tarDigest = tarHash.digest();
  const digest = options.gzip ? blobHash.digest() : tarDigest;
  return { diffId: tarDigest, digest, size: options.gzip ? blobHash.size : tarHash.size, whiteouts: writer.whiteouts, opaqueDirs: writer.opaqueRels, entries: writer.entries };
}

class LayerTarWriter {
  private readonly inodes = new Map<number, string>();
  readonly whiteouts: string[] = [];
  readonly opaqueRels: string[] = [];
  entries = 0;

  constructor(
    private readonly pack: tar.Pack,
    private readonly root: string,
    private readonly meta: TreeOwnership,
    private readonly opaque: Set<string>,
    private readonly epoch: number | undefined,
  ) {}

  private mtime(stat: Stats): Date {
    const seconds = Math.floor(stat.mtimeMs / 1000);
    return new Date((this.epoch === undefined ? seconds : Math.min(seconds, this.epoch)) * 1000);
  }

  private owner(rel: string, stat: Stats): { uid: number; gid: number } {
    if (this.meta.chowned) return { uid: stat.uid, gid: stat.gid };
    const [uid, gid] = this.meta.owners[rel] ?? [0, 0];
    return { uid, gid };
  }

  private mode(rel: string, stat: Stats): number {
    return this.meta.strippedModes[rel] ?? stat.mode & 0o7777;
  }

  private async entry(header: Partial<tar.Header> & { name: string }): Promise<void> {
    this.entries += 1;
    await new Promise<void>((resolvePromise, reject) => {
      this.pack.entry({ uname: '', gname: '', ...header }, '', (error) => (error ? reject(error) : resolvePromise()));
    });
  }

  async walk(dirRel: string): Promise<void> {
    const dirAbs = dirRel === '' ? this.root : join(this.root, dirRel);
    const names = readdirSync(dirAbs).sort((a, b) => (Buffer.compare(Buffer.from(a), Buffer.from(b))));
    if (this.opaque.has(dirAbs)) {
      const marker = dirRel === '' ? '.wh..wh..opq' : `${dirRel}/.wh..wh..opq`;
      this.opaqueRels.push(dirRel);
      await this.entry({ name: marker, type: 'file', mode: 0o644, mtime: this.mtime(lstatSync(dirAbs)), uid: 0, gid: 0 });
    }
    for (const name of names) {
      const rel = dirRel === '' ? name : `${dirRel}/${name}`;
      const abs = join(dirAbs, name);
      const stat = lstatSync(abs);
      const common = { mode: this.mode(rel, stat), mtime: this.mtime(stat), ...this.owner(rel, stat) };
      if (stat.isDirectory()) {
        await this.entry({ name: `${rel}/`, type: 'directory', ...common });
        await this.walk(rel);
      } else if (stat.isCharacterDevice() && stat.rdev === 0) {
        this.whiteouts.push(rel);
        await this.entry({ name: dirRel === '' ? `.wh.${name}` : `${dirRel}/.wh.${name}`, type: 'file', ...common, mode: 0o644, uid: 0, gid: 0 });
      } else if (stat.isSymbolicLink()) {
        await this.entry({ name: rel, type: 'symlink', linkname: readlinkSync(abs), ...common });
      } else if (stat.isFIFO()) {
        await this.entry({ name: rel, type: 'fifo', ...common });
      } else if (stat.isFile()) {
        const first = stat.nlink > 1 ? this.inodes.get(stat.ino) : undefined;
        if (first !== undefined) {
          await this.entry({ name: rel, type: 'link', linkname: first, ...common });
          continue;
        }
        if (stat.nlink > 1) this.inodes.set(stat.ino, rel);
        this.entries += 1;
        await new Promise<void>((resolvePromise, reject) => {
          const sink = this.pack.entry({ uname: '', gname: '', name: rel, type: 'file', size: stat.size, ...common }, (error) => (error ? reject(error) : resolvePromise()));
          pipeline(createReadStream(abs), sink as unknown as NodeJS.WritableStream).catch(reject);
        });
      }
      // Other device nodes never reach a rootless layer (unpacking skips them).
    }
  }
}

function ociConfig(image: ImageRecord, diffIds: string[], metas: LayerMeta[], epoch: number | undefined): OciImageConfig & Record<string, unknown> {
  const created = epoch === undefined ? undefined : new Date(epoch * 1000).toISOString().replace('.000Z', 'Z');
  const config: NonNullable<OciImageConfig['config']> = { Env: image.config.env };
  if (image.config.entrypoint) config.Entrypoint = image.config.entrypoint;
  if (image.config.cmd) config.Cmd = image.config.cmd;
  if (image.config.workdir) config.WorkingDir = image.config.workdir;
  if (image.config.user) config.User = image.config.user;
  if (image.config.labels) config.Labels = image.config.labels;
  return {
    ...(created ? { created } : {}),
    architecture: image.platform?.architecture ?? 'amd64',
    os: image.platform?.os ?? 'linux',
    ...(image.platform?.variant ? { variant: image.platform.variant } : {}),
    config,
    rootfs: { type: 'layers', diff_ids: diffIds },
    history: metas.map((meta) => ({ ...(created ? { created } : {}), created_by: meta.createdBy })),
  };
}

/** Stable JSON bytes: the digest of a config or manifest must not depend on who wrote it. */
function jsonBytes(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value));
}

const sha = (bytes: Buffer): string => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

export async function exportImage(image: ImageRecord, store: LayerStore, target: ExportTarget, options: ExportOptions = {}): Promise<ExportResult> {
  const epoch = options.sourceDateEpoch ?? epochFromEnv();
  const output = resolve('oci' in target ? target.oci : target.dockerArchive);
  for (const layer of image.layers) store.readLayerMeta(layer.diffId);
  if ('oci' in target) {
    let existing: string[] = [];
    try {
      existing = readdirSync(output);
    } catch {
      // does not exist yet: fine
    }
    if (existing.length > 0) throw new EnvyError('USAGE', `${output} exists and is not empty`, { hint: 'export into a new or empty directory' });
  }
  mkdirSync(dirname(output), { recursive: true });
  const temp = join(dirname(output), tempName('export'));
  mkdirSync(temp, { recursive: true });
  try {
    const result = 'oci' in target ? await writeOciLayout(image, store, temp, options.tag, epoch) : await writeDockerArchive(image, store, temp, options.tag, epoch);
    if ('oci' in target) {
      rmSync(output, { recursive: true, force: true });
      renameSync(temp, output);
    } else {
      renameSync(join(temp, 'archive.tar'), output);
      removeTree(temp);
    }
    fsyncDir(dirname(output));
    return result;
  } catch (error) {
    removeTree(temp);
    throw error;
  }
}

async function writeOciLayout(image: ImageRecord, store: LayerStore, dir: string, tag: string | undefined, epoch: number | undefined): Promise<ExportResult> {
  const blobs = join(dir, 'blobs/sha256');
  mkdirSync(blobs, { recursive: true });
  const layers: ExportResult['layers'] = [];
  for (const layer of image.layers) {
    const temp = join(blobs, tempName('layer'));
    const written = await writeLayerTar(store, layer.diffId, temp, { gzip: true, sourceDateEpoch: epoch });
    renameSync(temp, join(blobs, digestHex(written.digest)));
    layers.push(written);
  }
  const metas = image.layers.map((layer) => store.readLayerMeta(layer.diffId));
  const config = jsonBytes(ociConfig(image, layers.map((l) => l.diffId), metas, epoch));
  const configDigest = sha(config);
  writeFileSync(join(blobs, digestHex(configDigest)), config);
  const manifest = jsonBytes({
    schemaVersion: 2,
    mediaType: MediaType.OciManifest,
    config: { mediaType: MediaType.OciConfig, digest: configDigest, size: config.length },
    layers: layers.map((l) => ({ mediaType: MediaType.OciLayerGzip, digest: l.digest, size: l.size })),
  });
  const manifestDigest = sha(manifest);
  writeFileSync(join(blobs, digestHex(manifestDigest)), manifest);
  writeFileSync(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  writeFileSync(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.OciIndex,
      manifests: [
        {
          mediaType: MediaType.OciManifest,
          digest: manifestDigest,
          size: manifest.length,
          ...(tag ? { annotations: { 'org.opencontainers.image.ref.name': tag } } : {}),
          platform: { os: image.platform?.os ?? 'linux', architecture: image.platform?.architecture ?? 'amd64', ...(image.platform?.variant ? { variant: image.platform.variant } : {}) },
        },
      ],
    }),
  );
  return { manifestDigest, configDigest, layers };
}

/** The classic `docker save` form (config `<hex>.json`, `<diffid>/layer.tar`, manifest.json, repositories): what every loader reads. */
async function writeDockerArchive(image: ImageRecord, store: LayerStore, dir: string, tag: string | undefined, epoch: number | undefined): Promise<ExportResult> {
  const layers: ExportResult['layers'] = [];
  const layerFiles: string[] = [];
  for (const layer of image.layers) {
    const temp = join(dir, tempName('layer'));
    const written = await writeLayerTar(store, layer.diffId, temp, { gzip: false, sourceDateEpoch: epoch });
    layers.push(written);
    layerFiles.push(temp);
  }
  const metas = image.layers.map((layer) => store.readLayerMeta(layer.diffId));
  const config = jsonBytes(ociConfig(image, layers.map((l) => l.diffId), metas, epoch));
  const configDigest = sha(config);
  const repoTag = tag ? normalizeTag(tag) : undefined;
  const manifest = jsonBytes([{ Config: `${digestHex(configDigest)}.json`, RepoTags: repoTag ? [repoTag] : null, Layers: layers.map((l) => `${digestHex(l.diffId)}/layer.tar`) }]);
  const mtime = new Date((epoch ?? 0) * 1000);
  const pack = tar.pack();
  const writing = pipeline(pack as unknown as NodeJS.ReadableStream, createWriteStream(join(dir, 'archive.tar')));
  writing.catch(() => {});
  const add = (name: string, data: Buffer): Promise<void> =>
    new Promise((resolvePromise, reject) => pack.entry({ name, mode: 0o644, mtime, uid: 0, gid: 0, uname: '', gname: '' }, data, (error) => (error ? reject(error) : resolvePromise())));
  const seen = new Set<string>();
  for (const [i, layer] of layers.entries()) {
    const hex = digestHex(layer.diffId);
    if (seen.has(hex)) continue;
    seen.add(hex);
    await new Promise<void>((resolvePromise, reject) => {
      pack.entry({ name: `${hex}/`, type: 'directory', mode: 0o755, mtime, uid: 0, gid: 0 }, '', (error) => (error ? reject(error) : resolvePromise()));
    });
    await new Promise<void>((resolvePromise, reject) => {
      const sink = pack.entry({ name: `${hex}/layer.tar`, size: statSync(layerFiles[i]!).size, mode: 0o644, mtime, uid: 0, gid: 0 }, (error) => (error ? reject(error) : resolvePromise()));
      pipeline(createReadStream(layerFiles[i]!), sink as unknown as NodeJS.WritableStream).catch(reject);
    });
  }
  await add(`${digestHex(configDigest)}.json`, config);
  await add('manifest.json', manifest);
  if (repoTag) {
    const colon = repoTag.lastIndexOf(':');
    await add('repositories', jsonBytes({ [repoTag.slice(0, colon)]: { [repoTag.slice(colon + 1)]: digestHex(layers.at(-1)?.diffId ?? configDigest) } }));
  }
  pack.finalize();
  await writing;
  return { configDigest, layers: layers.map((l) => ({ ...l, digest: l.diffId })) };
}

function normalizeTag(tag: string): string {
  const name = basename(tag) === tag && !tag.includes('/') ? `localhost/${tag}` : tag;
  return name.lastIndexOf(':') > name.lastIndexOf('/') ? name : `${name}:latest`;
}
