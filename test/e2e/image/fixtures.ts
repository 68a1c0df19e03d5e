/**
 * Test images and a real registry. Images are written as OCI layouts straight
 * from tar-stream (independently of envy's own export), from the host's static
 * busybox, so they also run under podman; skopeo pushes them into Debian's
 * docker-registry listening on 127.0.0.1.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { makeTar, type TestEntry } from '../../unit/image/tar-helpers.js';

export interface FixtureLayer {
  entries: TestEntry[];
  compression: 'gzip' | 'zstd' | 'none';
}

export interface FixtureImage {
  manifestDigest: string;
  manifest: Buffer;
  configDigest: string;
  diffIds: string[];
  layerDigests: string[];
}

const digestOf = (data: Buffer): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;

export function writeBlob(layout: string, data: Buffer): string {
  const digest = digestOf(data);
  mkdirSync(join(layout, 'blobs/sha256'), { recursive: true });
  writeFileSync(join(layout, 'blobs/sha256', digest.slice(7)), data);
  return digest;
}

const LAYER_TYPES = { gzip: 'application/vnd.oci.image.layer.v1.tar+gzip', zstd: 'application/vnd.oci.image.layer.v1.tar+zstd', none: 'application/vnd.oci.image.layer.v1.tar' };

/** Write one image's blobs into `layout` (no index entry). */
export async function writeImage(layout: string, layers: FixtureLayer[], options: { architecture?: string; variant?: string; env?: string[]; cmd?: string[] } = {}): Promise<FixtureImage> {
  const diffIds: string[] = [];
  const descriptors = [];
  const layerDigests: string[] = [];
  for (const layer of layers) {
    const tar = await makeTar(layer.entries);
    diffIds.push(digestOf(tar));
    const blob = layer.compression === 'gzip' ? gzipSync(tar) : layer.compression === 'zstd' ? execFileSync('zstd', ['-q', '-c'], { input: tar, maxBuffer: 1 << 30 }) : tar;
    const digest = writeBlob(layout, blob);
    layerDigests.push(digest);
    descriptors.push({ mediaType: LAYER_TYPES[layer.compression], digest, size: blob.length });
  }
  const config = Buffer.from(
    JSON.stringify({
      architecture: options.architecture ?? 'amd64',
      ...(options.variant ? { variant: options.variant } : {}),
      os: 'linux',
      config: { Env: options.env ?? ['PATH=/bin'], Cmd: options.cmd ?? ['/bin/sh'], WorkingDir: '/' },
      rootfs: { type: 'layers', diff_ids: diffIds },
    }),
  );
  const configDigest = writeBlob(layout, config);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
      layers: descriptors,
    }),
  );
  return { manifestDigest: writeBlob(layout, manifest), manifest, configDigest, diffIds, layerDigests };
}

export function writeIndex(layout: string, entries: { image: FixtureImage; tag?: string; platform?: { architecture: string; os: string; variant?: string } }[]): void {
  writeFileSync(join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  writeFileSync(
    join(layout, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: entries.map(({ image, tag, platform }) => ({
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        digest: image.manifestDigest,
        size: image.manifest.length,
        ...(tag ? { annotations: { 'org.opencontainers.image.ref.name': tag } } : {}),
        ...(platform ? { platform } : {}),
      })),
    }),
  );
}

/** A nested multi-arch index blob (for skopeo copy --all). */
export function writeMultiArchIndex(layout: string, tag: string, images: { image: FixtureImage; platform: { architecture: string; os: string; variant?: string } }[]): void {
  const inner = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: images.map(({ image, platform }) => ({ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: image.manifestDigest, size: image.manifest.length, platform })),
    }),
  );
  const digest = writeBlob(layout, inner);
  writeFileSync(join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  writeFileSync(
    join(layout, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [{ mediaType: 'application/vnd.oci.image.index.v1+json', digest, size: inner.length, annotations: { 'org.opencontainers.image.ref.name': tag } }],
    }),
  );
}

/** A busybox userland split over three layers (gzip, zstd, gzip with a whiteout and an opaque dir). */
export function busyboxLayers(): FixtureLayer[] {
  const busybox = readFileSync('/usr/bin/busybox');
  const applets = ['sh', 'cat', 'ls', 'echo', 'id', 'test'];
  return [
    {
      compression: 'gzip',
      entries: [
        { name: 'bin/', type: 'directory' },
        { name: 'bin/busybox', content: busybox, mode: 0o755 },
        ...applets.map((applet) => ({ name: `bin/${applet}`, type: 'symlink' as const, linkname: 'busybox' })),
        { name: 'tmp/', type: 'directory', mode: 0o1777 },
        { name: 'var/cache/', type: 'directory' },
        { name: 'var/cache/old', content: 'stale cache' },
      ],
    },
    {
      compression: 'zstd',
      entries: [
        { name: 'etc/', type: 'directory' },
        { name: 'etc/os-release', content: 'NAME="envy test"\nID=envytest\n' },
        { name: 'etc/doomed', content: 'removed by the next layer' },
        { name: 'home/user/', type: 'directory', uid: 1000, gid: 1000 },
      ],
    },
    {
      compression: 'gzip',
      entries: [
        { name: 'etc/.wh.doomed' },
        { name: 'var/cache/.wh..wh..opq' },
        { name: 'var/cache/fresh', content: 'new cache' },
        // Incompressible, so the blob is big enough to interrupt mid-download.
        { name: 'data.bin', content: randomBytes(2_000_000) },
      ],
    },
  ];
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

export interface Registry {
  host: string;
  storage: string;
  stop(): Promise<void>;
}

/** Debian's docker-registry on 127.0.0.1 with filesystem storage under `dir`; `htpasswd` turns on basic auth. */
export async function startRegistry(dir: string, options: { htpasswd?: string } = {}): Promise<Registry> {
  const port = await freePort();
  const storage = join(dir, 'storage');
  mkdirSync(storage, { recursive: true });
  const config = [
    'version: 0.1',
    'log: {level: error}',
    `storage: {filesystem: {rootdirectory: ${storage}}, delete: {enabled: true}}`,
    `http: {addr: 127.0.0.1:${port}}`,
    ...(options.htpasswd ? [`auth: {htpasswd: {realm: envy-test, path: ${options.htpasswd}}}`] : []),
  ].join('\n');
  writeFileSync(join(dir, 'registry.yml'), config);
  const child: ChildProcess = spawn('docker-registry', ['serve', join(dir, 'registry.yml')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const host = `127.0.0.1:${port}`;
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`docker-registry exited: ${stderr}`);
    try {
      const response = await fetch(`http://${host}/v2/`);
      await response.body?.cancel();
      break;
    } catch {
      if (Date.now() > deadline) throw new Error(`docker-registry did not start: ${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    host,
    storage,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        child.once('exit', () => {
          clearTimeout(timer);
          resolve();
        });
        child.kill('SIGTERM');
      }),
  };
}

/** Push an OCI layout into the registry with skopeo (`all` copies every platform of an index). */
export function skopeoPush(layout: string, tag: string, destination: string, options: { all?: boolean; creds?: string } = {}): void {
  execFileSync(
    'skopeo',
    ['copy', '--quiet', ...(options.all ? ['--all'] : []), '--dest-tls-verify=false', ...(options.creds ? ['--dest-creds', options.creds] : []), `oci:${layout}:${tag}`, `docker://${destination}`],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
}
