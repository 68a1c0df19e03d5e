/**
 * The everyday loop through the real CLI, as the unprivileged test user:
 * up (build + start + hooks), idempotent up, exec with exit codes and options,
 * workspace ownership, the writable layer across down/up, --rm, rebuilding only
 * what changed, --frozen. A host base keeps it fast; the Debian test below runs
 * the README's main job on env.example.yaml.
 */
import { execFileSync, spawn } from 'node:child_process';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { asUserArgv, debianHome, envy, envyRoot, runAsUser, userTempDir, waitFor, type RunResult } from '../harness.js';

let project: { path: string; remove: () => void };
let home: { path: string; remove: () => void };
let uid: number;

const run = (args: string[], timeoutMs = 120_000): Promise<RunResult> =>
  envy(args, { cwd: project.path, env: { ENVY_HOME: home.path, CI: 'true' }, timeoutMs });

function ok(result: RunResult): RunResult {
  if (result.code !== 0) throw new Error(`exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`);
  return result;
}

async function cleanupHome(): Promise<void> {
  await run(['down', '--rm']);
  await runAsUser(join(envyRoot(), 'dist/envy-ns'), ['userns', '--', 'rm', '-rf', home.path]);
  home.remove();
}

describe('envy up / exec / down on a host base', () => {
  beforeAll(async () => {
    project = userTempDir('envy-life-');
    home = userTempDir('envy-life-home-');
    writeFileSync(
      join(project.path, 'env.yaml'),
      [
        'name: life',
        'base: {host: true}',
        'env: {GREETING: hello}',
        'files:',
        '  - {src: tool.sh, dest: /opt/tool.sh, mode: "0755"}',
        'setup:',
        '  - run: echo built-one > /opt/one',
        '  - run: echo built-two > /opt/two',
        'hooks:',
        '  onCreate: echo created >> /var/tmp/hooks',
        '  postStart: echo started >> /var/tmp/hooks',
        '',
      ].join('\n'),
    );
    writeFileSync(join(project.path, 'tool.sh'), '#!/bin/sh\necho tool ran\n');
    uid = statSync(project.path).uid;
  });
  afterAll(async () => {
    await cleanupHome();
    project.remove();
  });

  test('up builds, starts and runs onCreate once and postStart on every start', async () => {
    const first = ok(await run(['up']));
    expect(first.stdout).toMatch(/^life is running \(image [0-9a-f]{12}, 6 steps built\)/m);
    expect(first.stdout).toContain('enter it: envy shell');
    const again = ok(await run(['up']));
    expect(again.stdout).toMatch(/^life is up to date and running/m);
    expect(ok(await run(['exec', '--', 'cat', '/var/tmp/hooks'])).stdout).toBe('created\nstarted\n');
    const lock = readFileSync(join(project.path, 'env.lock'), 'utf8');
    expect(lock).toContain('lockfileVersion: 1');
  });

  test('exec passes exit codes, env, workdir and --root through; files made in the workspace belong to the user', async () => {
    expect((await run(['exec', '--', 'sh', '-c', 'exit 42'])).code).toBe(42);
    expect((await run(['exec', '--', 'sh', '-c', 'kill -TERM $$'])).code).toBe(143);
    expect(ok(await run(['exec', '--', '/opt/tool.sh'])).stdout).toBe('tool ran\n');
    expect(ok(await run(['exec', '-e', 'EXTRA=1', '--', 'sh', '-c', 'echo $GREETING $EXTRA'])).stdout).toBe('hello 1\n');
    expect(ok(await run(['exec', '-w', '/opt', '--', 'pwd'])).stdout).toBe('/opt\n');
    expect(ok(await run(['exec', '--root', '--', 'id', '-u'])).stdout).toBe('0\n');
    expect(ok(await run(['exec', '--', 'cat', '/opt/one', '/opt/two'])).stdout).toBe('built-one\nbuilt-two\n');
    ok(await run(['exec', '--', 'sh', '-c', 'echo from-inside > made-inside']));
    const made = statSync(join(project.path, 'made-inside'));
    expect(made.uid).toBe(uid);
    expect(readFileSync(join(project.path, 'made-inside'), 'utf8')).toBe('from-inside\n');
  });

  test('exec forwards SIGTERM to the workload and exits with its code, whether it becomes the helper or spawns it', async () => {
    // `exec --` takes bin/envy.js's fast path, where envy's process turns into the helper (execve);
    // --quiet goes through the full CLI, which spawns the helper and forwards signals itself.
    for (const options of [[], ['--quiet']]) {
      const script = 'trap "echo got-term; exit 9" TERM; echo ready; while :; do sleep 0.1; done';
      const argv = [...asUserArgv({ ENVY_HOME: home.path, CI: 'true' }), process.execPath, join(envyRoot(), 'bin/envy.js'), 'exec', ...options, '--', 'sh', '-c', script];
      const child = spawn(argv[0]!, argv.slice(1), { cwd: project.path, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const closed = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
      await waitFor(`the workload of envy exec ${options.join(' ')} to start (stderr: ${stderr})`, () => stdout.includes('ready'), 60_000);
      child.kill('SIGTERM');
      expect(await closed, stderr).toBe(9);
      expect(stdout).toBe('ready\ngot-term\n');
    }
  });

  test('a workload that cannot start is one line naming what failed, and exit 3 (fast path)', async () => {
    const missingDir = await run(['exec', '-w', '/nonexistent', '--', 'true']);
    expect(missingDir.code).toBe(3);
    expect(missingDir.stderr).toMatch(/^envy: cannot run true in environment life-[0-9a-f]{8}: chdir \/nonexistent: No such file or directory\n$/);
    // Not found and not executable keep the helper's 127 and 126, like a shell's.
    const missingCommand = await run(['exec', '--', 'no-such-command']);
    expect(missingCommand.code).toBe(127);
    expect(missingCommand.stderr).toBe('envy-ns: no-such-command: command not found\n');
  });

  test('exec notices env.yaml edited in place (same size, same inode) and applies it first', async () => {
    // exec trusts an unchanged stat of env.yaml instead of hashing it: an edit must never look unchanged.
    const file = join(project.path, 'env.yaml');
    const before = readFileSync(file, 'utf8');
    writeFileSync(file, before.replace('GREETING: hello', 'GREETING: howdy'));
    expect(ok(await run(['exec', '--', 'sh', '-c', 'echo $GREETING'])).stdout).toBe('howdy\n');
    writeFileSync(file, before);
    expect(ok(await run(['exec', '--', 'sh', '-c', 'echo $GREETING'])).stdout).toBe('hello\n');
    // Touched, not changed: the bytes decide, and the environment keeps running as it was.
    const pid = (JSON.parse(ok(await run(['status', '--json'])).stdout) as { environments: { name: string; pid?: number }[] }).environments.find((e) => e.name === 'life')?.pid;
    execFileSync('touch', [file]);
    expect(ok(await run(['exec', '--', 'sh', '-c', 'echo $GREETING'])).stdout).toBe('hello\n');
    expect((JSON.parse(ok(await run(['status', '--json'])).stdout) as { environments: { name: string; pid?: number }[] }).environments.find((e) => e.name === 'life')?.pid).toBe(pid);
  });

  test('the writable layer survives down/up; status follows; down --rm forgets it', async () => {
    ok(await run(['exec', '--', 'sh', '-c', 'echo kept > /var/tmp/state']));
    expect(ok(await run(['down'])).stdout).toContain('stopped (its writable layer is kept');
    const stopped = JSON.parse(ok(await run(['status', '--json'])).stdout) as { environments: { name: string; state: string }[] };
    expect(stopped.environments.find((e) => e.name === 'life')?.state).toBe('stopped');
    ok(await run(['up']));
    expect(ok(await run(['exec', '--', 'cat', '/var/tmp/state'])).stdout).toBe('kept\n');
    expect(ok(await run(['exec', '--', 'cat', '/var/tmp/hooks'])).stdout).toBe('created\nstarted\nstarted\n');
    ok(await run(['down', '--rm']));
    ok(await run(['up']));
    expect((await run(['exec', '--', 'cat', '/var/tmp/state'])).code).not.toBe(0);
  });

  test('a changed setup step rebuilds only itself and what follows; --frozen refuses a drifted env.yaml', async () => {
    const file = join(project.path, 'env.yaml');
    writeFileSync(file, readFileSync(file, 'utf8').replace('built-two', 'built-2'));
    const build = ok(await run(['build']));
    // The second setup step and the user step after it; base, files, env and the first setup step stay cached.
    expect(build.stderr).toMatch(/\(2 built, 4 cached\)/);
    writeFileSync(file, readFileSync(file, 'utf8').replace('GREETING: hello', 'GREETING: bye'));
    const frozen = await run(['up', '--frozen']);
    expect(frozen.code).toBe(7);
    expect(frozen.stderr).toMatch(/^envy: .*env/m);
  });

  test('export refuses a host-based env; gc frees what no environment holds', async () => {
    const exported = await run(['export', '--oci', join(project.path, 'out')]);
    expect(exported.code).toBe(2);
    expect(exported.stderr).toContain("based on the host's /usr");
    ok(await run(['down', '--rm']));
    const gc = JSON.parse(ok(await run(['gc', '--grace', '0', '--json'])).stdout) as { layers: string[]; bytesFreed: number };
    expect(gc.layers.length).toBeGreaterThan(0);
    expect(gc.bytesFreed).toBeGreaterThan(0);
    // Everything went, subuid-owned layer files included (removed inside the user namespace).
    expect(readdirSync(join(home.path, 'store/layers/sha256'))).toEqual([]);
  });

  test('exec without a command is a usage error', async () => {
    const result = await run(['exec']);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('envy exec needs a command');
  });
});

describe('the README main job: envy up on env.example.yaml (Debian bookworm)', () => {
  beforeAll(() => {
    project = userTempDir('envy-example-');
    // The run's shared home: the Debian base (and templates/default.yaml, the same spec) is built once per run.
    home = { path: debianHome(), remove: () => {} };
    writeFileSync(join(project.path, 'env.yaml'), readFileSync(join(envyRoot(), 'env.example.yaml'), 'utf8'));
  });
  afterAll(async () => {
    await run(['down', '--rm']);
    project.remove();
  });

  test('builds from Debian mirror packages, starts, and the toolchain runs inside', async () => {
    const up = ok(await run(['up'], 600_000));
    expect(up.stdout).toMatch(/^example is running/m);
    expect(up.stdout).toContain('git version');
    expect(ok(await run(['exec', '--', 'jq', '--version'])).stdout).toMatch(/^jq-1\./);
    expect(ok(await run(['exec', '--', 'sh', '-c', 'id -un; test -w /workspace && echo writable'])).stdout).toMatch(/writable/);
    const lock = readFileSync(join(project.path, 'env.lock'), 'utf8');
    expect(lock).toMatch(/jq: "1\.[^"]+"/);
    expect(lock).toMatch(/digest: "sha256:[0-9a-f]{64}"/);
    const again = ok(await run(['up']));
    expect(again.stdout).toMatch(/up to date and running/);
    // The same image as an OCI layout that skopeo reads, with env.yaml's env in its config.
    const out = join(project.path, 'oci-out');
    expect(ok(await run(['export', '--oci', out, '--tag', 'localhost/example:test'])).stdout).toMatch(/^exported localhost\/example:test \(\d+ layers/m);
    expect(statSync(out).uid).toBe(statSync(project.path).uid);
    const config = JSON.parse(execFileSync('skopeo', ['inspect', '--config', `oci:${out}`], { encoding: 'utf8' })) as { config: { Env: string[] }; rootfs: { diff_ids: string[] } };
    expect(config.config.Env).toContain('EDITOR=vi');
    expect(config.rootfs.diff_ids.length).toBeGreaterThanOrEqual(4);
  }, 900_000);
});
