/**
 * Services through the real CLI, as the unprivileged test user, on a host base (fast): the per-
 * environment supervisor starts them in file order after postStart, waits for readiness, restarts a
 * crashing one with backoff (`restart: no` stays down), fails `up` naming the service whose readiness
 * never passes, stops them in reverse order (SIGTERM, then SIGKILL after stopGrace), writes rotated
 * logs that `envy logs -f` follows, survives and replaces a SIGKILLed supervisor, and `up --watch`
 * restarts only the service whose definition changed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { alive, asUserArgv, envy, envyRoot, runAsUser, type RunResult, userTempDir, waitFor } from '../harness.js';

let project: { path: string; remove: () => void };
let home: { path: string; remove: () => void };
const LOG_MAX = 4096;
const env = (): Record<string, string> => ({ ENVY_HOME: home.path, CI: 'true', ENVY_LOG_MAX_BYTES: String(LOG_MAX) });

const run = (args: string[], timeoutMs = 120_000): Promise<RunResult> => envy(args, { cwd: project.path, env: env(), timeoutMs });

function ok(result: RunResult): RunResult {
  if (result.code !== 0) throw new Error(`exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`);
  return result;
}

interface Service {
  name: string;
  state: string;
  pid?: number;
  restarts: number;
}

async function services(): Promise<Map<string, Service>> {
  const status = JSON.parse(ok(await run(['status', '--json'])).stdout) as { environments: { name: string; services: Service[]; supervisor: string }[] };
  const environment = status.environments.find((e) => e.name === 'svc');
  return new Map((environment?.services ?? []).map((s) => [s.name, s]));
}

const writeSpec = (text: string): Promise<RunResult> => runAsUser('sh', ['-c', 'cat > "$1"', 'sh', join(project.path, 'env.yaml')], { input: text });

/** A service that records the SIGTERM it gets in the workspace (visible on the host), then exits. */
const polite = (name: string): string => `'trap "echo ${name} TERM >> /workspace/stops; exit 0" TERM; echo ${name} up; while :; do sleep 0.1; done'`;

function spec(extra: string[] = [], webCommand = polite('web')): string {
  return [
    'name: svc',
    'base: {host: true}',
    'hooks:',
    '  postStart:',
    "    - 'echo poststart-ran; echo poststart > /workspace/poststart-done'",
    // Left running by a hook: its output must not break (SIGPIPE) once up has exited.
    "    - '(sleep 1; echo late-from-background) &'",
    'services:',
    '  db:',
    `    run: ${polite('db')}`,
    // Ready only once postStart has run and db has printed: proves the order.
    '    ready: {run: "test -e /workspace/poststart-done", interval: 100ms, timeout: 10s}',
    '  stubborn:',
    `    run: 'trap "" TERM; echo stubborn up; while :; do sleep 0.1; done'`,
    '    stopGrace: 1s',
    '  web:',
    `    run: ${webCommand}`,
    '  crasher:',
    "    run: 'echo crashing; exit 3'",
    '    restart: on-failure',
    '  once:',
    "    run: 'echo once; exit 4'",
    '    restart: "no"',
    '  chatty:',
    "    run: 'i=0; while :; do i=$((i+1)); echo \"line $i padding-padding-padding-padding\"; sleep 0.01; done'",
    ...extra,
    '',
  ].join('\n');
}

describe('services', () => {
  beforeAll(async () => {
    project = userTempDir('envy-svc-');
    home = userTempDir('envy-svc-home-');
    await writeSpec(spec());
  });
  afterAll(async () => {
    await run(['down', '--rm']);
    await runAsUser(join(envyRoot(), 'dist/envy-ns'), ['userns', '--', 'rm', '-rf', home.path]);
    home.remove();
    project.remove();
  });

  test('up starts the services after postStart, in file order, and lists them', async () => {
    const result = ok(await run(['up']));
    // Read at once, all generations: chatty fills a 4 KiB log in under a second.
    const logs = join(home.path, 'environments', readdirSync(join(home.path, 'environments'))[0]!, 'logs');
    const log = ['services.log.3', 'services.log.2', 'services.log.1', 'services.log'].map((f) => (existsSync(join(logs, f)) ? readFileSync(join(logs, f), 'utf8') : '')).join('');
    expect(result.stdout).toMatch(/services: db ready, stubborn running, web running, crasher \S+, once \S+, chatty running/);
    // Hook output reaches the terminal and the hooks log.
    expect(result.stdout).toMatch(/^poststart-ran$/m);
    const hooksLog = ok(await run(['logs', '--hooks'])).stdout;
    expect(hooksLog).toMatch(/^\[envy\] \S+ hooks\.postStart: echo poststart-ran.*\npoststart-ran\n\[envy\] hooks\.postStart exited with code 0\n/);
    const started = [...log.matchAll(/^(\S+) \| \[envy\] started/gm)].map((m) => m[1]);
    expect(started.slice(0, 6)).toEqual(['db', 'stubborn', 'web', 'crasher', 'once', 'chatty']);
    // db became ready before the next one started.
    expect(log.indexOf('db | [envy] ready')).toBeLessThan(log.indexOf('stubborn | [envy] started'));
    const list = await services();
    for (const name of ['db', 'stubborn', 'web', 'chatty']) expect(alive(list.get(name)!.pid!)).toBe(true);
    // Reachable as a process of the environment: envy exec sees it in the environment's pid namespace.
    const ps = ok(await run(['exec', '--', 'sh', '-c', 'cat /proc/[0-9]*/cmdline | tr "\\0" " "']));
    expect(ps.stdout).toContain('stubborn up');
    await waitFor('the background output', async () => (await run(['logs', '--hooks'])).stdout.includes('late-from-background\n'), 10_000);
  });

  test('a crashing service is restarted with backoff; restart: no is not', async () => {
    await waitFor('three restarts of crasher', async () => ((await services()).get('crasher')?.restarts ?? 0) >= 3);
    const list = await services();
    expect(list.get('once')).toMatchObject({ state: 'failed', restarts: 0 });
    const log = ok(await run(['logs', 'crasher'])).stdout;
    // Exponential backoff: 500 ms, 1000 ms, 2000 ms between the first attempts.
    expect(log).toContain('restarting in 500 ms');
    expect(log).toContain('restarting in 1000 ms');
    expect(log).toContain('restarting in 2000 ms');
    const status = ok(await run(['status'])).stdout;
    expect(status).toMatch(/services: .*crasher (restarting|running) \(\d+ restarts\)/);
    expect(status).toContain('once failed');
  });

  test('logs are rotated by size and logs -f follows across rotation', async () => {
    const id = readdirSync(join(home.path, 'environments'))[0]!;
    const dir = join(home.path, 'environments', id, 'logs', 'services');
    await waitFor('chatty.log.2', () => existsSync(join(dir, 'chatty.log.2')));
    for (const file of readdirSync(dir).filter((f) => f.startsWith('chatty.log'))) {
      // A rotated file ends at a line boundary just under the limit (plus one line at most).
      expect(readFileSync(join(dir, file)).length).toBeLessThanOrEqual(LOG_MAX + 100);
    }
    expect(existsSync(join(dir, 'chatty.log.4'))).toBe(false);

    const argv = [...asUserArgv(env()), process.execPath, join(envyRoot(), 'bin/envy.js'), 'logs', 'chatty', '-f', '-n', '1'];
    const follower = spawn(argv[0]!, argv.slice(1), { cwd: project.path, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    follower.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    try {
      // ~60 bytes every 10 ms: a 4 KiB file rotates about every second.
      await new Promise((resolve) => setTimeout(resolve, 4_000));
    } finally {
      follower.kill('SIGINT');
    }
    await new Promise((resolve) => follower.once('close', resolve));
    // -f after `logs` follows; before it, -f/--file still names env.yaml.
    const unknown = await run(['-f', join(project.path, 'env.yaml'), 'logs', 'nope', '-f']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/^envy: .*env\.yaml: there is no service "nope"\nhint: services: db, stubborn, web, crasher, once, chatty\n$/);
    const numbers = [...out.matchAll(/^line (\d+) /gm)].map((m) => Number(m[1]));
    expect(numbers.length).toBeGreaterThan(100);
    // Contiguous: nothing lost or doubled while the file was rotated several times under the follower.
    numbers.forEach((n, i) => expect(n).toBe(numbers[0]! + i));
  });

  test('a readiness check that never passes fails up, naming the service and the check output', async () => {
    await writeSpec(spec(['  never:', '    run: sleep 1000', '    ready: {run: "echo still-not-ready; exit 1", interval: 200ms, timeout: 1s}']));
    const result = await run(['up']);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^envy: service never failed to start: not ready after 1 s; last check: `echo still-not-ready; exit 1` exited with 1: still-not-ready$/m);
    expect(result.stderr).toContain('hint: envy logs never');
    expect(result.stderr).not.toMatch(/\n\s+at /);
    // Only services changed: the environment and the others kept running.
    expect(result.stdout + result.stderr).not.toContain('restarting the environment');
    expect((await services()).get('never')?.state).toBe('failed');
    await writeSpec(spec());
    expect(ok(await run(['up'])).stdout).toContain('services changed: never (removed)');
  });

  test('a SIGKILLed supervisor: its services keep running, up replaces it and them', async () => {
    const before = await services();
    const supervisorPid = Number(JSON.parse(readFileSync(join(home.path, 'environments', readdirSync(join(home.path, 'environments'))[0]!, 'run', 'supervisor.lock'), 'utf8')).pid);
    process.kill(supervisorPid, 'SIGKILL');
    await waitFor('the supervisor to die', () => !alive(supervisorPid));
    const stubborn = before.get('stubborn')!.pid!;
    expect(alive(stubborn)).toBe(true);
    const again = ok(await run(['up']));
    expect(again.stdout).toContain('the service supervisor was not running: services restarted');
    // The old process was ended (it ignores SIGTERM: SIGKILL), a new one runs.
    await waitFor('the old stubborn to be gone', () => !alive(stubborn));
    const after = await services();
    expect(after.get('stubborn')!.pid).not.toBe(stubborn);
    expect(alive(after.get('stubborn')!.pid!)).toBe(true);
  });

  test('up --watch restarts only the service whose definition changed, survives a bad edit, Ctrl-C leaves it running', async () => {
    const before = await services();
    const argv = [...asUserArgv(env()), process.execPath, join(envyRoot(), 'bin/envy.js'), 'up', '--watch'];
    const watcher: ChildProcess = spawn(argv[0]!, argv.slice(1), { cwd: project.path, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    watcher.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    watcher.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const closed = new Promise<number | null>((resolve) => watcher.once('close', (code) => resolve(code)));
    try {
      await waitFor('the watcher', () => out.includes('watching'));
      await writeSpec(spec([], polite('web2')));
      await waitFor('the re-apply', () => /services changed: web; the rest keep running/.test(out), 30_000);
      expect(out).toContain('env.yaml changed: services.web');
      const after = await services();
      expect(after.get('web')!.pid).not.toBe(before.get('web')!.pid);
      expect(ok(await run(['logs', 'web'])).stdout).toContain('web2 up');
      for (const name of ['db', 'stubborn', 'chatty']) expect(after.get(name)!.pid).toBe(before.get(name)!.pid);

      await writeSpec('name: svc\nbase: {host: true}\nservices: [oops]\n');
      await waitFor('the config error', () => out.includes('keeps the last good configuration'));
      expect(out).toMatch(/^envy: .*env\.yaml:3/m);
      expect(alive(after.get('db')!.pid!)).toBe(true);

      // Anything but services restarts the environment, and every service with it.
      await writeSpec(spec([], polite('web2')).replace('hooks:', 'env: {CHANGED: "1"}\nhooks:'));
      await waitFor('the environment restart', () => /env\.yaml changed: env\n[\s\S]*restarting the environment[\s\S]*services: db ready/.test(out), 60_000);
      const restarted = await services();
      for (const name of ['db', 'stubborn', 'web', 'chatty']) expect(restarted.get(name)!.pid).not.toBe(after.get(name)!.pid);
      expect(ok(await run(['exec', '--', 'sh', '-c', 'echo $CHANGED'])).stdout).toBe('1\n');
    } finally {
      watcher.kill('SIGINT');
    }
    expect(await closed).toBe(0);
    expect(out).toContain('keeps running');
    expect(alive((await services()).get('db')!.pid!)).toBe(true);
    // The watcher left the environment as it was: nothing changed since its last apply.
    expect(ok(await run(['up'])).stdout).toContain('is up to date and running');
  });

  test('down stops services in reverse order: SIGTERM, SIGKILL after stopGrace; a dead supervisor still leaves nothing behind', async () => {
    const list = await services();
    const pids = ['db', 'stubborn', 'web', 'chatty'].map((name) => list.get(name)!.pid!);
    ok(await run(['down']));
    for (const pid of pids) expect(alive(pid)).toBe(false);
    // web (third) got SIGTERM before db (first); stubborn ignored it and was killed in between.
    expect(readFileSync(join(project.path, 'stops'), 'utf8').split('\n').filter(Boolean).slice(-2)).toEqual(['web2 TERM', 'db TERM']);
    const log = ok(await run(['logs'])).stdout;
    // crasher may be between attempts and once has exited: neither has a process to stop.
    const stops = [...log.matchAll(/^(\S+) \| \[envy\] stopping/gm)].map((m) => m[1]).filter((n) => n !== 'crasher');
    expect(stops.slice(-4)).toEqual(['chatty', 'web', 'stubborn', 'db']);
    expect(log).toContain('stubborn | [envy] did not stop within 1000 ms: SIGKILL');
    const status = await services();
    for (const service of status.values()) expect(service.state).toBe('stopped');

    // Services live in the environment's pid namespace: stopping it ends them without the supervisor.
    ok(await run(['up']));
    const running = await services();
    const supervisorPid = Number(JSON.parse(readFileSync(join(home.path, 'environments', readdirSync(join(home.path, 'environments'))[0]!, 'run', 'supervisor.lock'), 'utf8')).pid);
    process.kill(supervisorPid, 'SIGKILL');
    await waitFor('the supervisor to die', () => !alive(supervisorPid));
    const orphaned = ['db', 'stubborn', 'web'].map((name) => running.get(name)!.pid!);
    for (const pid of orphaned) expect(alive(pid)).toBe(true);
    ok(await run(['down']));
    for (const pid of orphaned) expect(alive(pid)).toBe(false);
  });

  test('an environment killed under the supervisor: status answers at once, the supervisor follows it', async () => {
    ok(await run(['up']));
    const id = readdirSync(join(home.path, 'environments'))[0]!;
    const supervisorPid = Number(JSON.parse(readFileSync(join(home.path, 'environments', id, 'run', 'supervisor.lock'), 'utf8')).pid);
    const [initPid] = readFileSync(join(home.path, 'environments', id, 'run', 'init.pid'), 'utf8').trim().split(' ');
    const db = (await services()).get('db')!.pid!;
    process.kill(Number(initPid), 'SIGKILL');
    await waitFor('the services to die with the environment', () => !alive(db), 5_000);
    const started = Date.now();
    const status = JSON.parse(ok(await run(['status', '--json'])).stdout) as { environments: { name: string; state: string; services: Service[] }[] };
    expect(Date.now() - started).toBeLessThan(5_000);
    const environment = status.environments.find((e) => e.name === 'svc')!;
    expect(environment.state).toBe('stopped');
    for (const service of environment.services) expect(service.state).toBe('stopped');
    await waitFor('the supervisor to exit', () => !alive(supervisorPid), 5_000);
  });

  test('env.yaml without services: up forgets the old list', async () => {
    await writeSpec('name: svc\nbase: {host: true}\n');
    const result = ok(await run(['up']));
    expect(result.stdout).not.toContain('services:');
    expect((await services()).size).toBe(0);
    expect(ok(await run(['status'])).stdout).not.toContain('services:');
  });
});
