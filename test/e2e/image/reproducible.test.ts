/**
 * Reproducible builds: the same env.yaml on a base pinned by digest (pulled from a real registry on
 * 127.0.0.1), built twice on clean stores from two checkouts made at different times, gives identical
 * layer digests and an identical exported image. Files steps, run steps that create files, links and
 * directories, and the user step all take part; their mtimes are clamped to the base's epoch.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { envy, envyRoot, runAsUser, userTempDir, type RunResult } from '../harness.js';
import { busyboxLayers, skopeoPush, startRegistry, writeImage, writeIndex, type Registry } from './fixtures.js';

let work: string;
let registry: Registry;
let baseRef: string;
const cleanups: (() => Promise<void> | void)[] = [];

function ok(result: RunResult): RunResult {
  if (result.code !== 0) throw new Error(`exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`);
  return result;
}

interface Build {
  layers: string[];
  manifest: string;
}

async function cleanBuild(delayMs: number, sharedHome?: string, firstStepPrefix = ''): Promise<Build & { home: string; output: string }> {
  await new Promise((resolve) => setTimeout(resolve, delayMs));
  const project = userTempDir('envy-repro-');
  const home = sharedHome ? { path: sharedHome, remove: () => undefined } : userTempDir('envy-repro-home-');
  cleanups.push(async () => {
    if (!sharedHome) await runAsUser(join(envyRoot(), 'dist/envy-ns'), ['userns', '--', 'rm', '-rf', home.path]);
    home.remove();
    project.remove();
  });
  const write = (path: string, content: string): Promise<RunResult> => runAsUser('sh', ['-c', `printf '%s' "$2" > "$1"`, 'sh', join(project.path, path), content]);
  await write(
    'env.yaml',
    [
      'name: repro',
      `base: {image: "${baseRef}"}`,
      'env: {MODE: repro}',
      'files:',
      '  - {src: app.txt, dest: /opt/app/app.txt, mode: "0644"}',
      'setup:',
      `  - run: ${firstStepPrefix}busybox mkdir -p /opt/gen/sub && echo generated > /opt/gen/file && busybox ln -s file /opt/gen/link && busybox touch /opt/gen/sub/empty`,
      '  - run: busybox sleep 1 && echo later > /opt/gen/later && busybox rm /etc/os-release',
      '',
    ].join('\n'),
  );
  await write('app.txt', 'the app\n');
  const env = { ENVY_HOME: home.path, CI: 'true' };
  const built = ok(await envy(['build'], { cwd: project.path, env, timeoutMs: 180_000 }));
  const plan = JSON.parse(ok(await envy(['plan', '--json'], { cwd: project.path, env })).stdout) as { steps: { key: string }[] };
  const out = join(project.path, 'oci');
  ok(await envy(['export', '--oci', out], { cwd: project.path, env, timeoutMs: 120_000 }));
  const index = JSON.parse(readFileSync(join(out, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
  const manifest = JSON.parse(readFileSync(join(out, 'blobs/sha256', index.manifests[0]!.digest.slice(7)), 'utf8')) as { config: { digest: string } };
  const config = JSON.parse(readFileSync(join(out, 'blobs/sha256', manifest.config.digest.slice(7)), 'utf8')) as { rootfs: { diff_ids: string[] } };
  expect(plan.steps.length).toBeGreaterThan(4);
  return { layers: config.rootfs.diff_ids, manifest: index.manifests[0]!.digest, home: home.path, output: built.stderr };
}

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'envy-repro-reg-'));
  registry = await startRegistry(work);
  const layout = join(work, 'layout');
  const image = await writeImage(layout, busyboxLayers(), { env: ['PATH=/bin'], cmd: ['/bin/sh'] });
  writeIndex(layout, [{ image, tag: 'v1' }]);
  skopeoPush(layout, 'v1', `${registry.host}/repro:v1`);
  baseRef = `${registry.host}/repro@${image.manifestDigest}`;
}, 60_000);

afterAll(async () => {
  for (const cleanup of cleanups) await cleanup();
  await registry?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('reproducible builds', () => {
  it('two clean builds of a digest-pinned base give identical layers and image', async () => {
    const first = await cleanBuild(0);
    // Another second on the clock, another checkout: any mtime or path that leaked in would show.
    const second = await cleanBuild(1_100);
    expect(second.layers).toEqual(first.layers);
    expect(second.manifest).toBe(first.manifest);
    // The build layers are there (base layers + files, user, run steps), not just the base.
    expect(first.layers.length).toBeGreaterThanOrEqual(6);

    // Into the first store, a first setup step worded differently (a new key) that makes the same files:
    // it and the steps after it rerun, and the layers they make are ones the store already holds.
    const third = await cleanBuild(0, first.home, 'true && ');
    expect(third.output).toMatch(/built repro: image [0-9a-f]{12} \(3 built, 3 cached\)/);
    expect(third.layers).toEqual(first.layers);
  }, 400_000);
});
