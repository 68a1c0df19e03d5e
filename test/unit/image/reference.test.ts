import { describe, expect, it, onTestFinished } from 'vitest';
import { findCredentials, parseChallenge } from '../../../src/image/auth.js';
import { layerCompression, manifestKind, MANIFEST_ACCEPT, sniffCompression } from '../../../src/image/media-types.js';
import { hostPlatform, selectPlatform } from '../../../src/image/registry.js';
import { apiHost, formatReference, isLoopbackRegistry, parseReference } from '../../../src/image/reference.js';
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const D = `sha256:${'a'.repeat(64)}`;

describe('parseReference', () => {
  const good: [string, string, Record<string, string | undefined>][] = [
    ['debian', 'docker.io/library/debian:latest', { registry: 'docker.io', repository: 'library/debian', tag: 'latest' }],
    ['debian:bookworm', 'docker.io/library/debian:bookworm', { tag: 'bookworm' }],
    ['bitnami/redis:7.2', 'docker.io/bitnami/redis:7.2', { repository: 'bitnami/redis' }],
    ['docker.io/debian', 'docker.io/library/debian:latest', {}],
    ['index.docker.io/library/debian:12', 'docker.io/library/debian:12', {}],
    ['ghcr.io/owner/tool:v1.2.3', 'ghcr.io/owner/tool:v1.2.3', { registry: 'ghcr.io', repository: 'owner/tool' }],
    ['127.0.0.1:5000/tools/busybox:v1', '127.0.0.1:5000/tools/busybox:v1', { registry: '127.0.0.1:5000' }],
    ['localhost/app', 'localhost/app:latest', { registry: 'localhost', repository: 'app' }],
    ['localhost:5000/a/b/c', 'localhost:5000/a/b/c:latest', { repository: 'a/b/c' }],
    [`debian@${D}`, `docker.io/library/debian@${D}`, { tag: undefined, digest: D }],
    [`quay.io/x/y:1.0@${D}`, `quay.io/x/y:1.0@${D}`, { tag: '1.0', digest: D }],
    ['my_org/some-image.name:tag_1', 'docker.io/my_org/some-image.name:tag_1', {}],
  ];
  for (const [input, canonical, fields] of good) {
    it(`reads ${input}`, () => {
      const ref = parseReference(input);
      expect(formatReference(ref)).toBe(canonical);
      for (const [key, value] of Object.entries(fields)) expect(ref[key as keyof typeof ref]).toBe(value);
    });
  }

  const bad: [string, RegExp][] = [
    ['', /it is empty/],
    ['Debian', /"Debian" has uppercase letters/],
    ['debian:', /"" is not a valid tag/],
    ['debian:-x', /"-x" is not a valid tag/],
    ['debian@sha256:abc', /"sha256:abc" is not a sha256 digest/],
    ['debian@md5:0123', /is not a sha256 digest/],
    ['registry.io//x', /empty path component/],
    ['a/../b', /"\.\." is not a valid name component/],
    ['bad_host!.io/x', /"bad_host!\.io" is not a registry host/],
  ];
  for (const [input, message] of bad) {
    it(`rejects "${input}" with a reason and a hint`, () => {
      let error: unknown;
      try {
        parseReference(input);
      } catch (e) {
        error = e;
      }
      expect((error as Error).message).toMatch(message);
      expect((error as { hint?: string }).hint).toMatch(/registry\[:port\]\/\]name/);
    });
  }

  it('maps Docker Hub to its API host and speaks HTTP only to loopback', () => {
    expect(apiHost('docker.io')).toBe('registry-1.docker.io');
    expect(apiHost('ghcr.io')).toBe('ghcr.io');
    expect(isLoopbackRegistry('127.0.0.1:5000')).toBe(true);
    expect(isLoopbackRegistry('localhost')).toBe(true);
    expect(isLoopbackRegistry('[::1]:5000')).toBe(true);
    expect(isLoopbackRegistry('127.example.com')).toBe(false);
    expect(isLoopbackRegistry('10.0.0.1:5000')).toBe(false);
  });
});

describe('media types', () => {
  it('asks for every manifest type it reads', () => {
    for (const type of ['application/vnd.oci.image.index.v1+json', 'application/vnd.oci.image.manifest.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json', 'application/vnd.docker.distribution.manifest.v2+json']) {
      expect(MANIFEST_ACCEPT).toContain(type);
    }
  });

  it('tells indexes from manifests, by header, by mediaType field, or by shape', () => {
    expect(manifestKind('application/vnd.docker.distribution.manifest.list.v2+json', {}, 'm')).toBe('index');
    expect(manifestKind('application/vnd.oci.image.manifest.v1+json; charset=utf-8', {}, 'm')).toBe('manifest');
    expect(manifestKind('', { mediaType: 'application/vnd.oci.image.index.v1+json' }, 'm')).toBe('index');
    expect(manifestKind(undefined, { manifests: [] }, 'm')).toBe('index');
    expect(manifestKind(undefined, { layers: [] }, 'm')).toBe('manifest');
    expect(() => manifestKind('application/vnd.docker.distribution.manifest.v1+prettyjws', {}, 'manifest of x')).toThrow(/manifest of x is a Docker schema 1 manifest/);
    expect(() => manifestKind('text/html', {}, 'manifest of x')).toThrow(/unsupported media type text\/html/);
  });

  it('maps layer types to compression and sniffs blobs by magic', () => {
    expect(layerCompression('application/vnd.docker.image.rootfs.diff.tar.gzip', 'l')).toBe('gzip');
    expect(layerCompression('application/vnd.oci.image.layer.v1.tar+zstd', 'l')).toBe('zstd');
    expect(layerCompression('application/vnd.oci.image.layer.v1.tar', 'l')).toBe('none');
    expect(() => layerCompression('application/vnd.oci.image.layer.v1.tar+bzip2', 'layer x')).toThrow(/layer x has unsupported layer media type/);
    expect(sniffCompression(Buffer.from([0x1f, 0x8b, 8, 0]))).toBe('gzip');
    expect(sniffCompression(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))).toBe('zstd');
    expect(sniffCompression(Buffer.from('bin/'))).toBe('none');
  });
});

describe('platform selection', () => {
  let n = 0;
  const entry = (architecture: string, variant?: string) => ({
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    digest: `sha256:${String((n += 1)).repeat(64)}`,
    size: 1,
    platform: { os: 'linux', architecture, ...(variant ? { variant } : {}) },
  });
  const index = { schemaVersion: 2 as const, manifests: [entry('arm', 'v7'), entry('arm64'), entry('amd64')] };
  it('picks the host platform; arm64 without a variant counts as v8', () => {
    expect(selectPlatform(index, { os: 'linux', architecture: 'amd64' }, 'x').platform?.architecture).toBe('amd64');
    expect(selectPlatform(index, { os: 'linux', architecture: 'arm64', variant: 'v8' }, 'x').platform?.architecture).toBe('arm64');
    expect(() => selectPlatform(index, { os: 'linux', architecture: 'arm', variant: 'v6' }, 'img')).toThrow(
      'img has no image for linux/arm/v6 (it has: linux/arm/v7, linux/arm64, linux/amd64)',
    );
  });
  it('knows the host', () => {
    expect(hostPlatform('x64')).toEqual({ os: 'linux', architecture: 'amd64' });
    expect(hostPlatform('arm64')).toEqual({ os: 'linux', architecture: 'arm64', variant: 'v8' });
  });
});

describe('auth', () => {
  it('parses WWW-Authenticate challenges', () => {
    expect(parseChallenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull"')).toEqual({
      scheme: 'bearer',
      params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/debian:pull' },
    });
    expect(parseChallenge('Basic realm="envy test"')).toEqual({ scheme: 'basic', params: { realm: 'envy test' } });
    expect(parseChallenge('Bearer realm=http://x/token, service=svc')).toEqual({ scheme: 'bearer', params: { realm: 'http://x/token', service: 'svc' } });
  });

  it('finds credentials in REGISTRY_AUTH_FILE first, then containers auth.json, then docker config', () => {
    const home = mkdtempSync(join(tmpdir(), 'envy-auth-'));
    onTestFinished(() => rmSync(home, { recursive: true, force: true }));
    const b64 = (s: string): string => Buffer.from(s).toString('base64');
    writeFileSync(join(home, 'docker.json'), JSON.stringify({ auths: { 'https://index.docker.io/v1/': { auth: b64('hub:pw') }, 'reg.example:5000': { auth: b64('dock:pw') } } }));
    writeFileSync(join(home, 'podman.json'), JSON.stringify({ auths: { 'reg.example:5000': { auth: b64('pod:pw:with:colons') } } }));
    const dockerOnly = { HOME: home, DOCKER_CONFIG: home };
    renameSync(join(home, 'docker.json'), join(home, 'config.json'));
    expect(findCredentials('docker.io', dockerOnly)).toMatchObject({ username: 'hub', password: 'pw' });
    expect(findCredentials('reg.example:5000', dockerOnly)).toMatchObject({ username: 'dock' });
    expect(findCredentials('reg.example:5000', { ...dockerOnly, REGISTRY_AUTH_FILE: join(home, 'podman.json') })).toEqual({
      username: 'pod',
      password: 'pw:with:colons',
      source: join(home, 'podman.json'),
    });
    expect(findCredentials('other.io', dockerOnly)).toBeUndefined();
    writeFileSync(join(home, 'config.json'), '{not json');
    expect(() => findCredentials('docker.io', dockerOnly)).toThrow(/config\.json is not valid JSON/);
  });
});
