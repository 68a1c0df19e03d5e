/**
 * A VM's workspace kept live, through the real CLI as the unprivileged test user under qemu (TCG):
 * the watching sync engine on the host, the sync agent on the guest's second virtio-serial port.
 * Host edits reach the guest without any command, files made in the guest come back (two-way),
 * `envy sync --flush` waits for everything, a killed sync process is restarted by `up` and a change
 * on both sides meanwhile is kept as a conflict copy. Then `workspace.sync: 9p`: the project shared
 * live with virtio-9p. One Debian bootstrap for the file; the two VMs run one after the other.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { alive, debianHome, envy, runAsUser, userTempDir, waitFor, type RunResult } from '../harness.js';

let home: { path: string; remove: () => void };
let synced: { path: string; remove: () => void };
let shared: { path: string; remove: () => void };

const base = ['base:', '  debian: bookworm', 'backend:', '  type: vm', '  memory: 1g', '  cpus: 2'];

const run = (project: string, args: string[], timeoutMs = 180_000): Promise<RunResult> =>
  envy(args, { cwd: project, env: { ENVY_HOME: home.path, CI: 'true' }, timeoutMs });

function ok(result: RunResult): RunResult {
  if (result.code !== 0) throw new Error(`exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`);
  return result;
}

/** Write a file on the host as the user would (the test itself may run as root). */
async function hostWrite(path: string, content: string): Promise<void> {
  ok(await runAsUser('/bin/sh', ['-c', 'printf %s "$2" > "$1.tmp" && mv "$1.tmp" "$1"', 'sh', path, content]));
}

async function guestRead(project: string, path: string): Promise<string | undefined> {
  const result = await run(project, ['exec', '--', 'cat', path]);
  return result.code === 0 ? result.stdout : undefined;
}

interface SyncJson {
  running: boolean;
  pid?: number;
  state?: string;
  conflicts?: { path: string; conflictPath: string }[];
}

async function syncJson(project: string): Promise<SyncJson> {
  return JSON.parse((await run(project, ['sync', '--json'])).stdout) as SyncJson;
}

describe('backend: vm, the workspace kept live (sync over the agent, and 9p)', () => {
  beforeAll(async () => {
    // The run's shared home: the Debian base and the .deb cache are made once per run (harness.ts).
    home = { path: debianHome(), remove: () => {} };
    synced = userTempDir('envy-vmsync-');
    shared = userTempDir('envy-vm9p-');
    writeFileSync(join(synced.path, 'env.yaml'), ['name: vms', ...base, 'workspace:', '  ignore: [build/]', ''].join('\n'));
    writeFileSync(join(shared.path, 'env.yaml'), ['name: vm9p', ...base, 'workspace:', '  sync: 9p', ''].join('\n'));
    execFileSync('chown', ['-R', `${statSync(synced.path).uid}:${statSync(synced.path).gid}`, synced.path, shared.path]);
    await hostWrite(join(synced.path, 'hello.txt'), 'from the host\n');
    // Bootstrap (~1.5 min), the kernel package, the disk, the first boot, the initial sync.
    ok(await run(synced.path, ['up'], 600_000));
  }, 620_000);

  afterAll(async () => {
    for (const project of [synced, shared]) await run(project.path, ['down', '--rm']).catch(() => undefined);
    for (const dir of [synced, shared]) dir.remove();
  });

  test('up returns with the sources in the guest; a host edit reaches it with no command run', async () => {
    expect(await guestRead(synced.path, '/workspace/hello.txt')).toBe('from the host\n');
    // Written by the sync agent, which runs as the env user: the file is theirs, as on the host.
    const uid = String(statSync(synced.path).uid);
    expect(ok(await run(synced.path, ['exec', '--', 'stat', '-c', '%u', '/workspace/hello.txt'])).stdout.trim()).toBe(uid);
    const report = await syncJson(synced.path);
    expect(report).toMatchObject({ running: true, state: 'in-sync' });
    expect(ok(await run(synced.path, ['status'])).stdout).toMatch(/vms\s.*in sync/);

    await hostWrite(join(synced.path, 'hello.txt'), 'edited on the host\n');
    await waitFor('the host edit in the guest', async () => (await guestRead(synced.path, '/workspace/hello.txt')) === 'edited on the host\n', 60_000);
  });

  test('two-way: a file made in the guest comes back; ignored trees stay in the guest', async () => {
    ok(await run(synced.path, ['exec', '--', 'sh', '-c', 'mkdir -p /workspace/sub /workspace/build && echo from the guest > /workspace/sub/made.txt && echo output > /workspace/build/out.o']));
    await waitFor('the guest file on the host', () => existsSync(join(synced.path, 'sub/made.txt')), 60_000);
    expect(readFileSync(join(synced.path, 'sub/made.txt'), 'utf8')).toBe('from the guest\n');
    ok(await run(synced.path, ['sync', '--flush']));
    expect(existsSync(join(synced.path, 'build'))).toBe(false);
    // A deletion in the guest of a file the host had: gone on the host too.
    ok(await run(synced.path, ['exec', '--', 'rm', '/workspace/sub/made.txt']));
    await waitFor('the guest deletion on the host', () => !existsSync(join(synced.path, 'sub/made.txt')), 60_000);
  });

  test('sync --flush returns once every host change is in the guest', async () => {
    ok(await runAsUser('/bin/sh', ['-c', `mkdir -p "$1/many" && for i in $(seq 1 300); do echo "file $i" > "$1/many/f$i.txt"; done`, 'sh', synced.path]));
    ok(await run(synced.path, ['sync', '--flush', '--timeout', '120']));
    expect(ok(await run(synced.path, ['exec', '--', 'sh', '-c', 'ls /workspace/many | wc -l; cat /workspace/many/f300.txt'])).stdout).toBe('300\nfile 300\n');
    expect((await syncJson(synced.path)).state).toBe('in-sync');
  });

  test('the boot starts the sync agent as the env user; killed in the guest, the next sync process starts it again', async () => {
    const envDir = join(home.path, 'environments', readdirSync(join(home.path, 'environments')).find((name) => name.startsWith('vms-'))!);
    const syncLog = (): string => readFileSync(join(envDir, 'logs/sync.log'), 'utf8');
    // The boot started it with one serve frame to the control agent (bootMs.syncAgent is set only
    // then), and the sync process, started beside qemu, never had to start it itself.
    const state = JSON.parse(readFileSync(join(envDir, 'run/vm.json'), 'utf8')) as { bootMs?: { answered: number; syncAgent?: number } };
    expect(state.bootMs?.syncAgent).toBeGreaterThanOrEqual(state.bootMs!.answered);
    expect(syncLog()).not.toMatch(/starting it again/);
    // In the guest: one agent besides PID 1, a child of PID 1 (the control agent forked it) running as the user.
    const syncAgents = async (): Promise<string[][]> =>
      ok(
        await run(synced.path, [
          'exec', '--root', '--', 'sh', '-c',
          'for d in /proc/[0-9]*; do tr "\\0" " " < $d/cmdline 2>/dev/null | grep -q -- "^envy-agent --port" && echo ${d#/proc/} $(sed -n "s/^Uid:[[:space:]]*\\([0-9]*\\).*/\\1/p; s/^PPid:[[:space:]]*//p" $d/status); done; true',
        ]),
      )
        .stdout.trim()
        .split('\n')
        .filter(Boolean)
        .map((line) => line.split(' '))
        .filter(([pid]) => pid !== '1');
    const uid = String(statSync(synced.path).uid);
    const [first, ...others] = await syncAgents();
    expect(others).toEqual([]);
    expect(first!.slice(1)).toEqual(['1', uid]);
    const { pid } = await syncJson(synced.path);

    ok(await run(synced.path, ['exec', '--root', '--', 'sh', '-c', `kill ${first![0]!}`]));
    // qemu keeps the host's end of the port open: the sync process's probe finds nobody answering
    // and it stops; the next `up` brings both back.
    await waitFor('the sync process gone', () => !alive(pid!), 60_000);
    ok(await run(synced.path, ['up']));
    // `up` restarts the sync process; its flush returns once it reached the guest again.
    ok(await run(synced.path, ['sync', '--flush']));
    expect(syncLog()).toMatch(/did not answer/);
    expect(syncLog()).toMatch(/starting it again/);
    const [again, ...more] = await syncAgents();
    expect(more).toEqual([]);
    expect(again![0]).not.toBe(first![0]);
    expect(again!.slice(1)).toEqual(['1', uid]);
    await hostWrite(join(synced.path, 'hello.txt'), 'after the agent came back\n');
    await waitFor('the host edit in the guest', async () => (await guestRead(synced.path, '/workspace/hello.txt')) === 'after the agent came back\n', 60_000);
  }, 300_000);

  test('a killed sync process is restarted by up; a change on both sides meanwhile is kept twice', async () => {
    const before = await syncJson(synced.path);
    expect(before.running).toBe(true);
    process.kill(before.pid!, 'SIGKILL');
    await waitFor('the sync process gone', () => !alive(before.pid!));
    expect(ok(await run(synced.path, ['status'])).stdout).toMatch(/vms\s.*stopped/);
    await hostWrite(join(synced.path, 'both.txt'), 'base\n');
    // Agreed first: both sides hold "base" (a flush through a new sync process), then it is killed again.
    ok(await run(synced.path, ['up']));
    ok(await run(synced.path, ['sync', '--flush']));
    expect(await guestRead(synced.path, '/workspace/both.txt')).toBe('base\n');
    const second = await syncJson(synced.path);
    process.kill(second.pid!, 'SIGKILL');
    await waitFor('the sync process gone', () => !alive(second.pid!));

    await hostWrite(join(synced.path, 'both.txt'), 'host version\n');
    ok(await run(synced.path, ['exec', '--', 'sh', '-c', 'echo guest version > /workspace/both.txt']));
    ok(await run(synced.path, ['up']));
    ok(await run(synced.path, ['sync', '--flush']));
    const report = await syncJson(synced.path);
    expect(report.conflicts?.map((c) => c.path)).toEqual(['both.txt']);
    const copy = report.conflicts![0]!.conflictPath;
    expect(copy).toMatch(/^both\.txt\.envy-conflict-\d{8}T\d{6}Z$/);
    // Nothing lost: the host's version keeps the name on both sides, the guest's is beside it on both.
    expect(readFileSync(join(synced.path, 'both.txt'), 'utf8')).toBe('host version\n');
    expect(await guestRead(synced.path, '/workspace/both.txt')).toBe('host version\n');
    await waitFor('the conflict copy on the host', () => existsSync(join(synced.path, copy)), 60_000);
    expect(readFileSync(join(synced.path, copy), 'utf8')).toBe('guest version\n');
    expect(await guestRead(synced.path, `/workspace/${copy}`)).toBe('guest version\n');
  });

  test('down stops the sync process; host edits made while down are in the guest after up', async () => {
    const { pid } = await syncJson(synced.path);
    ok(await run(synced.path, ['down']));
    expect(alive(pid!)).toBe(false);
    expect((await run(synced.path, ['sync'])).code).toBe(1);
    await hostWrite(join(synced.path, 'hello.txt'), 'edited while down\n');
    ok(await run(synced.path, ['up']));
    expect(await guestRead(synced.path, '/workspace/hello.txt')).toBe('edited while down\n');
    // The guest's own files survived on its disk, and the sync did not delete what it had agreed on.
    expect(readdirSync(join(synced.path, 'many'))).toHaveLength(300);
    ok(await run(synced.path, ['down']));
  });

  test('workspace.sync: 9p shares the project live: edits either way are seen at once', async () => {
    await hostWrite(join(shared.path, 'hello.txt'), 'over 9p\n');
    ok(await run(shared.path, ['up'], 300_000));
    expect(await guestRead(shared.path, '/workspace/hello.txt')).toBe('over 9p\n');
    expect(ok(await run(shared.path, ['exec', '--', 'sh', '-c', "awk '$2 == \"/workspace\" { print $3 }' /proc/mounts"])).stdout.trim()).toBe('9p');
    // No watcher and no copy: the very next read sees the host's new bytes.
    await hostWrite(join(shared.path, 'hello.txt'), 'changed on the host\n');
    expect(await guestRead(shared.path, '/workspace/hello.txt')).toBe('changed on the host\n');
    // The guest writes straight into the project; the file belongs to the host user.
    ok(await run(shared.path, ['exec', '--', 'sh', '-c', 'echo from the guest > /workspace/made.txt']));
    expect(readFileSync(join(shared.path, 'made.txt'), 'utf8')).toBe('from the guest\n');
    expect(statSync(join(shared.path, 'made.txt')).uid).toBe(statSync(shared.path).uid);
    const sync = await run(shared.path, ['sync']);
    expect(sync.code).not.toBe(0);
    expect(sync.stderr).toContain('workspace.sync: 9p');
    ok(await run(shared.path, ['down']));
  });
});
