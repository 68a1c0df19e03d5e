/**
 * What happens when things go wrong around `envy up`, as the unprivileged test user: kill -9 during a
 * build, Ctrl-C (SIGINT to the process group, as a terminal sends it), two `envy up` at once, a
 * "reboot" (every process of the environment SIGKILLed and its recorded pid now someone else's), and
 * `envy status` on all of that. The store must stay consistent and nothing may be left running.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { asUserArgv, envy, envyRoot, runAsUser, testUser, userTempDir, type RunResult } from '../harness.js';

let project: { path: string; remove: () => void };
let home: { path: string; remove: () => void };
// A token no other process on the machine has in its command line.
const MARK = `7.${process.pid % 1000}31`;

const ENV = (): Record<string, string> => ({ ENVY_HOME: home.path, CI: 'true' });
const run = (args: string[], timeoutMs = 120_000): Promise<RunResult> => envy(args, { cwd: project.path, env: ENV(), timeoutMs });

function ok(result: RunResult): RunResult {
  if (result.code !== 0) throw new Error(`exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`);
  return result;
}

interface Started {
  child: ChildProcess;
  done: Promise<RunResult>;
}

/** `envy ARGS` as the test user in its own process group (like a job in a terminal), output collected. */
function start(args: string[]): Started {
  const argv = [...asUserArgv(ENV()), process.execPath, join(envyRoot(), 'bin/envy.js'), ...args];
  const child = spawn(argv[0]!, argv.slice(1), { cwd: project.path, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<RunResult>((resolve) => child.on('close', (code, signal) => resolve({ code: code ?? -1, signal, stdout, stderr })));
  return { child, done };
}

/** The test user's uid and subordinate range: every process of its environments has one of these uids. */
function userUids(): { uid: number; start: number; count: number } {
  const uid = Number(execFileSync('id', ['-u', testUser()], { encoding: 'utf8' }).trim());
  const line = readFileSync('/etc/subuid', 'utf8').split('\n').find((l) => l.startsWith(`${testUser()}:`));
  const [, start, count] = (line ?? `x:${uid}:1`).split(':');
  return { uid, start: Number(start), count: Number(count) };
}

/** Processes of the test user (or its subordinate ids) whose command line matches. */
function processes(match: RegExp): { pid: number; args: string }[] {
  const { uid, start, count } = userUids();
  return execFileSync('ps', ['-eo', 'pid=,uid=,args='], { encoding: 'utf8' })
    .split('\n')
    .map((l) => /^\s*(\d+)\s+(\d+)\s+(.*)$/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null)
    .filter((m) => {
      const u = Number(m[2]);
      return u === uid || (u >= start && u < start + count);
    })
    .map((m) => ({ pid: Number(m[1]), args: m[3]! }))
    .filter((p) => match.test(p.args));
}

async function waitFor<T>(what: string, probe: () => T | undefined, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** envy-ns helpers and workloads of this test's ENVY_HOME (other environments of the user may run). */
const ours = (): { pid: number; args: string }[] => processes(/.*/).filter((p) => p.args.includes(home.path) || p.args.includes(`sleep ${MARK}`));
// The sleep itself, not the helper whose argv also names it: it runs only once the namespace is set up.
const slowStep = (): { pid: number } | undefined => processes(new RegExp(`^sleep ${MARK.replace('.', '\\.')}$`))[0];
const envDir = (): string => join(home.path, 'environments', readdirSync(join(home.path, 'environments')).find((d) => d.startsWith('robust-'))!);

function writeSpec(extra = ''): void {
  writeFileSync(
    join(project.path, 'env.yaml'),
    ['name: robust', 'base: {host: true}', 'setup:', `  - run: sleep ${MARK} && echo slow${extra} > /opt/slow`, 'hooks:', '  postStart: echo started >> /var/tmp/starts', ''].join('\n'),
  );
}

/** Every file in the store parses; every image's layers exist. */
function checkStore(): void {
  const images = join(home.path, 'store/images');
  if (!existsSync(images)) return;
  for (const file of readdirSync(images, { recursive: true }).map(String).filter((f) => f.endsWith('.json'))) {
    const image = JSON.parse(readFileSync(join(images, file), 'utf8')) as { layers?: { diffId: string }[] };
    for (const layer of image.layers ?? []) expect(existsSync(join(home.path, 'store/layers', layer.diffId.replace(':', '/')))).toBe(true);
  }
}

describe('robustness of envy up', () => {
  beforeAll(() => {
    project = userTempDir('envy-robust-');
    home = userTempDir('envy-robust-home-');
    writeSpec();
  });
  afterAll(async () => {
    await run(['down', '--rm']);
    await runAsUser(join(envyRoot(), 'dist/envy-ns'), ['userns', '--', 'rm', '-rf', home.path]);
    home.remove();
    project.remove();
  });

  test('kill -9 of envy up during a build step, then a good envy up', async () => {
    const first = start(['up']);
    await waitFor('the slow build step', slowStep);
    process.kill(first.child.pid!, 'SIGKILL');
    await first.done;
    // The build step dies with the envy that ran it, at once (its sleep has seconds to go): nothing of it keeps running.
    await waitFor('the orphaned build step to go', () => (ours().length === 0 ? true : undefined), 2_000);
    checkStore();
    const up = ok(await run(['up']));
    expect(up.stdout).toMatch(/^robust is running/m);
    expect(ok(await run(['exec', '--', 'cat', '/opt/slow'])).stdout).toBe('slow\n');
    expect(ok(await run(['build'])).stderr).toMatch(/\(0 built, \d+ cached\)/);
    checkStore();
  });

  test('Ctrl-C during envy up stops cleanly: exit 130, no processes left, the record intact, the lock free', async () => {
    ok(await run(['down']));
    const record = readFileSync(join(envDir(), 'record.json'), 'utf8');
    writeSpec('-2');
    const up = start(['up']);
    await waitFor('the slow build step', slowStep);
    // To envy alone, not its process group (the onCreate test below sends a terminal's group-wide Ctrl-C):
    // envy must hand the interrupt to the running step itself.
    process.kill(up.child.pid!, 'SIGINT');
    const result = await up.done;
    expect(result.code, result.stderr).toBe(130);
    expect(result.stderr).toMatch(/^envy: interrupted/m);
    // The step stopped at once: not after its sleep ran out.
    const elapsed = /FAILED after (\d+(?:\.\d+)?)(ms|s)/.exec(result.stderr);
    expect(elapsed, result.stderr).not.toBeNull();
    expect(Number(elapsed![1]) * (elapsed![2] === 's' ? 1000 : 1), result.stderr).toBeLessThan(5000);
    expect(result.stderr).not.toMatch(/internal error|at .*\.js:\d+/);
    // Nothing of this environment or its build is left (helpers name the store under home.path in their args).
    await waitFor('no envy-ns left', () => (ours().length === 0 ? true : undefined), 10_000);
    // The record still describes the environment as it was (the new image never got that far).
    expect(readFileSync(join(envDir(), 'record.json'), 'utf8')).toBe(record);
    expect(existsSync(join(envDir(), 'lock'))).toBe(false);
    checkStore();
    ok(await run(['up']));
    expect(ok(await run(['exec', '--', 'cat', '/opt/slow'])).stdout).toBe('slow-2\n');
  });

  test('a second envy up waits for the first with a message, then finds everything done', async () => {
    writeSpec('-3');
    const first = start(['up']);
    await waitFor('the slow build step', slowStep);
    const second = start(['up']);
    const [a, b] = await Promise.all([first.done, second.done]);
    expect(a.code, a.stderr).toBe(0);
    expect(b.code, b.stderr).toBe(0);
    expect(b.stderr).toMatch(new RegExp(`waiting for another envy \\(pid ${first.child.pid}, envy up\\)`));
    expect(b.stdout).toMatch(/^robust is up to date and running/m);
  });

  test('after a "reboot" the environment is stopped, not broken; status answers at once; up starts it again', async () => {
    const initFile = join(envDir(), 'run/init.pid');
    const [pid, startTime] = readFileSync(initFile, 'utf8').trim().split(/\s+/);
    // Power loss: every process of the environment dies at once, nothing cleans up after it.
    for (const p of ours()) {
      try {
        process.kill(p.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await waitFor('init to die', () => (existsSync(`/proc/${pid}`) ? undefined : true));
    // After the reboot the old pid belongs to an unrelated process of the same user; leftover locks name dead owners.
    const stranger = spawn(asUserArgv()[0]!, [...asUserArgv().slice(1), 'sleep', '300'], { stdio: 'ignore' });
    await waitFor('the stranger', () => (stranger.pid && existsSync(`/proc/${stranger.pid}`) ? true : undefined));
    // setpriv and env exec in place: the spawned pid is sleep's.
    const strangerPid = stranger.pid!;
    writeFileSync(initFile, `${strangerPid} ${startTime}\n`);
    writeFileSync(join(envDir(), 'lock'), JSON.stringify({ pid: 999_999, startTime: '1', purpose: 'envy up' }));
    try {
      const t0 = Date.now();
      const status = JSON.parse(ok(await run(['status', '--json'], 10_000)).stdout) as { environments: { name: string; state: string }[] };
      expect(Date.now() - t0).toBeLessThan(5_000);
      expect(status.environments.find((e) => e.name === 'robust')?.state).toBe('stopped');
      expect(ok(await run(['status'], 10_000)).stdout).toMatch(/^robust\s+stopped/m);
      // exec into a stopped environment starts it; the stranger with the old pid is never signalled.
      expect(ok(await run(['exec', '--', 'cat', '/opt/slow'])).stdout).toBe('slow-3\n');
      expect(existsSync(`/proc/${strangerPid}`)).toBe(true);
      ok(await run(['down']));
      expect(existsSync(`/proc/${strangerPid}`)).toBe(true);
      expect(ok(await run(['up'])).stdout).toMatch(/^robust is running/m);
      expect(ok(await run(['exec', '--', 'cat', '/var/tmp/starts'])).stdout).toMatch(/started\n$/);
    } finally {
      stranger.kill('SIGKILL');
      try {
        process.kill(strangerPid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  });

  test('Ctrl-C during hooks.onCreate: exit 130, and the next up runs onCreate to the end', async () => {
    ok(await run(['down', '--rm']));
    writeFileSync(
      join(project.path, 'env.yaml'),
      ['name: robust', 'base: {host: true}', 'hooks:', `  onCreate: echo begun >> /var/tmp/created && sleep ${MARK} && echo done >> /var/tmp/created`, '  postStart: echo started >> /var/tmp/starts', ''].join('\n'),
    );
    const up = start(['up']);
    await waitFor('the slow onCreate hook', slowStep, 60_000);
    process.kill(-up.child.pid!, 'SIGINT');
    const result = await up.done;
    expect(result.code, result.stderr).toBe(130);
    expect(result.stderr).toMatch(/^envy: interrupted/m);
    // The environment itself runs on (it had started); only the hook was stopped.
    expect(ok(await run(['exec', '--', 'cat', '/var/tmp/created'])).stdout).toBe('begun\n');
    const again = ok(await run(['up']));
    expect(again.stdout).toContain('hooks.onCreate did not complete last time: running it now');
    expect(ok(await run(['exec', '--', 'cat', '/var/tmp/created'])).stdout).toBe('begun\nbegun\ndone\n');
    expect(ok(await run(['up'])).stdout).toMatch(/^robust is up to date and running/m);
  });

  test('status does not hang on an environment whose init is stopped (SIGSTOP); down still ends it', async () => {
    const [pid] = readFileSync(join(envDir(), 'run/init.pid'), 'utf8').trim().split(/\s+/);
    process.kill(Number(pid), 'SIGSTOP');
    const t0 = Date.now();
    ok(await run(['status', '--json'], 10_000));
    expect(Date.now() - t0).toBeLessThan(5_000);
    const t1 = Date.now();
    const down = ok(await run(['down'], 60_000));
    expect(down.stdout).toContain('stopped');
    // Well inside the 10 s grace period: down wakes a stopped init rather than waiting it out.
    expect(Date.now() - t1).toBeLessThan(8_000);
    // Gone, or a zombie until the host's init reaps the orphan: either way no longer running.
    await waitFor('init to be reaped', () => (!existsSync(`/proc/${pid}`) || /\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8')) ? true : undefined), 5_000);
  }, 60_000);
});
