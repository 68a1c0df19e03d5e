/**
 * The registry client against a real registry: Debian's docker-registry on
 * 127.0.0.1, filled with skopeo from OCI layouts written by the test. Bearer
 * auth and interrupted downloads are exercised through a small proxy in front
 * of it (docker-registry's own token auth needs a JWT-signing token server;
 * the proxy speaks the same challenge/token protocol to the client).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EnvyError } from '../../../src/errors.js';
import { hostPlatform, pullImage, type PullProgress } from '../../../src/image/registry.js';
import { LayerStore } from '../../../src/image/store.js';
import { busyboxLayers, skopeoPush, startRegistry, writeImage, writeIndex, writeMultiArchIndex, type FixtureImage, type Registry } from './fixtures.js';

let work: string;
let registry: Registry;
let busybox: FixtureImage;
let amd64: FixtureImage;
let arm64: FixtureImage;
const servers: Server[] = [];
const stoppers: (() => Promise<void>)[] = [];

function freshStore(): LayerStore {
  return LayerStore.open(mkdtempSync(join(work, 'store-')));
}

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'envy-registry-'));
  const layout = join(work, 'layout');
  busybox = await writeImage(layout, busyboxLayers(), { env: ['PATH=/bin', 'GREETING=hello'], cmd: ['/bin/sh', '-c', 'echo hi'] });
  writeIndex(layout, [{ image: busybox, tag: 'v1' }]);
  const multi = join(work, 'multi');
  amd64 = await writeImage(multi, [{ compression: 'gzip', entries: [{ name: 'arch', content: 'amd64' }] }], { architecture: 'amd64' });
  arm64 = await writeImage(multi, [{ compression: 'gzip', entries: [{ name: 'arch', content: 'arm64' }] }], { architecture: 'arm64', variant: 'v8' });
  writeMultiArchIndex(multi, 'multi', [
    { image: arm64, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
    { image: amd64, platform: { os: 'linux', architecture: 'amd64' } },
  ]);
  registry = await startRegistry(join(work, 'registry'));
  stoppers.push(registry.stop);
  skopeoPush(layout, 'v1', `${registry.host}/tools/busybox:v1`);
  skopeoPush(multi, 'multi', `${registry.host}/multi:latest`, { all: true });
});

afterAll(async () => {
  for (const server of servers) server.close();
  await Promise.all(stoppers.map((stop) => stop()));
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('pullImage from a real registry', () => {
  it('pulls by tag: verified layers unpacked in order, whiteouts and opaque dirs as overlay expects, config kept', async () => {
    const store = freshStore();
    const events: PullProgress[] = [];
    const result = await pullImage(`${registry.host}/tools/busybox:v1`, store, { onProgress: (p) => events.push(p) });
    expect(result.manifestDigest).toBe(busybox.manifestDigest);
    expect(result.image.layers.map((l) => l.diffId)).toEqual(busybox.diffIds);
    expect(result.image.config).toMatchObject({ env: ['PATH=/bin', 'GREETING=hello'], cmd: ['/bin/sh', '-c', 'echo hi'], workdir: '/' });
    const [base, etc, top] = busybox.diffIds.map((id) => store.layerRoot(id));
    expect(statSync(join(base!, 'bin/busybox')).size).toBe(statSync('/usr/bin/busybox').size);
    expect(readFileSync(join(etc!, 'etc/os-release'), 'utf8')).toContain('envy test');
    expect(lstatSync(join(top!, 'etc/doomed')).isCharacterDevice()).toBe(true);
    expect(execFileSync('getfattr', ['--absolute-names', '--only-values', '-n', 'user.overlay.opaque', join(top!, 'var/cache')]).toString()).toBe('y');
    expect(store.readLayerMeta(busybox.diffIds[1]!).compression).toBe('zstd');
    expect(store.readLayerMeta(busybox.diffIds[1]!).owners).toEqual({ 'home/user': [1000, 1000] });
    // Layer blobs are not kept once unpacked (docs/images.md), nor is their download; the config is.
    for (const digest of busybox.layerDigests) expect(store.hasBlob(digest)).toBe(false);
    expect(store.hasBlob(result.image.configDigest!)).toBe(true);
    expect(readdirSync(join(store.root, 'blobs/sha256')).filter((n) => n.startsWith('.'))).toEqual([]);
    // Progress: every blob reaches done, byte counts reach the blob size.
    for (const digest of busybox.layerDigests) {
      const own = events.filter((e) => e.blob === digest);
      expect(own.at(-1)?.phase).toBe('done');
      expect(Math.max(...own.filter((e) => e.phase === 'download').map((e) => e.done))).toBe(own[0]!.total);
    }
    expect(store.verify()).toEqual([]);

    // A second pull is all cache.
    const again: PullProgress[] = [];
    const second = await pullImage(`${registry.host}/tools/busybox:v1`, store, { onProgress: (p) => again.push(p) });
    expect(second.image.key).toBe(result.image.key);
    expect(again.every((e) => e.phase === 'cached')).toBe(true);
  });

  it('pulls by digest, and refuses a digest the registry does not have', async () => {
    const store = freshStore();
    const result = await pullImage(`${registry.host}/tools/busybox@${busybox.manifestDigest}`, store);
    expect(result.image.key).toBe(`sha256-${busybox.manifestDigest.slice(7)}`);
    await expect(pullImage(`${registry.host}/tools/busybox@sha256:${'1'.repeat(64)}`, store)).rejects.toThrow(/was not found on 127\.0\.0\.1/);
  });

  it('picks the host platform from an index, or the one asked for', async () => {
    const store = freshStore();
    const host = hostPlatform();
    const result = await pullImage(`${registry.host}/multi`, store);
    const expected = host.architecture === 'arm64' ? arm64 : amd64;
    expect(result.manifestDigest).toBe(expected.manifestDigest);
    expect(result.resolvedDigest).not.toBe(result.manifestDigest);
    expect(readFileSync(join(store.layerRoot(result.image.layers[0]!.diffId), 'arch'), 'utf8')).toBe(host.architecture);
    const arm = await pullImage(`${registry.host}/multi`, store, { platform: { os: 'linux', architecture: 'arm64' } });
    expect(arm.manifestDigest).toBe(arm64.manifestDigest);
    await expect(pullImage(`${registry.host}/multi`, store, { platform: { os: 'linux', architecture: 's390x' } })).rejects.toThrow(
      /has no image for linux\/s390x \(it has: linux\/arm64\/v8, linux\/amd64\)/,
    );
  });

  it('detects a corrupted blob, names it and deletes the download', async () => {
    const dir = mkdtempSync(join(work, 'corrupt-'));
    const own = await startRegistry(dir);
    stoppers.push(own.stop);
    skopeoPush(join(work, 'layout'), 'v1', `${own.host}/tools/busybox:v1`);
    const victim = busybox.layerDigests[1]!.slice(7);
    const data = join(own.storage, 'docker/registry/v2/blobs/sha256', victim.slice(0, 2), victim, 'data');
    const bytes = readFileSync(data);
    bytes.writeUInt8(bytes.readUInt8(bytes.length - 10) ^ 0xff, bytes.length - 10);
    writeFileSync(data, bytes);
    const store = freshStore();
    const error = await pullImage(`${own.host}/tools/busybox:v1`, store).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(EnvyError);
    expect((error as EnvyError).message).toMatch(new RegExp(`blob sha256:${victim} from .* has digest sha256:[0-9a-f]{64}: its content does not match, deleted`));
    expect(existsSync(store.blobPath(`sha256:${victim}`))).toBe(false);
    expect(existsSync(store.partialBlobPath(`sha256:${victim}`))).toBe(false);
    expect(store.hasImage(`sha256-${busybox.manifestDigest.slice(7)}`)).toBe(false);
    expect(store.verify()).toEqual([]);
  });

  it('uses basic auth with credentials from $DOCKER_CONFIG/config.json, and says so when they are missing', async () => {
    const dir = mkdtempSync(join(work, 'basic-'));
    const htpasswd = join(dir, 'htpasswd');
    execFileSync('htpasswd', ['-B', '-b', '-c', htpasswd, 'envy', 's3cret'], { stdio: 'ignore' });
    const own = await startRegistry(dir, { htpasswd });
    stoppers.push(own.stop);
    skopeoPush(join(work, 'layout'), 'v1', `${own.host}/tools/busybox:v1`, { creds: 'envy:s3cret' });
    const dockerConfig = join(dir, 'docker');
    execFileSync('mkdir', ['-p', dockerConfig]);
    const env = { HOME: dir, DOCKER_CONFIG: dockerConfig };
    await expect(pullImage(`${own.host}/tools/busybox:v1`, freshStore(), { env })).rejects.toThrow(/denied tools\/busybox: it requires a login and no credentials were found/);
    writeFileSync(join(dockerConfig, 'config.json'), JSON.stringify({ auths: { [own.host]: { auth: Buffer.from('envy:wrong').toString('base64') } } }));
    await expect(pullImage(`${own.host}/tools/busybox:v1`, freshStore(), { env })).rejects.toThrow(/refused the basic credentials from .*config\.json/);
    writeFileSync(join(dockerConfig, 'config.json'), JSON.stringify({ auths: { [`http://${own.host}`]: { auth: Buffer.from('envy:s3cret').toString('base64') } } }));
    const result = await pullImage(`${own.host}/tools/busybox:v1`, freshStore(), { env });
    expect(result.manifestDigest).toBe(busybox.manifestDigest);
  });
});

interface ProxyLog {
  requests: { url: string; authorization?: string; range?: string }[];
}

/** A proxy to the registry that can demand bearer tokens and cut a blob download halfway. */
async function startProxy(upstream: string, options: { bearer?: { user: string; password: string }; cutBlob?: string }): Promise<{ host: string; log: ProxyLog }> {
  const log: ProxyLog = { requests: [] };
  let cut = false;
  const token = 'token-' + Math.random().toString(36).slice(2);
  let host = '';
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    void (async () => {
      const url = req.url ?? '/';
      log.requests.push({ url, authorization: req.headers.authorization, range: req.headers.range });
      if (options.bearer && url.startsWith('/token')) {
        const expected = 'Basic ' + Buffer.from(`${options.bearer.user}:${options.bearer.password}`).toString('base64');
        const query = new URL(url, 'http://x').searchParams;
        if (req.headers.authorization !== expected || query.get('service') !== 'envy-test' || !query.get('scope')?.startsWith('repository:tools/busybox:pull')) {
          res.writeHead(401).end();
          return;
        }
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token }));
        return;
      }
      if (options.bearer && req.headers.authorization !== `Bearer ${token}`) {
        res
          .writeHead(401, { 'www-authenticate': `Bearer realm="http://${host}/token",service="envy-test",scope="repository:tools/busybox:pull"` })
          .end();
        return;
      }
      const headers: Record<string, string> = {};
      for (const name of ['accept', 'range']) if (req.headers[name]) headers[name] = String(req.headers[name]);
      const response = await fetch(`http://${upstream}${url}`, { headers, redirect: 'follow' });
      const out: Record<string, string> = {};
      response.headers.forEach((value, name) => {
        if (['content-type', 'content-length', 'content-range', 'docker-content-digest', 'accept-ranges'].includes(name)) out[name] = value;
      });
      res.writeHead(response.status, out);
      if (!response.body) return void res.end();
      const body = Readable.fromWeb(response.body as unknown as WebReadableStream<Uint8Array>);
      if (options.cutBlob && url.endsWith(`/blobs/${options.cutBlob}`) && !cut) {
        cut = true;
        let sent = 0;
        const half = Number(out['content-length']) / 2;
        for await (const chunk of body) {
          res.write(chunk);
          sent += (chunk as Buffer).length;
          if (sent >= half) break;
        }
        await new Promise((r) => setTimeout(r, 50));
        res.socket?.destroy();
        return;
      }
      body.pipe(res);
    })().catch(() => res.socket?.destroy());
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  host = `127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
  return { host, log };
}

describe('pullImage through a proxy', () => {
  it('answers a bearer challenge: token from the realm with stored credentials, then the registry with the token', async () => {
    const proxy = await startProxy(registry.host, { bearer: { user: 'robot', password: 'pw' } });
    const dir = mkdtempSync(join(work, 'bearer-'));
    writeFileSync(join(dir, 'auth.json'), JSON.stringify({ auths: { [proxy.host]: { auth: Buffer.from('robot:pw').toString('base64') } } }));
    const result = await pullImage(`${proxy.host}/tools/busybox:v1`, freshStore(), { env: { HOME: dir, REGISTRY_AUTH_FILE: join(dir, 'auth.json') } });
    expect(result.manifestDigest).toBe(busybox.manifestDigest);
    const tokenRequests = proxy.log.requests.filter((r) => r.url.startsWith('/token'));
    expect(tokenRequests.length).toBeGreaterThanOrEqual(1);
    expect(proxy.log.requests.filter((r) => r.url.includes('/blobs/')).every((r) => r.authorization?.startsWith('Bearer '))).toBe(true);
    // Anonymous: the token service refuses, and the error says so.
    await expect(pullImage(`${proxy.host}/tools/busybox:v1`, freshStore(), { env: { HOME: join(dir, 'nowhere') } })).rejects.toThrow(
      /its token service answered 401 to an anonymous request/,
    );
  });

  it('resumes an interrupted blob download with a Range request', async () => {
    const big = busybox.layerDigests[2]!;
    const proxy = await startProxy(registry.host, { cutBlob: big });
    const store = freshStore();
    const result = await pullImage(`${proxy.host}/tools/busybox:v1`, store);
    expect(result.manifestDigest).toBe(busybox.manifestDigest);
    const blobRequests = proxy.log.requests.filter((r) => r.url.endsWith(`/blobs/${big}`));
    expect(blobRequests.length).toBe(2);
    expect(blobRequests[0]!.range).toBeUndefined();
    expect(blobRequests[1]!.range).toMatch(/^bytes=\d+-$/);
    expect(Number(/bytes=(\d+)-/.exec(blobRequests[1]!.range!)![1])).toBeGreaterThan(0);
    expect(store.hasLayer(busybox.diffIds[2]!)).toBe(true);
    expect(readdirSync(join(store.root, 'blobs/sha256')).filter((n) => n.startsWith('.'))).toEqual([]);
  });
});
