/**
 * `image: <ref>`: a client for the OCI distribution API. It resolves a tag or
 * digest to a manifest (picking the host's platform from an index), verifies
 * the digest of every manifest and blob, downloads blobs in parallel with
 * Range-resume, and unpacks each layer into the store. Auth follows the
 * registry's WWW-Authenticate challenge: bearer tokens from the realm
 * (anonymous or with stored credentials) or basic auth.
 */
import { createWriteStream, existsSync, statSync, truncateSync } from 'node:fs';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
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

class Counter extends Transform {
  constructor(private readonly onBytes: (bytes: number) => void) {
    super();
  }
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.onBytes(chunk.length);
    callback(null, chunk);
  }
}

/**
 * Download a blob into its .partial file, resuming from what is there with a
 * Range request; retries resume too. Then verify and move it into blobs/.
 */
async function downloadBlob(client: RegistryClient, store: LayerStore, descriptor: OciDescriptor, attempts: number, onBytes: (done: number) => void): Promise<void> {
  const partial = store.partialBlobPath(descriptor.digest);
  let lastError: unknown;
  for (let attempt = 0; attempt < attempts; attempt += 1) {
    if (attempt > 0) await new Promise((resolve) => setTimeout(resolve, Math.min(2000, 100 * 2 ** attempt)));
    let offset = existsSync(partial) ? statSync(partial).size : 0;
    if (offset > descriptor.size) {
      truncateSync(partial, 0);
      offset = 0;
    }
    if (offset === descriptor.size && offset > 0) break;
    let response: Response;
    try {
      ({ response } = await client.blobResponse(descriptor.digest, offset));
    } catch (error) {
      if (error instanceof EnvyError && error.code === 'REGISTRY' && /denied/.test(error.message)) throw error;
      lastError = error;
      continue;
    }
    if (response.status === 416) {
      await response.body?.cancel();
      truncateSync(partial, 0);
      continue;
    }
    if (response.status === 404) {
      await response.body?.cancel();
      throw new EnvyError('REGISTRY', `blob ${descriptor.digest} is missing on ${client.reference.registry} (${client.reference.repository})`, {
        hint: 'the image was pushed incompletely or deleted; push it again',
      });
    }
    if (!response.ok || !response.body) {
      await response.body?.cancel();
      lastError = new EnvyError('REGISTRY', `registry ${client.reference.registry} answered ${response.status} for blob ${descriptor.digest}`);
      continue;
    }
    // 200 to a Range request: the server ignores ranges; start over.
    const append = response.status === 206 && offset > 0;
    if (!append) offset = 0;
    let done = offset;
    onBytes(done);
    try {
      await pipeline(
        Readable.fromWeb(response.body as unknown as WebReadableStream<Uint8Array>),
        new Counter((bytes) => {
          done += bytes;
          onBytes(done);
        }),
        createWriteStream(partial, { flags: append ? 'a' : 'w' }),
      );
    } catch (error) {
      lastError = error;
      continue;
    }
    if (done >= descriptor.size) break;
    lastError = new Error(`connection closed after ${done} of ${descriptor.size} bytes`);
  }
  if (!existsSync(partial) || statSync(partial).size !== descriptor.size) {
    const why = lastError instanceof Error ? lastError.message : String(lastError);
    throw new EnvyError('REGISTRY', `blob ${descriptor.digest} from ${client.reference.registry} failed after ${attempts} attempts: ${why}`, {
      hint: 'run the pull again: it resumes where it stopped',
      cause: lastError,
    });
  }
  await store.commitBlob(descriptor.digest, partial, `${client.reference.registry}/${client.reference.repository}`);
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
  // Downloads first, then unpacking: unpacking is mostly synchronous file creation,
  // which would starve the sockets of downloads still running in this thread.
  await forEachLimited(missing, options.concurrency ?? 4, async (descriptor) => {
    await store.withBlobLock(descriptor.digest, async () => {
      if (!store.hasBlob(descriptor.digest)) await downloadBlob(client, store, descriptor, options.attempts ?? 4, (done) => progress(descriptor, 'download', done));
    });
  });
  // Two at a time: a zstd layer's decompression (a separate program) overlaps the other's file writes.
  await forEachLimited(missing, 2, async (descriptor) => {
    progress(descriptor, 'unpack', descriptor.size);
    await store.addLayer(store.blobPath(descriptor.digest), {
      label: descriptor.digest,
      createdBy: `pull ${reference.registry}/${reference.repository}@${manifestDoc.digest}`,
      expectedDiffId: layers[manifest.layers.indexOf(descriptor)]!.diffId,
      blobDigest: descriptor.digest,
      unpack: options.unpack,
      chown: options.chown,
      removeTree: options.removeTree,
    });
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
