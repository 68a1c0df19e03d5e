/**
 * oci: imports and OCI export, end to end: a layout written by the test is
 * imported, exported deterministically, read back by skopeo, imported again,
 * and the docker-archive export is loaded into rootless podman (as the
 * unprivileged test user) and run.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exportImage } from '../../../src/image/export.js';
import { importOci } from '../../../src/image/oci-import.js';
import { LayerStore, type ImageRecord } from '../../../src/image/store.js';
import { isRoot, runAsUser, testUser, userTempDir } from '../harness.js';
import { busyboxLayers, writeImage, writeIndex, type FixtureImage } from './fixtures.js';

let work: string;
let layout: string;
let fixture: FixtureImage;
let store: LayerStore;
let image: ImageRecord;
const EPOCH = 1_700_000_000;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'envy-export-'));
  layout = join(work, 'layout');
  fixture = await writeImage(layout, busyboxLayers(), { env: ['PATH=/bin', 'GREETING=hello'], cmd: ['/bin/sh'] });
  writeIndex(layout, [{ image: fixture, tag: 'v1', platform: { os: 'linux', architecture: 'amd64' } }]);
  store = LayerStore.open(join(work, 'store'));
  image = (await importOci(layout, store)).image;
});

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('oci: import', () => {
  it('imports an OCI layout with digest checks', () => {
    expect(image.manifestDigest).toBe(fixture.manifestDigest);
    expect(image.layers.map((l) => l.diffId)).toEqual(fixture.diffIds);
    expect(image.config.env).toEqual(['PATH=/bin', 'GREETING=hello']);
    expect(lstatSync(join(store.layerRoot(fixture.diffIds[2]!), 'etc/doomed')).isCharacterDevice()).toBe(true);
  });

  it('refuses a layout whose blob was altered', async () => {
    const bad = join(work, 'bad-layout');
    execFileSync('cp', ['-a', layout, bad]);
    const configPath = join(bad, 'blobs/sha256', fixture.configDigest.slice(7));
    writeFileSync(configPath, readFileSync(configPath, 'utf8').replace('hello', 'HELLO'));
    await expect(importOci(bad, LayerStore.open(join(work, 'store-bad')))).rejects.toThrow(
      new RegExp(`blob ${fixture.configDigest} has digest sha256:[0-9a-f]{64}: its content does not match`),
    );
  });

  it('imports a docker-archive written by skopeo (docker save format)', async () => {
    // Docker archives cannot carry zstd: the same layers, all gzip.
    const gzipLayout = join(work, 'gzip-layout');
    const gzipFixture = await writeImage(gzipLayout, busyboxLayers().map((layer) => ({ ...layer, compression: 'gzip' as const })), { cmd: ['/bin/sh'] });
    writeIndex(gzipLayout, [{ image: gzipFixture, tag: 'v1' }]);
    const archive = join(work, 'skopeo-archive.tar');
    execFileSync('skopeo', ['copy', '--quiet', `oci:${gzipLayout}:v1`, `docker-archive:${archive}:envy/test:v1`]);
    const fresh = LayerStore.open(join(work, 'store-archive'));
    const result = await importOci(archive, fresh);
    expect(result.image.layers.map((l) => l.diffId)).toEqual(gzipFixture.diffIds);
    expect(result.image.config.cmd).toEqual(['/bin/sh']);
    expect(readFileSync(join(fresh.layerRoot(gzipFixture.diffIds[1]!), 'etc/os-release'), 'utf8')).toContain('envy test');
    await expect(importOci(archive, fresh, { tag: 'envy/other:v2' })).rejects.toThrow(/has no image tagged "envy\/other:v2" \(it has: docker\.io\/envy\/test:v1\)/);
    expect(fresh.verify()).toEqual([]);
  });
});

describe('exportImage', () => {
  it('writes a deterministic OCI layout that skopeo reads and envy imports back', async () => {
    const first = await exportImage(image, store, { oci: join(work, 'out1') }, { tag: 'v1', sourceDateEpoch: EPOCH });
    const second = await exportImage(image, store, { oci: join(work, 'out2') }, { tag: 'v1', sourceDateEpoch: EPOCH });
    expect(second.manifestDigest).toBe(first.manifestDigest);
    expect(second.layers).toEqual(first.layers);
    const inspect = JSON.parse(execFileSync('skopeo', ['inspect', `oci:${join(work, 'out1')}:v1`]).toString()) as { Digest: string; Layers: string[]; Env: string[]; Os: string };
    expect(inspect.Digest).toBe(first.manifestDigest);
    expect(inspect.Layers).toEqual(first.layers.map((l) => l.digest));
    expect(inspect.Env).toEqual(['PATH=/bin', 'GREETING=hello']);
    const config = JSON.parse(execFileSync('skopeo', ['inspect', '--config', `oci:${join(work, 'out1')}:v1`]).toString()) as { created: string; rootfs: { diff_ids: string[] } };
    expect(config.created).toBe('2023-11-14T22:13:20Z');

    // Whiteouts and opaque dirs went back to OCI form: re-importing gives the same trees.
    const back = LayerStore.open(join(work, 'store-back'));
    const reimported = await importOci(join(work, 'out1'), back);
    expect(reimported.image.layers.map((l) => l.diffId)).toEqual(first.layers.map((l) => l.diffId));
    const top = back.layerRoot(reimported.image.layers[2]!.diffId);
    expect(lstatSync(join(top, 'etc/doomed')).isCharacterDevice()).toBe(true);
    expect(back.readLayerMeta(reimported.image.layers[2]!.diffId).opaqueDirs).toEqual(['var/cache']);
    expect(back.readLayerMeta(reimported.image.layers[1]!.diffId).owners).toEqual({ 'home/user': [1000, 1000] });
    // mtimes were clamped to the epoch.
    expect(lstatSync(join(back.layerRoot(reimported.image.layers[0]!.diffId), 'bin/busybox')).mtimeMs).toBeLessThanOrEqual(EPOCH * 1000);
  });

  it('refuses to export into a non-empty directory', async () => {
    const dir = join(work, 'occupied');
    mkdirSync(dir);
    writeFileSync(join(dir, 'keep'), 'mine');
    await expect(exportImage(image, store, { oci: dir })).rejects.toThrow(/exists and is not empty/);
    expect(readFileSync(join(dir, 'keep'), 'utf8')).toBe('mine');
  });

  it('writes a docker-archive that rootless podman loads and runs (whiteouts honoured)', async () => {
    const user = userTempDir('envy-podman-');
    try {
      const archive = join(user.path, 'image.tar');
      await exportImage(image, store, { dockerArchive: archive }, { tag: 'envy-export-test:v1', sourceDateEpoch: EPOCH });
      // Our own importer reads it too.
      const again = await importOci(archive, LayerStore.open(join(work, 'store-docker')));
      expect(again.image.config.env).toEqual(['PATH=/bin', 'GREETING=hello']);

      const home = join(user.path, 'home');
      const runtimeDir = join(user.path, 'run');
      mkdirSync(join(home, '.config/containers'), { recursive: true });
      mkdirSync(runtimeDir, { mode: 0o700 });
      writeFileSync(join(home, '.config/containers/storage.conf'), '[storage]\ndriver = "overlay"\n');
      if (isRoot()) execFileSync('chown', ['-R', `${testUser()}:`, home, runtimeDir, archive]);
      const env = { HOME: home, XDG_RUNTIME_DIR: runtimeDir };
      const probe = await runAsUser('podman', ['info', '--format', '{{.Store.GraphDriverName}}'], { env });
      if (probe.code !== 0) {
        console.warn(`skipping the podman run: rootless podman cannot start here: ${probe.stderr.trim().split('\n').at(-1)}`);
        return;
      }
      const load = await runAsUser('podman', ['load', '-q', '-i', archive], { env });
      expect(load.code, load.stderr).toBe(0);
      const runtime = existsSync('/usr/sbin/runc') || existsSync('/usr/bin/runc') ? ['--runtime', 'runc'] : [];
      const script = 'cat /etc/os-release; echo "greeting=$GREETING"; test ! -e /etc/doomed && echo doomed-gone; ls /var/cache';
      const result = await runAsUser('podman', ['run', '--rm', '--network=none', ...runtime, 'localhost/envy-export-test:v1', '/bin/sh', '-c', script], { env, timeoutMs: 120_000 });
      expect(result.code, result.stderr).toBe(0);
      expect(result.stdout).toContain('NAME="envy test"');
      expect(result.stdout).toContain('greeting=hello');
      expect(result.stdout).toContain('doomed-gone');
      expect(result.stdout.trim().split('\n').at(-1)).toBe('fresh');
      await runAsUser('podman', ['unshare', 'rm', '-rf', join(home, '.local/share/containers')], { env });
    } finally {
      user.remove();
    }
  });
});
