/**
 * `oci: <path>`: import an OCI image layout directory, or a tarball written by
 * `docker save` / `podman save` (docker-archive, old `<id>/layer.tar` form or
 * the blobs/sha256 form of newer docker) or an oci-archive. Every document and
 * layer is checked against its digest before the store trusts it.
 */
import { closeSync, copyFileSync, createReadStream, createWriteStream, mkdirSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createGunzip } from 'node:zlib';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import { EnvyError } from '../errors.js';
import { digestHex, sha256, sha256File } from './digest.js';
import { removeTree } from './extract.js';
import { manifestKind, sniffCompression } from './media-types.js';
import { parseImageConfig, type OciImageConfig, type OciIndex, type OciManifest } from './oci.js';
import { formatPlatform, hostPlatform, selectPlatform } from './registry.js';
import { imageKeyForDigest, type ImageLayer, type ImageRecord, type LayerStore, type Platform, type Unpacker } from './store.js';
import { tempName } from './temp.js';

export interface ImportOptions {
  /** Which image when the source holds several: an OCI ref name annotation, or a docker RepoTag. */
  tag?: string;
  platform?: Platform;
  unpack?: Unpacker;
  /** Deletes a half-made layer: needed with `chown` (see AddLayerOptions). */
  removeTree?: (path: string) => Promise<void> | void;
  chown?: boolean;
}

export interface ImportResult {
  image: ImageRecord;
  /** The manifest digest (OCI layouts) or the config digest (docker archives, the image ID): what env.lock pins. */
  digest: string;
}

const REF_NAME = 'org.opencontainers.image.ref.name';

export async function importOci(path: string, store: LayerStore, options: ImportOptions = {}): Promise<ImportResult> {
  let stat;
  try {
    stat = statSync(path);
  } catch (error) {
    throw new EnvyError('CONFIG_INVALID', `base oci: ${path} does not exist`, { hint: 'point oci: at an OCI layout directory or a docker save / podman save tarball', cause: error });
  }
  if (stat.isDirectory()) return importOciLayout(path, store, options);
  return importArchive(path, store, options);
}

function readJson(path: string, what: string): unknown {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    throw new EnvyError('IMAGE', `${what} is missing or not valid JSON`, { hint: 'the archive is not a complete OCI layout or docker-archive', cause: error });
  }
}

/** Read a blob of a layout and check it is what its digest says. */
function layoutBlob(layout: string, digest: string, where: string): Buffer {
  const path = join(layout, 'blobs/sha256', digestHex(digest, `digest in ${where}`));
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (error) {
    throw new EnvyError('IMAGE', `${where}: blob ${digest} is missing`, { hint: 'the layout is incomplete', cause: error });
  }
  if (sha256(bytes) !== digest) {
    throw new EnvyError('IMAGE', `${where}: blob ${digest} has digest ${sha256(bytes)}: its content does not match`, { hint: 'the layout is corrupt' });
  }
  return bytes;
}

export async function importOciLayout(layout: string, store: LayerStore, options: ImportOptions = {}): Promise<ImportResult> {
  const where = `OCI layout ${layout}`;
  const index = readJson(join(layout, 'index.json'), `${where}: index.json`) as OciIndex;
  if (!Array.isArray(index.manifests) || index.manifests.length === 0) throw new EnvyError('IMAGE', `${where}: index.json lists no images`);
  let candidates = index.manifests;
  if (options.tag !== undefined) {
    candidates = candidates.filter((entry) => entry.annotations?.[REF_NAME] === options.tag);
    if (candidates.length === 0) {
      const names = index.manifests.map((entry) => entry.annotations?.[REF_NAME]).filter(Boolean);
      throw new EnvyError('IMAGE', `${where} has no image named "${options.tag}" (it has: ${names.join(', ') || 'no names'})`);
    }
  }
  const platform = options.platform ?? hostPlatform();
  let descriptor =
    candidates.length === 1 ? candidates[0]! : selectPlatform({ ...index, manifests: candidates }, platform, where);
  let bytes = layoutBlob(layout, descriptor.digest, where);
  let document = JSON.parse(bytes.toString('utf8')) as unknown;
  if (manifestKind(descriptor.mediaType, document, `${where}: ${descriptor.digest}`) === 'index') {
    descriptor = selectPlatform(document as OciIndex, platform, where);
    bytes = layoutBlob(layout, descriptor.digest, where);
    document = JSON.parse(bytes.toString('utf8')) as unknown;
    if (manifestKind(descriptor.mediaType, document, `${where}: ${descriptor.digest}`) !== 'manifest') {
      throw new EnvyError('IMAGE', `${where}: nested indexes are not supported`);
    }
  }
  const manifest = document as OciManifest;
  const configBytes = layoutBlob(layout, manifest.config.digest, where);
  const parsed = parseImageConfig(JSON.parse(configBytes.toString('utf8')) as OciImageConfig, manifest, where);
  await store.putBlob(descriptor.digest, bytes, where);
  await store.putBlob(manifest.config.digest, configBytes, where);
  const layers: ImageLayer[] = [];
  for (const [i, layer] of manifest.layers.entries()) {
    const diffId = parsed.diffIds[i]!;
    layers.push({ diffId, blobDigest: layer.digest, mediaType: layer.mediaType, blobSize: layer.size });
    if (store.hasLayer(diffId)) continue;
    await store.withBlobLock(layer.digest, async () => {
      if (store.hasBlob(layer.digest)) return;
      const temp = store.blobTempPath();
      copyFileSync(join(layout, 'blobs/sha256', digestHex(layer.digest, `layer digest in ${where}`)), temp);
      await store.commitBlob(layer.digest, temp, where);
    });
    await store.addLayer(store.blobPath(layer.digest), {
      label: layer.digest,
      createdBy: `oci-import ${layout}@${descriptor.digest}`,
      expectedDiffId: diffId,
      blobDigest: layer.digest,
      unpack: options.unpack,
      chown: options.chown,
      removeTree: options.removeTree,
    });
  }
  const image: ImageRecord = {
    key: imageKeyForDigest(descriptor.digest),
    source: `oci:${layout}`,
    manifestDigest: descriptor.digest,
    configDigest: manifest.config.digest,
    ...(parsed.platform ? { platform: parsed.platform } : {}),
    layers,
    config: parsed.config,
    createdAt: new Date().toISOString(),
  };
  await store.writeImage(image);
  return { image, digest: descriptor.digest };
}

interface DockerArchiveEntry {
  Config: string;
  RepoTags?: string[] | null;
  Layers: string[];
}

/**
 * Unpack the archive's regular files into a scratch dir inside the store
 * (tar members can only be read in order; the manifest may come last), then
 * import from there. Member names are confined like layer entries.
 */
async function importArchive(file: string, store: LayerStore, options: ImportOptions): Promise<ImportResult> {
  const scratch = join(store.root, 'layers', tempName('import'));
  mkdirSync(scratch, { recursive: true });
  try {
    await unpackArchiveFiles(file, scratch);
    if (isFile(join(scratch, 'manifest.json'))) return await importDockerArchive(file, scratch, store, options);
    if (isFile(join(scratch, 'index.json'))) {
      const result = await importOciLayout(scratch, store, options);
      result.image.source = `oci:${file}`;
      await store.writeImage(result.image);
      return result;
    }
    throw new EnvyError('IMAGE', `${file} is neither a docker-archive (no manifest.json) nor an oci-archive (no index.json)`, {
      hint: 'create it with `docker save`, `podman save` or `skopeo copy ... oci-archive:FILE`',
    });
  } finally {
    removeTree(scratch);
  }
}

async function unpackArchiveFiles(file: string, scratch: string): Promise<void> {
  const head = Buffer.alloc(4);
  const fd = openSync(file, 'r');
  try {
    readSync(fd, head, 0, 4, 0);
  } finally {
    closeSync(fd);
  }
  const source: Readable = sniffCompression(head) === 'gzip' ? createReadStream(file).pipe(createGunzip()) : createReadStream(file);
  const extract = tar.extract();
  const feeding = pipeline(source, extract);
  feeding.catch(() => {});
  try {
    for await (const entry of extract) {
      const name = entry.header.name;
      const parts = name.split('/').filter((part) => part !== '' && part !== '.');
      if (name.startsWith('/') || parts.includes('..')) {
        throw new EnvyError('IMAGE', `archive ${file}: member "${name}" escapes the archive`, { hint: 'the archive is unsafe and was not imported' });
      }
      if (entry.header.type !== 'file' || parts.length === 0) {
        for await (const chunk of entry) void chunk;
        continue;
      }
      const target = join(scratch, ...parts);
      mkdirSync(join(target, '..'), { recursive: true });
      await pipeline(entry as unknown as Readable, createWriteStream(target));
    }
    await feeding;
  } catch (error) {
    source.destroy();
    if (error instanceof EnvyError) throw error;
    throw new EnvyError('IMAGE', `archive ${file} could not be read: ${(error as Error).message}`, { hint: 'the file is not a tar archive, or it is truncated', cause: error });
  }
}

function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/** The digest a docker-archive member name carries: `blobs/sha256/<hex>` or `<hex>.json`. */
function digestInName(name: string): string | undefined {
  const match = /(?:^|\/)(?:blobs\/sha256\/)?([a-f0-9]{64})(?:\.json)?$/.exec(name);
  return match ? `sha256:${match[1]}` : undefined;
}

async function importDockerArchive(file: string, scratch: string, store: LayerStore, options: ImportOptions): Promise<ImportResult> {
  const where = `docker-archive ${file}`;
  const entries = readJson(join(scratch, 'manifest.json'), `${where}: manifest.json`) as DockerArchiveEntry[];
  if (!Array.isArray(entries) || entries.length === 0) throw new EnvyError('IMAGE', `${where}: manifest.json lists no images`);
  let entry: DockerArchiveEntry | undefined;
  if (options.tag !== undefined) {
    entry = entries.find((e) => (e.RepoTags ?? []).some((tag) => tag === options.tag || tag.endsWith(`/${options.tag}`)));
    if (!entry) throw new EnvyError('IMAGE', `${where} has no image tagged "${options.tag}" (it has: ${entries.flatMap((e) => e.RepoTags ?? []).join(', ') || 'no tags'})`);
  } else if (entries.length === 1) {
    entry = entries[0]!;
  } else {
    throw new EnvyError('IMAGE', `${where} holds ${entries.length} images; say which`, {
      hint: `one of: ${entries.flatMap((e) => e.RepoTags ?? []).join(', ')}`,
    });
  }
  const member = (name: string): string => {
    const parts = name.split('/').filter((part) => part !== '' && part !== '.');
    if (name.startsWith('/') || parts.includes('..')) throw new EnvyError('IMAGE', `${where}: manifest.json names "${name}", outside the archive`);
    return join(scratch, ...parts);
  };
  const configBytes = readFileSync(member(entry.Config));
  const configDigest = sha256(configBytes);
  const namedConfig = digestInName(entry.Config);
  if (namedConfig && namedConfig !== configDigest) {
    throw new EnvyError('IMAGE', `${where}: config ${entry.Config} has digest ${configDigest}: its content does not match`, { hint: 'the archive is corrupt' });
  }
  const parsed = parseImageConfig(JSON.parse(configBytes.toString('utf8')) as OciImageConfig, { layers: entry.Layers }, where);
  if (options.platform && parsed.platform && parsed.platform.architecture !== options.platform.architecture) {
    throw new EnvyError('IMAGE', `${where} is for ${formatPlatform(parsed.platform)}, not ${formatPlatform(options.platform)}`);
  }
  await store.putBlob(configDigest, configBytes, where);
  const layers: ImageLayer[] = [];
  for (const [i, name] of entry.Layers.entries()) {
    const diffId = parsed.diffIds[i]!;
    const path = member(name);
    const { digest, size } = await sha256File(path);
    const named = digestInName(name);
    if (named && named !== digest) {
      throw new EnvyError('IMAGE', `${where}: layer ${name} has digest ${digest}: its content does not match`, { hint: 'the archive is corrupt' });
    }
    layers.push({ diffId, blobDigest: digest, blobSize: size });
    if (store.hasLayer(diffId)) continue;
    await store.withBlobLock(digest, async () => {
      if (store.hasBlob(digest)) return;
      const temp = store.blobTempPath();
      copyFileSync(path, temp);
      await store.commitBlob(digest, temp, where);
    });
    await store.addLayer(store.blobPath(digest), {
      label: `${name} (${digest})`,
      createdBy: `docker-archive-import ${file}`,
      expectedDiffId: diffId,
      blobDigest: digest,
      unpack: options.unpack,
      chown: options.chown,
      removeTree: options.removeTree,
    });
  }
  const image: ImageRecord = {
    key: imageKeyForDigest(configDigest),
    source: `oci:${file}`,
    configDigest,
    ...(parsed.platform ? { platform: parsed.platform } : {}),
    layers,
    config: parsed.config,
    createdAt: new Date().toISOString(),
  };
  await store.writeImage(image);
  return { image, digest: configDigest };
}
