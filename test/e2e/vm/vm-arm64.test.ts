/**
 * An arm64 environment built and run on an x86_64 host, rootlessly, through the real CLI as the
 * unprivileged test user: `envy up` of an env.yaml with `backend: {type: vm, arch: aarch64}`
 * bootstraps Debian for arm64 (mmdebstrap in root mode inside envy's user namespace), installs an
 * apt package and runs a setup command, all under qemu-user registered in the build's own user
 * namespace (binfmt_misc per user namespace, Linux >= 6.7; runtime/emulation.ts), fetches the arm64
 * kernel in the kernel step, then boots the image in qemu-system-aarch64 under TCG.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { arch } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { emulationFor } from '../../../src/runtime/emulation.js';
import { envy, envyRoot, runAsUser, userTempDir, type RunResult } from '../harness.js';

let project: { path: string; remove: () => void };
let home: { path: string; remove: () => void };
let upMs = 0;

const run = (args: string[], timeoutMs = 180_000): Promise<RunResult> =>
  envy(args, { cwd: project.path, env: { ENVY_HOME: home.path, CI: 'true' }, timeoutMs });

function ok(result: RunResult): RunResult {
  if (result.code !== 0) throw new Error(`exit ${result.code}\nstdout: ${result.stdout.slice(-3000)}\nstderr: ${result.stderr.slice(-3000)}`);
  return result;
}

/** Why this host cannot run arm64 build steps (the error envy itself would give), if it cannot. */
function cannotEmulate(): string | undefined {
  if (arch() !== 'x64') return 'the host is not x86_64';
  try {
    emulationFor('aarch64');
    return undefined;
  } catch (error) {
    return (error as Error).message;
  }
}
const skip = cannotEmulate() ?? (existsSync('/usr/bin/qemu-system-aarch64') ? undefined : 'qemu-system-aarch64 is not installed');
if (skip) console.warn(`skipping the arm64 build test: ${skip}`);

describe.skipIf(skip !== undefined)('an arm64 env built on x86_64 (qemu-user) and booted under TCG', () => {
  beforeAll(async () => {
    project = userTempDir('envy-arm64-');
    home = userTempDir('envy-arm64-home-');
    writeFileSync(
      join(project.path, 'env.yaml'),
      [
        'name: arm',
        'base:',
        '  debian: bookworm',
        'backend:',
        '  type: vm',
        '  arch: aarch64',
        '  memory: 1g',
        'packages:',
        '  apt: [hello]',
        'setup:',
        '  - uname -m > /etc/envy-built-on',
        '',
      ].join('\n'),
    );
    const started = Date.now();
    const up = await run(['up', '--progress', 'plain'], 1_800_000);
    upMs = Date.now() - started;
    console.log(`envy up of the arm64 env: ${(upMs / 1000).toFixed(0)} s (load average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')})`);
    ok(up);
  }, 1_860_000);

  afterAll(async () => {
    await run(['down', '--rm']).catch(() => undefined);
    await runAsUser(join(envyRoot(), 'dist/envy-ns'), ['userns', '--', 'rm', '-rf', home.path]).catch(() => undefined);
    home?.remove();
    project?.remove();
  });

  test('the build ran arm64 programs (uname -m at build time), the VM runs the arm64 kernel from the image', async () => {
    expect(ok(await run(['exec', '--', 'cat', '/etc/envy-built-on'])).stdout.trim()).toBe('aarch64');
    expect(ok(await run(['exec', '--', 'uname', '-m'])).stdout.trim()).toBe('aarch64');
    expect(ok(await run(['exec', '--', 'hello'])).stdout.trim()).toBe('Hello, world!');
    expect(ok(await run(['exec', '--', 'dpkg', '--print-architecture'])).stdout.trim()).toBe('arm64');
    const lock = readFileSync(join(project.path, 'env.lock'), 'utf8');
    expect(lock).toMatch(/arch: "aarch64"/);
    const kernel = /resolved: "linux-image-([^"]+)"/.exec(lock)?.[1];
    expect(kernel).toMatch(/-arm64$/);
    expect(ok(await run(['exec', '--', 'uname', '-r'])).stdout.trim()).toBe(kernel);
    const rows = JSON.parse(ok(await run(['status', '--json'])).stdout) as { environments: { name: string; vm?: { arch: string; accel: string } }[] };
    expect(rows.environments.find((r) => r.name === 'arm')?.vm).toMatchObject({ arch: 'aarch64', accel: 'tcg' });
  }, 300_000);

  test('envy export labels the image arm64', async () => {
    // A docker-archive (uncompressed layers): the OCI layout's gzip of ~400 MB took two minutes here.
    const out = join(project.path, 'arm.tar');
    ok(await run(['export', '--docker-archive', out, '--progress', 'quiet'], 300_000));
    const member = (name: string): string => execFileSync('tar', ['-xOf', out, name], { maxBuffer: 1 << 26 }).toString();
    const [manifest] = JSON.parse(member('manifest.json')) as { Config: string }[];
    expect(JSON.parse(member(manifest!.Config))).toMatchObject({ architecture: 'arm64', os: 'linux' });
    if (existsSync('/usr/bin/skopeo')) {
      const inspected = JSON.parse(execFileSync('skopeo', ['inspect', '--config', `docker-archive:${out}`]).toString()) as { architecture: string };
      expect(inspected.architecture).toBe('arm64');
    }
  }, 320_000);
});
