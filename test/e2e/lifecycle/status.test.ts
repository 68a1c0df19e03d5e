/**
 * `envy status` reports what the issue asks of it for every environment of the user: project path,
 * state, uptime and disk use (the writable layer's share and the whole environment's), in the table
 * and in --json, and a stopped environment keeps its disk figure and has no uptime.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { envy, envyRoot, runAsUser, userTempDir, type RunResult } from '../harness.js';

let project: { path: string; remove: () => void };
let home: { path: string; remove: () => void };

const run = (args: string[]): Promise<RunResult> => envy(args, { cwd: project.path, env: { ENVY_HOME: home.path, CI: 'true' } });

function ok(result: RunResult): RunResult {
  if (result.code !== 0) throw new Error(`exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`);
  return result;
}

interface Row {
  name: string;
  projectDir: string;
  state: string;
  startedAt?: string;
  diskBytes: number;
  writableLayerBytes: number;
}

const row = async (): Promise<Row | undefined> => (JSON.parse(ok(await run(['status', '--json'])).stdout) as { environments: Row[] }).environments.find((e) => e.name === 'stat');

const MIB = 1024 * 1024;

describe('envy status', () => {
  beforeAll(() => {
    project = userTempDir('envy-status-');
    home = userTempDir('envy-status-home-');
    writeFileSync(join(project.path, 'env.yaml'), 'name: stat\nbase: {host: true}\n');
  });
  afterAll(async () => {
    await run(['down', '--rm']);
    await runAsUser(join(envyRoot(), 'dist/envy-ns'), ['userns', '--', 'rm', '-rf', home.path]);
    home.remove();
    project.remove();
  });

  test('project, state, uptime and disk use, running and stopped', async () => {
    const before = Date.now();
    ok(await run(['up']));
    // 3 MiB into the writable layer (not the workspace, which is the user's own directory).
    ok(await run(['exec', '--', 'sh', '-c', 'head -c 3145728 /dev/zero > /var/tmp/blob']));

    const running = await row();
    expect(running).toMatchObject({ projectDir: project.path, state: 'running' });
    const started = Date.parse(running!.startedAt ?? '');
    // The clock's second granularity (process start times) may put the start a little before `before`.
    expect(started).toBeGreaterThan(before - 5_000);
    expect(started).toBeLessThanOrEqual(Date.now());
    expect(running!.writableLayerBytes).toBeGreaterThanOrEqual(3 * MIB);
    expect(running!.diskBytes).toBeGreaterThanOrEqual(running!.writableLayerBytes);
    const table = ok(await run(['status'])).stdout;
    expect(table).toMatch(/^NAME\s+STATE\s+UPTIME\s+WRITABLE\s+SYNC\s+PROJECT$/m);
    expect(table).toMatch(new RegExp(`^stat\\s+running\\s+\\d+(s|m)\\s+3\\.\\d MiB\\s+-\\s+${project.path}$`, 'm'));

    ok(await run(['down']));
    const stopped = await row();
    expect(stopped).toMatchObject({ state: 'stopped' });
    expect(stopped!.startedAt).toBeUndefined();
    // down keeps the writable layer, and status still counts it.
    expect(stopped!.writableLayerBytes).toBeGreaterThanOrEqual(3 * MIB);
    expect(ok(await run(['status'])).stdout).toMatch(new RegExp(`^stat\\s+stopped\\s+-\\s+3\\.\\d MiB\\s+-\\s+${project.path}$`, 'm'));

    ok(await run(['down', '--rm']));
    expect(await row()).toBeUndefined();
  });
});
