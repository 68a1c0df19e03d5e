/**
 * `oci: <path>`: import an OCI image layout directory, or a tarball written by
 * `docker save` / `podman save` (docker-archive, old `<id>/layer.tar` form or
 * the blobs/sha256 form of newer docker) or an oci-archive. Every document and
 * layer is checked against its digest before the store trusts it.
 */
import { closeSync, createReadStream, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createGunzip } from 'node:zlib';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import { EnvyError } from '../errors.js';
import { digestHex, HashingStream, sha256, VerifyingStream } from './digest.js';
import { chain } from './extract.js';
import { fileRangeStream } from './file-range.js';
import { DOCUMENT_MAX, scanTar, type ArchiveMember } from './tar-scan.js';
import { manifestKind, sniffCompression } from './media-types.js';
import { parseImageConfig, type OciDescriptor, type OciImageConfig, type OciIndex, type OciManifest } from './oci.js';
import { formatPlatform, hostPlatform, selectPlatform } from './registry.js';
import { imageKeyForDigest, type ImageLayer, type ImageRecord, type LayerStore, type Platform, type Unpacker } from './store.js';

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

/**
 * Where a layout's blobs come from: a directory (`blobs/sha256/<hex>` files) or an archive read in one
 * pass (documents kept in memory, layers already unpacked while the archive was read).
 */
interface LayoutBlobs {
  /** A document (index, manifest, config), checked against its digest. */
  document(digest: string, where: string): Buffer;
  /** Make sure the layer with this descriptor and diff_id is in the store. */
  layer(descriptor: OciDescriptor, diffId: string, where: string, createdBy: string): Promise<void>;
}

function mismatch(where: string, digest: string, hint: string): (actual: string) => EnvyError {
  return (actual) => new EnvyError('IMAGE', `${where}: blob ${digest} has digest ${actual}: its content does not match`, { hint });
}

function checkedDocument(bytes: Buffer | undefined, digest: string, where: string): Buffer {
  if (!bytes) throw new EnvyError('IMAGE', `${where}: blob ${digest} is missing`, { hint: 'the layout is incomplete' });
  if (sha256(bytes) !== digest) throw mismatch(where, digest, 'the layout is corrupt')(sha256(bytes));
  return bytes;
}

function directoryBlobs(layout: string, store: LayerStore, options: ImportOptions): LayoutBlobs {
  const path = (digest: string, where: string): string => join(layout, 'blobs/sha256', digestHex(digest, `digest in ${where}`));
  return {
    document(digest, where) {
      let bytes: Buffer | undefined;
      try {
        bytes = readFileSync(path(digest, where));
      } catch {
        bytes = undefined;
      }
      return checkedDocument(bytes, digest, where);
    },
    async layer(descriptor, diffId, where, createdBy) {
      const file = path(descriptor.digest, where);
      if (!isFile(file)) throw new EnvyError('IMAGE', `${where}: blob ${descriptor.digest} is missing`, { hint: 'the layout is incomplete' });
      // Unpacked straight from the layout, its digest checked on the way (no copy into the store).
      await store.addLayer(() => chain(createReadStream(file), new VerifyingStream(descriptor.digest, mismatch(where, descriptor.digest, 'the layout is corrupt'))), {
        label: descriptor.digest,
        createdBy,
        expectedDiffId: diffId,
        unpack: options.unpack,
        chown: options.chown,
        removeTree: options.removeTree,
      });
    },
  };
}

export async function importOciLayout(layout: string, store: LayerStore, options: ImportOptions = {}): Promise<ImportResult> {
  return importLayout(layout, `OCI layout ${layout}`, readJson(join(layout, 'index.json'), `OCI layout ${layout}: index.json`) as OciIndex, directoryBlobs(layout, store, options), store, options);
}

async function importLayout(source: string, where: string, index: OciIndex, blobs: LayoutBlobs, store: LayerStore, options: ImportOptions): Promise<ImportResult> {
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
  let bytes = blobs.document(descriptor.digest, where);
  let document = JSON.parse(bytes.toString('utf8')) as unknown;
  if (manifestKind(descriptor.mediaType, document, `${where}: ${descriptor.digest}`) === 'index') {
    descriptor = selectPlatform(document as OciIndex, platform, where);
    bytes = blobs.document(descriptor.digest, where);
    document = JSON.parse(bytes.toString('utf8')) as unknown;
    if (manifestKind(descriptor.mediaType, document, `${where}: ${descriptor.digest}`) !== 'manifest') {
      throw new EnvyError('IMAGE', `${where}: nested indexes are not supported`);
    }
  }
  const manifest = document as OciManifest;
  const configBytes = blobs.document(manifest.config.digest, where);
  const parsed = parseImageConfig(JSON.parse(configBytes.toString('utf8')) as OciImageConfig, manifest, where);
  await store.putBlob(descriptor.digest, bytes, where);
  await store.putBlob(manifest.config.digest, configBytes, where);
  const layers: ImageLayer[] = [];
  for (const [i, layer] of manifest.layers.entries()) {
    const diffId = parsed.diffIds[i]!;
    digestHex(layer.digest, `layer digest in ${where}`);
    layers.push({ diffId, mediaType: layer.mediaType, blobSize: layer.size });
    if (!store.hasLayer(diffId)) await blobs.layer(layer, diffId, where, `oci-import ${source}@${descriptor.digest}`);
  }
  const image: ImageRecord = {
    key: imageKeyForDigest(descriptor.digest),
    source: `oci:${source}`,
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


/** A big archive member, unpacked into the store as a layer while the archive was read. */
interface StreamedLayer {
  diffId: string;
  /** sha256 of the member's bytes (the blob digest, for compressed layers). */
  digest: string;
  size: number;
}

interface ArchiveContents {
  documents: Map<string, Buffer>;
  layers: Map<string, StreamedLayer>;
}

/**
 * Read a docker-archive or oci-archive in one pass. Tar members can only be read in order and the
 * manifest may come last (docker save, envy export), so small members are kept in memory and every big
 * one, which can only be a layer, is unpacked into the store as it streams by, under the diff_id its
 * content has; the manifest and config then decide which of them the image is made of and check that
 * their diff_ids and digests are the ones it names. (The archive used to be copied into the store
 * first: a full write and two more reads of every layer.)
 */
async function importArchive(file: string, store: LayerStore, options: ImportOptions): Promise<ImportResult> {
  const contents = await readArchive(file, store, options);
  if (contents.documents.has('manifest.json')) return importDockerArchive(file, contents, store, options);
  const index = contents.documents.get('index.json');
  if (index) {
    const where = `oci-archive ${file}`;
    let parsed: OciIndex;
    try {
      parsed = JSON.parse(index.toString('utf8')) as OciIndex;
    } catch (error) {
      throw new EnvyError('IMAGE', `${where}: index.json is not valid JSON`, { cause: error });
    }
    return importLayout(file, where, parsed, archiveBlobs(contents, store, options), store, options);
  }
  throw new EnvyError('IMAGE', `${file} is neither a docker-archive (no manifest.json) nor an oci-archive (no index.json)`, {
    hint: 'create it with `docker save`, `podman save` or `skopeo copy ... oci-archive:FILE`',
  });
}

function archiveBlobs(contents: ArchiveContents, store: LayerStore, options: ImportOptions): LayoutBlobs {
  return {
    document: (digest, where) => checkedDocument(contents.documents.get(`blobs/sha256/${digestHex(digest, `digest in ${where}`)}`), digest, where),
    layer: (descriptor, diffId, where, createdBy) => archiveLayer(contents, `blobs/sha256/${digestHex(descriptor.digest)}`, descriptor.digest, diffId, where, createdBy, store, options),
  };
}

/** The layer an archive member holds: already unpacked (big members), or unpacked now from memory. */
async function archiveLayer(
  contents: ArchiveContents,
  name: string,
  digest: string | undefined,
  diffId: string,
  where: string,
  createdBy: string,
  store: LayerStore,
  options: ImportOptions,
): Promise<void> {
  const streamed = contents.layers.get(name);
  if (streamed) {
    if (digest && streamed.digest !== digest) throw mismatch(where, digest, 'the archive is corrupt')(streamed.digest);
    if (streamed.diffId !== diffId) {
      throw new EnvyError('IMAGE', `${where}: layer ${name} has diff_id ${streamed.diffId}, but the image config says ${diffId}`, {
        hint: 'the image is corrupt or was tampered with; export it again',
      });
    }
    return;
  }
  const bytes = contents.documents.get(name);
  if (!bytes) throw new EnvyError('IMAGE', `${where}: layer ${name} is missing`, { hint: 'the archive is incomplete' });
  if (digest && sha256(bytes) !== digest) throw mismatch(where, digest, 'the archive is corrupt')(sha256(bytes));
  await store.addLayer(() => Readable.from([bytes], { objectMode: false }), { label: `${name} (${digest ?? sha256(bytes)})`, createdBy, expectedDiffId: diffId, unpack: options.unpack, chown: options.chown, removeTree: options.removeTree });
}

/**
 * readArchive for an uncompressed archive file whose headers scanTar understands: documents are read by
 * offset, and each big member that is an uncompressed tar (a docker-archive layer) is handed to the
 * unpacker as a range of the file (createReadStream with start and end), which a layer worker reads
 * itself: this process never streams the layer's bytes. Its digest is its diff_id (the same bytes).
 * Undefined when the archive needs the streaming reader (compressed, or a compressed member).
 */
async function readArchiveByOffset(file: string, store: LayerStore, options: ImportOptions): Promise<ArchiveContents | undefined> {
  const fd = openSync(file, 'r');
  let scanned: ReturnType<typeof scanTar>;
  const contents: ArchiveContents = { documents: new Map(), layers: new Map() };
  const big: ArchiveMember[] = [];
  try {
    const head = Buffer.alloc(4);
    readSync(fd, head, 0, 4, 0);
    if (sniffCompression(head) !== 'none') return undefined;
    scanned = scanTar(fd);
    if (!scanned) return undefined;
    for (const name of [...scanned.members.map((m) => m.name), ...scanned.skipped]) {
      const parts = name.split('/').filter((part) => part !== '' && part !== '.');
      if (name.startsWith('/') || parts.includes('..')) {
        throw new EnvyError('IMAGE', `archive ${file}: member "${name}" escapes the archive`, { hint: 'the archive is unsafe and was not imported' });
      }
    }
    for (const member of scanned.members) {
      const name = member.name.split('/').filter((part) => part !== '' && part !== '.').join('/');
      if (name === '') continue;
      if (member.size <= DOCUMENT_MAX) {
        const bytes = Buffer.alloc(member.size);
        if (readSync(fd, bytes, 0, member.size, member.offset) !== member.size) return undefined;
        contents.documents.set(name, bytes);
        continue;
      }
      readSync(fd, head, 0, 4, member.offset);
      if (sniffCompression(head) !== 'none') return undefined;
      big.push({ ...member, name });
    }
  } finally {
    closeSync(fd);
  }
  for (const member of big) {
    const meta = await store.addLayer(() => fileRangeStream({ path: file, start: member.offset, end: member.offset + member.size - 1 }), {
      label: `${member.name} of ${file}`,
      createdBy: `archive-import ${file}`,
      unpack: options.unpack,
      chown: options.chown,
      removeTree: options.removeTree,
    });
    contents.layers.set(member.name, { diffId: meta.diffId, digest: meta.diffId, size: member.size });
  }
  return contents;
}

async function readArchive(file: string, store: LayerStore, options: ImportOptions): Promise<ArchiveContents> {
  const byOffset = await readArchiveByOffset(file, store, options);
  if (byOffset) return byOffset;
  const head = Buffer.alloc(4);
  const fd = openSync(file, 'r');
  try {
    readSync(fd, head, 0, 4, 0);
  } finally {
    closeSync(fd);
  }
  const source: Readable = sniffCompression(head) === 'gzip' ? chain(createReadStream(file), createGunzip()) : createReadStream(file);
  const extract = tar.extract();
  const feeding = pipeline(source, extract);
  feeding.catch(() => {});
  const contents: ArchiveContents = { documents: new Map(), layers: new Map() };
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
      const member = parts.join('/');
      if ((entry.header.size ?? 0) <= DOCUMENT_MAX) {
        const chunks: Buffer[] = [];
        for await (const chunk of entry) chunks.push(chunk as Buffer);
        contents.documents.set(member, Buffer.concat(chunks));
        continue;
      }
      const hashed = new HashingStream();
      const passing = pipeline(entry as unknown as Readable, hashed);
      passing.catch(() => {});
      const meta = await store.addLayer(hashed, {
        label: `${member} of ${file}`,
        createdBy: `archive-import ${file}`,
        unpack: options.unpack,
        chown: options.chown,
        removeTree: options.removeTree,
      });
      await passing;
      contents.layers.set(member, { diffId: meta.diffId, digest: hashed.digest(), size: hashed.size });
    }
    await feeding;
  } catch (error) {
    source.destroy();
    extract.destroy();
    if (error instanceof EnvyError) throw error;
    throw new EnvyError('IMAGE', `archive ${file} could not be read: ${(error as Error).message}`, { hint: 'the file is not a tar archive, or it is truncated', cause: error });
  }
  return contents;
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

async function importDockerArchive(file: string, contents: ArchiveContents, store: LayerStore, options: ImportOptions): Promise<ImportResult> {
  const where = `docker-archive ${file}`;
  let entries: DockerArchiveEntry[];
  try {
    entries = JSON.parse(contents.documents.get('manifest.json')!.toString('utf8')) as DockerArchiveEntry[];
  } catch (error) {
    throw new EnvyError('IMAGE', `${where}: manifest.json is not valid JSON`, { hint: 'the archive is not a complete docker-archive', cause: error });
  }
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
    return parts.join('/');
  };
  const configBytes = contents.documents.get(member(entry.Config));
  if (!configBytes) throw new EnvyError('IMAGE', `${where}: the config ${entry.Config} is missing`, { hint: 'the archive is not a complete docker-archive' });
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
    layers.push({ diffId });
    await archiveLayer(contents, member(name), digestInName(name), diffId, where, `docker-archive-import ${file}`, store, options);
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
