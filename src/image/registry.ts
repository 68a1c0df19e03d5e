/**
 * `image: <ref>`: a client for the OCI distribution API. It resolves a tag or
 * digest to a manifest (picking the host's platform from an index), verifies
 * the digest of every manifest and blob, downloads blobs in parallel with
 * Range-resume, and unpacks each layer into the store. Auth follows the
 * registry's WWW-Authenticate challenge: bearer tokens from the realm
 * (anonymous or with stored credentials) or basic auth.
 */
import { createHash } from 'node:crypto';
import { closeSync, createReadStream, existsSync, openSync, rmSync, statSync, truncateSync, writeSync } from 'node:fs';
import { Readable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { EnvyError } from '../errors.js';
import { debug } from '../exec.js';
import { basicAuthorization, findCredentials, parseChallenge, type Credentials } from './auth.js';
import { digestHex, isDigest, sha256 } from './digest.js';
import { MANIFEST_ACCEPT, manifestKind } from './media-types.js';
import { parseImageConfig, type OciDescriptor, type OciImageConfig, type OciIndex, type OciManifest } from './oci.js';
import { apiHost, formatReference, isLoopbackRegistry, parseReference, referenceTarget, type ImageReference } from './reference.js';
import { imageKeyForDigest, type ImageLayer, type ImageRecord, type LayerStore, type Platform, type Unpacker } from './store.js';

export interface PullProgress {
  /** The blob's digest. */
  blob: string;
  phase: 'cached' | 'download' | 'unpack' | 'done';
  done: number;
  total: number;
}

export interface PullOptions {
  /** Default: the host's (linux + Node's arch). */
  platform?: Platform;
  onProgress?: (progress: PullProgress) => void;
  /** Parallel blob downloads (default 4). */
  concurrency?: number;
  /** Plain HTTP for a non-loopback registry (loopback registries always use HTTP). */
  insecure?: boolean;
  /** Attempts per blob before giving up (default 4); each retry resumes with Range. */
  attempts?: number;
  unpack?: Unpacker;
  /** Deletes a half-made layer: needed with `chown` (see AddLayerOptions). */
  removeTree?: (path: string) => Promise<void> | void;
  chown?: boolean;
  env?: NodeJS.ProcessEnv;
}

export interface PullResult {
  reference: ImageReference;
  /** The digest of the platform manifest (pin this in env.lock). */
  manifestDigest: string;
  /** The digest the reference resolved to first (an index, or the manifest itself). */
  resolvedDigest: string;
  image: ImageRecord;
}

export function hostPlatform(arch: string = process.arch): Platform {
  switch (arch) {
    case 'x64':
      return { os: 'linux', architecture: 'amd64' };
    case 'arm64':
      return { os: 'linux', architecture: 'arm64', variant: 'v8' };
    case 'arm':
      return { os: 'linux', architecture: 'arm', variant: 'v7' };
    default:
      return { os: 'linux', architecture: arch };
  }
}

export function formatPlatform(platform: Platform): string {
  return `${platform.os}/${platform.architecture}${platform.variant ? `/${platform.variant}` : ''}`;
}

/** The index entry for `platform`: exact variant first; arm64 entries without a variant count as v8. */
export function selectPlatform(index: OciIndex, platform: Platform, where: string): OciDescriptor {
  const candidates = index.manifests.filter(
    (entry) => entry.platform?.os === platform.os && entry.platform?.architecture === platform.architecture && isDigest(entry.digest),
  );
  const normalizedVariant = (variant: string | undefined, architecture: string): string | undefined =>
    variant ?? (architecture === 'arm64' ? 'v8' : undefined);
  const wanted = normalizedVariant(platform.variant, platform.architecture);
  const exact = candidates.find((entry) => normalizedVariant(entry.platform?.variant, entry.platform!.architecture) === wanted);
  const chosen = exact ?? (wanted === undefined ? candidates[0] : undefined);
  if (!chosen) {
    const available = index.manifests
      .map((entry) => (entry.platform ? formatPlatform(entry.platform as Platform) : 'unknown'))
      .filter((name) => name !== 'unknown/unknown')
      .join(', ');
    throw new EnvyError('IMAGE', `${where} has no image for ${formatPlatform(platform)} (it has: ${available || 'none'})`, {
      hint: 'choose an image built for this machine, or use the vm backend with a matching arch',
    });
  }
  return chosen;
}

interface BlobResponse {
  response: Response;
}

/** One repository on one registry, with its auth state. */
export class RegistryClient {
  private authorization: string | undefined;
  private credentials: Credentials | undefined | null = null;
  readonly base: string;

  constructor(
    readonly reference: ImageReference,
    private readonly options: { insecure?: boolean; env?: NodeJS.ProcessEnv } = {},
  ) {
    const scheme = isLoopbackRegistry(reference.registry) || options.insecure ? 'http' : 'https';
    this.base = `${scheme}://${apiHost(reference.registry)}/v2/${reference.repository}`;
  }

  private creds(): Credentials | undefined {
    if (this.credentials === null) this.credentials = findCredentials(this.reference.registry, this.options.env ?? process.env);
    return this.credentials;
  }

  /** GET with auth: on 401 answer the challenge once and retry. */
  async get(url: string, headers: Record<string, string> = {}): Promise<Response> {
    let response = await this.fetch(url, headers);
    if (response.status !== 401) return response;
    const challenge = parseChallenge(response.headers.get('www-authenticate') ?? '');
    await response.body?.cancel();
    if (!challenge) throw this.denied(url, 'it asked for authentication without a usable WWW-Authenticate header');
    if (challenge.scheme === 'bearer') this.authorization = `Bearer ${await this.token(challenge.params)}`;
    else if (challenge.scheme === 'basic') {
      const creds = this.creds();
      if (!creds) throw this.denied(url, 'it requires a login and no credentials were found');
      this.authorization = basicAuthorization(creds);
    } else throw this.denied(url, `it asked for unsupported auth scheme ${challenge.scheme}`);
    response = await this.fetch(url, headers);
    if (response.status === 401 || response.status === 403) {
      await response.body?.cancel();
      throw this.denied(url, `it refused the ${challenge.scheme} credentials${this.creds() ? ` from ${this.creds()!.source}` : ' (anonymous)'}`);
    }
    return response;
  }

  private async fetch(url: string, headers: Record<string, string>): Promise<Response> {
    debug(`GET ${url}${headers.Range ? ` (${headers.Range})` : ''}`);
    try {
      return await fetch(url, { headers: { ...headers, ...(this.authorization ? { Authorization: this.authorization } : {}) }, redirect: 'follow' });
    } catch (error) {
      const cause = (error as { cause?: { code?: string; message?: string } }).cause;
      throw new EnvyError('REGISTRY', `cannot reach registry ${this.reference.registry}: ${cause?.code ?? cause?.message ?? (error as Error).message}`, {
        hint: 'check the network and the registry name; loopback registries are spoken to over HTTP, others over HTTPS',
        cause: error,
      });
    }
  }

  private denied(url: string, why: string): EnvyError {
    return new EnvyError('REGISTRY', `registry ${this.reference.registry} denied ${this.reference.repository}: ${why}`, {
      hint: 'log in with `docker login` or `podman login` (envy reads their auth files), or check the image name',
      details: [url],
    });
  }

  private async token(params: Record<string, string>): Promise<string> {
    const realm = params.realm;
    if (!realm) throw new EnvyError('REGISTRY', `registry ${this.reference.registry} sent a bearer challenge without a realm`);
    const url = new URL(realm);
    if (params.service) url.searchParams.set('service', params.service);
    url.searchParams.set('scope', params.scope ?? `repository:${this.reference.repository}:pull`);
    const creds = this.creds();
    debug(`GET ${url.toString()} (token${creds ? `, as ${creds.username}` : ', anonymous'})`);
    let response: Response;
    try {
      response = await fetch(url, { headers: creds ? { Authorization: basicAuthorization(creds) } : {} });
    } catch (error) {
      throw new EnvyError('REGISTRY', `cannot reach the token service ${url.origin} of ${this.reference.registry}: ${(error as Error).message}`, { cause: error });
    }
    if (!response.ok) {
      await response.body?.cancel();
      throw this.denied(url.toString(), `its token service answered ${response.status}${creds ? ` to the credentials from ${creds.source}` : ' to an anonymous request'}`);
    }
    const body = (await response.json()) as { token?: string; access_token?: string };
    const token = body.token ?? body.access_token;
    if (!token) throw new EnvyError('REGISTRY', `the token service of ${this.reference.registry} returned no token`);
    return token;
  }

  /** Fetch a manifest by tag or digest; its digest is computed from the bytes, and checked when asked by digest. */
  async manifest(target: string): Promise<{ digest: string; mediaType: string; bytes: Buffer }> {
    const url = `${this.base}/manifests/${target}`;
    const response = await this.get(url, { Accept: MANIFEST_ACCEPT });
    const where = `${formatReference({ ...this.reference, tag: isDigest(target) ? undefined : target, digest: isDigest(target) ? target : undefined })}`;
    if (response.status === 404) {
      await response.body?.cancel();
      throw new EnvyError('REGISTRY', `image ${where} was not found on ${this.reference.registry}`, { hint: 'check the name and tag (envy pulls exactly what is written)' });
    }
    if (!response.ok) {
      await response.body?.cancel();
      throw new EnvyError('REGISTRY', `registry ${this.reference.registry} answered ${response.status} for manifest ${where}`);
    }
    const bytes = Buffer.from(await response.arrayBuffer());
    const digest = sha256(bytes);
    if (isDigest(target) && digest !== target) {
      throw new EnvyError('REGISTRY', `manifest ${target} of ${where} has digest ${digest}: content does not match`, {
        hint: 'the registry or a proxy served wrong content; try again',
      });
    }
    return { digest, mediaType: response.headers.get('content-type') ?? '', bytes };
  }

  async blobResponse(digest: string, offset: number): Promise<BlobResponse> {
    const response = await this.get(`${this.base}/blobs/${digest}`, offset > 0 ? { Range: `bytes=${offset}-` } : {});
    return { response };
  }
}

/** A failure to fetch a blob (as opposed to a failure to unpack what arrived): the .partial file is kept for resuming. */
class DownloadError extends EnvyError {}

/**
 * A blob's bytes as a stream, from byte 0, while they arrive: first what an earlier, interrupted pull left
 * in `.partial-<hex>`, then the registry's answer to a Range request for the rest. Every byte is appended
 * to the .partial file too, so a pull killed or cut off resumes there; a connection that drops mid-blob is
 * retried with Range (backoff, `attempts` in all) without the reader noticing. The last chunk is held back
 * until the whole blob's digest is checked: whoever reads (the unpacker) never sees the end of a blob that
 * does not match. On a match the .partial file becomes the blob in blobs/; on a mismatch it is deleted.
 */
function blobStream(client: RegistryClient, store: LayerStore, descriptor: OciDescriptor, attempts: number, onBytes: (done: number) => void): Readable {
  const partial = store.partialBlobPath(descriptor.digest);
  async function* bytes(): AsyncGenerator<Buffer> {
    const hash = createHash('sha256');
    let size = 0;
    let held: Buffer | undefined;
    const take = (chunk: Buffer): Buffer | undefined => {
      hash.update(chunk);
      size += chunk.length;
      onBytes(size);
      const previous = held;
      held = chunk;
      return previous;
    };
    if (existsSync(partial) && statSync(partial).size > descriptor.size) truncateSync(partial, 0);
    if (existsSync(partial)) {
      for await (const chunk of createReadStream(partial)) {
        const ready = take(chunk as Buffer);
        if (ready) yield ready;
      }
    }
    const out = openSync(partial, 'a');
    try {
      let lastError: unknown;
      for (let attempt = 0; size < descriptor.size && attempt < attempts; attempt += 1) {
        if (attempt > 0) await new Promise((resolve) => setTimeout(resolve, Math.min(2000, 100 * 2 ** attempt)));
        let response: Response;
        try {
          ({ response } = await client.blobResponse(descriptor.digest, size));
        } catch (error) {
          if (error instanceof EnvyError && error.code === 'REGISTRY' && /denied/.test(error.message)) throw error;
          lastError = error;
          continue;
        }
        if (response.status === 404) {
          await response.body?.cancel();
          throw new DownloadError('REGISTRY', `blob ${descriptor.digest} is missing on ${client.reference.registry} (${client.reference.repository})`, {
            hint: 'the image was pushed incompletely or deleted; push it again',
          });
        }
        if (!response.ok || !response.body) {
          await response.body?.cancel();
          lastError = new Error(`the registry answered ${response.status}`);
          continue;
        }
        // 200 to a Range request: the server ignores ranges; skip what we already have.
        let skip = response.status === 206 ? 0 : size;
        try {
          for await (const raw of Readable.fromWeb(response.body as unknown as WebReadableStream<Uint8Array>)) {
            let chunk = raw as Buffer;
            if (skip > 0) {
              const dropped = Math.min(skip, chunk.length);
              skip -= dropped;
              chunk = chunk.subarray(dropped);
              if (chunk.length === 0) continue;
            }
            if (size + chunk.length > descriptor.size) throw new DownloadError('REGISTRY', `blob ${descriptor.digest} from ${client.reference.registry} is longer than the ${descriptor.size} bytes its manifest says`);
            writeSync(out, chunk);
            const ready = take(chunk);
            if (ready) yield ready;
          }
        } catch (error) {
          if (error instanceof DownloadError) throw error;
          lastError = error;
          continue;
        }
        if (size < descriptor.size) lastError = new Error(`connection closed after ${size} of ${descriptor.size} bytes`);
      }
      if (size !== descriptor.size) {
        const why = lastError instanceof Error ? lastError.message : String(lastError);
        throw new DownloadError('REGISTRY', `blob ${descriptor.digest} from ${client.reference.registry} failed after ${attempts} attempts: ${why}`, {
          hint: 'run the pull again: it resumes where it stopped',
          cause: lastError,
        });
      }
    } finally {
      closeSync(out);
    }
    const actual = `sha256:${hash.digest('hex')}`;
    if (actual !== descriptor.digest) {
      rmSync(partial, { force: true });
      throw new DownloadError('IMAGE', `blob ${descriptor.digest} from ${client.reference.registry}/${client.reference.repository} has digest ${actual}: its content does not match, deleted`, {
        hint: 'the source is corrupt or was tampered with; try again, and report it to the image publisher if it persists',
      });
    }
    // The .partial file stays until the layer is in the store (pullImage removes it then): a pull killed
    // while unpacking resumes from it without downloading again. The blob itself is not kept.
    if (held) yield held;
  }
  return Readable.from(bytes(), { objectMode: false });
}

/**
 * A layer's compressed blob is not kept once the layer is unpacked: nothing reads it again (export re-tars
 * the unpacked layer, a pull skips layers the store has), and writing it into blobs/ cost a second copy
 * of every image on disk. What remains of the download (its .partial file) goes now; deleted this soon,
 * its pages are usually never written back at all.
 */
function dropDownloadedBlob(store: LayerStore, digest: string): void {
  rmSync(store.partialBlobPath(digest), { force: true });
}

/** Run `work` over `items` with at most `limit` in flight; the first failure wins once all settle. */
export async function forEachLimited<T>(items: T[], limit: number, work: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  const errors: unknown[] = [];
  const worker = async (): Promise<void> => {
    while (next < items.length && errors.length === 0) {
      const index = next;
      next += 1;
      try {
        await work(items[index]!, index);
      } catch (error) {
        errors.push(error);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (errors.length > 0) throw errors[0];
}

/** Pull `ref` into `store`: resolve, verify, download, unpack, record. */
export async function pullImage(ref: string | ImageReference, store: LayerStore, options: PullOptions = {}): Promise<PullResult> {
  const reference = typeof ref === 'string' ? parseReference(ref) : ref;
  const client = new RegistryClient(reference, { insecure: options.insecure, env: options.env });
  const platform = options.platform ?? hostPlatform();
  const where = formatReference(reference);

  const first = await client.manifest(referenceTarget(reference));
  let manifestDoc = first;
  let document: unknown = parseJson(first.bytes, `manifest of ${where}`);
  if (manifestKind(first.mediaType, document, `manifest of ${where}`) === 'index') {
    const chosen = selectPlatform(document as OciIndex, platform, where);
    manifestDoc = await client.manifest(chosen.digest);
    document = parseJson(manifestDoc.bytes, `manifest ${chosen.digest} of ${where}`);
    if (manifestKind(manifestDoc.mediaType, document, `manifest ${chosen.digest} of ${where}`) !== 'manifest') {
      throw new EnvyError('IMAGE', `${where}: the index entry for ${formatPlatform(platform)} is itself an index`, { hint: 'nested indexes are not supported' });
    }
  }
  const manifest = document as OciManifest;
  const key = imageKeyForDigest(manifestDoc.digest);
  if (store.hasImage(key) && store.readImage(key).layers.every((layer) => store.hasLayer(layer.diffId))) {
    for (const layer of store.readImage(key).layers) options.onProgress?.({ blob: layer.blobDigest ?? layer.diffId, phase: 'cached', done: 0, total: 0 });
    return { reference, manifestDigest: manifestDoc.digest, resolvedDigest: first.digest, image: store.readImage(key) };
  }
  if (!manifest.config || !isDigest(manifest.config.digest) || !Array.isArray(manifest.layers)) {
    throw new EnvyError('IMAGE', `manifest ${manifestDoc.digest} of ${where} has no config or layers`);
  }
  await store.putBlob(manifestDoc.digest, manifestDoc.bytes, where);
  const config = await fetchConfig(client, store, manifest.config, where);
  const parsed = parseImageConfig(config, manifest, `image ${where}`);

  const layers: ImageLayer[] = manifest.layers.map((descriptor, index) => {
    digestHex(descriptor.digest, `layer digest in ${where}`);
    return { diffId: parsed.diffIds[index]!, blobDigest: descriptor.digest, mediaType: descriptor.mediaType, blobSize: descriptor.size };
  });
  const progress = (descriptor: OciDescriptor, phase: PullProgress['phase'], done: number): void =>
    options.onProgress?.({ blob: descriptor.digest, phase, done, total: descriptor.size });
  const missing = manifest.layers.filter((descriptor, index) => {
    if (!store.hasLayer(layers[index]!.diffId)) return true;
    progress(descriptor, 'cached', descriptor.size);
    return false;
  });
  // Each layer streams from the registry straight into its unpacker (a worker process in the build), so
  // downloads, digest checks and unpacking of different layers overlap and no blob is read twice.
  await forEachLimited(missing, options.concurrency ?? 4, async (descriptor) => {
    let downloading = false;
    const open = (): Readable => {
      downloading = true;
      return blobStream(client, store, descriptor, options.attempts ?? 4, (done) => progress(descriptor, 'download', done));
    };
    try {
      await store.addLayer(
        // The blob lock guards the .partial file; the layer lock (taken by addLayer) the unpacking.
        () => (store.hasBlob(descriptor.digest) ? store.blobPath(descriptor.digest) : open()),
        {
          label: descriptor.digest,
          createdBy: `pull ${reference.registry}/${reference.repository}@${manifestDoc.digest}`,
          expectedDiffId: layers[manifest.layers.indexOf(descriptor)]!.diffId,
          blobDigest: descriptor.digest,
          unpack: options.unpack,
          chown: options.chown,
          removeTree: options.removeTree,
          lockBlob: true,
        },
      );
    } catch (error) {
      // What arrived could not be unpacked (a corrupt stream, an unsafe tar): no use resuming from it.
      if (downloading && !(error instanceof DownloadError)) rmSync(store.partialBlobPath(descriptor.digest), { force: true });
      throw error;
    }
    dropDownloadedBlob(store, descriptor.digest);
    progress(descriptor, 'done', descriptor.size);
  });

  const image: ImageRecord = {
    key,
    source: where,
    manifestDigest: manifestDoc.digest,
    configDigest: manifest.config.digest,
    platform: parsed.platform ?? platform,
    layers,
    config: parsed.config,
    createdAt: new Date().toISOString(),
  };
  await store.writeImage(image);
  return { reference, manifestDigest: manifestDoc.digest, resolvedDigest: first.digest, image };
}

async function fetchConfig(client: RegistryClient, store: LayerStore, descriptor: OciDescriptor, where: string): Promise<OciImageConfig> {
  if (!store.hasBlob(descriptor.digest)) {
    const { response } = await client.blobResponse(descriptor.digest, 0);
    if (!response.ok) {
      await response.body?.cancel();
      throw new EnvyError('REGISTRY', `registry ${client.reference.registry} answered ${response.status} for the config ${descriptor.digest} of ${where}`);
    }
    const bytes = Buffer.from(await response.arrayBuffer());
    await store.putBlob(descriptor.digest, bytes, where);
  }
  return parseJson(store.readBlob(descriptor.digest), `config ${descriptor.digest} of ${where}`) as OciImageConfig;
}

function parseJson(bytes: Buffer, what: string): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch (error) {
    throw new EnvyError('IMAGE', `${what} is not valid JSON: ${(error as Error).message}`);
  }
}
