/**
 * workspace.sync: watch through the real CLI, as the unprivileged test user: the environment sees a
 * private copy kept in step by `envy __sync` (ignored trees stay inside), `envy sync --flush` makes a
 * host edit visible, two-way brings edits made inside back out, the sync process comes back after a
 * kill, and it ends with the environment.
 */
import { readFileSync, writeFileSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { alive, envy, envyRoot, runAsUser, type RunResult, userTempDir, waitFor } from '../harness.js';

let project: { path: string; remove: () => void };
let home: { path: string; remove: () => void };

const run = (args: string[], timeoutMs = 120_000): Promise<RunResult> =>
  envy(args, { cwd: project.path, env: { ENVY_HOME: home.path, CI: 'true' }, timeoutMs });

function ok(result: RunResult): RunResult {
  if (result.code !== 0) throw new Error(`exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`);
  return result;
}

async function syncState(): Promise<{ running: boolean; pid?: number; state?: string; pending?: number }> {
  return JSON.parse((await run(['sync', '--json'])).stdout) as { running: boolean; pid?: number };
}

describe('workspace.sync: watch', () => {
  beforeAll(async () => {
    project = userTempDir('envy-wsync-');
    home = userTempDir('envy-wsync-home-');
    // Written as the test user, so the host tree looks like a real checkout.
    const write = (path: string, content: string): Promise<RunResult> =>
      runAsUser('sh', ['-c', `mkdir -p "$(dirname "$1")" && printf '%s' "$2" > "$1"`, 'sh', join(project.path, path), content]);
    await write('env.yaml', ['name: wsync', 'base: {host: true}', 'workspace: {path: /src, sync: watch, direction: two-way, ignore: [build/]}', ''].join('\n'));
    await write('src/a.txt', 'one');
    await write('build/out.bin', 'host build output');
    await write('.gitignore', '*.log\n');
    await write('debug.log', 'noise');
  });
  afterAll(async () => {
    await run(['down', '--rm']);
    await runAsUser(join(envyRoot(), 'dist/envy-ns'), ['userns', '--', 'rm', '-rf', home.path]);
    home.remove();
    project.remove();
  });

  test('up syncs a private copy before the environment starts; ignored paths stay out', async () => {
    const up = ok(await run(['up']));
    expect(up.stdout).not.toContain('not wired');
    expect(ok(await run(['exec', '--', 'cat', '/src/src/a.txt'])).stdout).toBe('one');
    const listing = ok(await run(['exec', '--', 'ls', '-a', '/src'])).stdout.split('\n');
    expect(listing).toContain('env.yaml');
    expect(listing).not.toContain('build');
    expect(listing).not.toContain('debug.log');
    // A heavy tree made inside (ignored) stays inside: the host checkout stays clean.
    ok(await run(['exec', '--', 'sh', '-c', 'mkdir -p /src/build && echo inside > /src/build/made-inside']));
    ok(await run(['sync', '--flush']));
    expect(readFileSync(join(project.path, 'build/out.bin'), 'utf8')).toBe('host build output');
    expect(existsSync(join(project.path, 'build/made-inside'))).toBe(false);
    const state = await syncState();
    expect(state.running).toBe(true);
    expect(state.state).toBe('in-sync');
    const status = ok(await run(['status']));
    expect(status.stdout).toMatch(/wsync\s+running\s+.*in sync/);
  });

  test('a host edit is visible inside after sync --flush; an edit inside comes back out (two-way)', async () => {
    await runAsUser('sh', ['-c', `printf two > ${join(project.path, 'src/a.txt')}; mkdir -p ${join(project.path, 'src/new')}; printf fresh > ${join(project.path, 'src/new/b.txt')}`]);
    ok(await run(['sync', '--flush']));
    expect(ok(await run(['exec', '--', 'cat', '/src/src/a.txt', '/src/src/new/b.txt'])).stdout).toBe('twofresh');
    ok(await run(['exec', '--', 'sh', '-c', 'echo from-env > /src/src/made-in-env.txt && rm /src/src/new/b.txt']));
    ok(await run(['sync', '--flush']));
    expect(readFileSync(join(project.path, 'src/made-in-env.txt'), 'utf8')).toBe('from-env\n');
    expect(existsSync(join(project.path, 'src/new/b.txt'))).toBe(false);
    // No flush: the watcher alone carries a save across, within moments.
    await runAsUser('sh', ['-c', `printf watched > ${join(project.path, 'src/watched.txt')}`]);
    await waitFor('a saved file to appear inside', async () => (await run(['exec', '--', 'cat', '/src/src/watched.txt'])).stdout === 'watched', 5_000);
  });

  test('a killed sync process is restarted by up; it ends with the environment', async () => {
    const before = await syncState();
    expect(before.pid).toBeGreaterThan(0);
    process.kill(before.pid!, 'SIGKILL');
    await waitFor('the sync process to die', () => !alive(before.pid!));
    expect((await syncState()).running).toBe(false);
    expect(ok(await run(['up'])).stdout).toMatch(/up to date and running/);
    const after = await syncState();
    expect(after.running).toBe(true);
    expect(after.pid).not.toBe(before.pid);
    // Edits made while it was down are picked up by its initial scan.
    writeFileSync(join(project.path, 'src/late.txt'), 'late');
    ok(await run(['sync', '--flush']));
    expect(ok(await run(['exec', '--', 'cat', '/src/src/late.txt'])).stdout).toBe('late');

    ok(await run(['down']));
    await waitFor('the sync process to stop with the environment', () => !alive(after.pid!));
    const stopped = await run(['sync']);
    expect(stopped.code).toBe(1);
    expect(stopped.stdout).toContain('stopped');
    const flush = await run(['sync', '--flush']);
    expect(flush.code).toBe(1);
    expect(flush.stderr).toMatch(/^envy: the workspace sync of wsync-[0-9a-f]{8} is not running/m);
  });

  test('the sync process notices an environment that died under it', async () => {
    ok(await run(['up']));
    const state = await syncState();
    const status = JSON.parse(ok(await run(['status', '--json'])).stdout) as { environments: { name: string; pid?: number }[] };
    const init = status.environments.find((e) => e.name === 'wsync')!.pid!;
    process.kill(init, 'SIGKILL');
    await waitFor('the sync process to exit after the environment died', () => !alive(state.pid!));
  });

  test('envy sync on a bind-mounted workspace says there is nothing to sync', async () => {
    const other = userTempDir('envy-wsync-bind-');
    try {
      mkdirSync(other.path, { recursive: true });
      writeFileSync(join(other.path, 'env.yaml'), 'name: plain\nbase: {host: true}\n');
      const result = await envy(['sync', '--flush'], { cwd: other.path, env: { ENVY_HOME: home.path } });
      expect(result.code).toBe(2);
      expect(result.stderr).toMatch(/^envy: plain: its workspace is bind-mounted \(workspace.sync: bind\), so there is nothing to sync$/m);
    } finally {
      other.remove();
    }
  });
});
