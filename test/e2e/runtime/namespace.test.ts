/**
 * The rootless namespace runtime against the real kernel, as the unprivileged test user, on a
 * busybox rootfs built here. Each test asserts something the kernel would let slip if the helper
 * got it wrong (a missing map line, an unreaped zombie, a leaked mount, a surviving process).
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { asUserArgv, collect, runAsUser, testUser } from '../harness.js';
import { baseConfig, drive, driverEnv, helper, makeWorkspace, shell, subuidStart, userIds, type Workspace } from './fixtures.js';

let ws: Workspace;

beforeAll(async () => {
  ws = await makeWorkspace();
});

const startedConfigs: object[] = [];

afterAll(async () => {
  // A failed assertion must not leave an environment running into the next test file.
  for (const config of startedConfigs) await drive(ws, 'stop', { config, graceMs: 100 });
  await ws?.remove();
});

/**
 * Processes left in the test user's namespaces: anything owned by the user or their subordinate
 * range that lives in a pid namespace other than ours.
 */
function strayProcesses(): string[] {
  const { uid } = userIds();
  const { start, count } = subuidStart();
  const hostPidNs = readlinkSync('/proc/self/ns/pid');
  const stray: string[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const status = readFileSync(`/proc/${entry}/status`, 'utf8');
      const owner = Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]);
      if (/^State:\s+Z/m.test(status)) continue;
      if (owner !== uid && !(owner >= start && owner < start + count)) continue;
      if (readlinkSync(`/proc/${entry}/ns/pid`) === hostPidNs) continue;
      stray.push(`${entry} ${owner} ${readFileSync(`/proc/${entry}/cmdline`, 'utf8').replace(/\0/g, ' ')}`);
    } catch {
      // exited while we looked, or not ours to read
    }
  }
  return stray;
}

describe('identity', () => {
  it('maps the full subordinate range around the keep-id user, and the user is itself inside', async () => {
    const { uid, gid } = userIds();
    const { start, count } = subuidStart();
    const r = await drive(ws, 'runOnce', { config: baseConfig(ws), process: shell('id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map; cat /proc/self/setgroups') });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines.slice(0, 2)).toEqual([String(uid), String(gid)]);
    const uidMap = lines.slice(2, 5).map((l) => l.trim().split(/\s+/).map(Number));
    expect(uidMap).toEqual([
      [0, start, uid],
      [uid, uid, 1],
      [uid + 1, start + uid + 1, count - uid - 1],
    ]);
    // newgidmap leaves setgroups allowed (apt needs it); the single-uid fallback would say deny.
    expect(lines[lines.length - 1]).toBe('allow');
  });

  it('files created in the workspace belong to the host user; root inside writes as the first subordinate uid', async () => {
    const { uid } = userIds();
    const { start } = subuidStart();
    const upper = join(ws.dir, 'id-upper');
    const work = join(ws.dir, 'id-work');
    await runAsUser('mkdir', ['-p', upper, work]);
    const config = baseConfig(ws, { rootfs: { layers: [ws.rootfs], upper, work } });
    const r = await drive(ws, 'runOnce', { config, process: shell('touch /workspace/by-user && id -u') });
    expect(r.code).toBe(0);
    expect(statSync(join(ws.dir, 'ws/by-user')).uid).toBe(uid);
    const asRoot = await drive(ws, 'runOnce', { config, process: shell('id -u; touch /made-by-root; ls -ld / | cut -c1-10', { root: true }) });
    expect(asRoot.stdout.trim().split('\n')[0]).toBe('0');
    expect(statSync(join(upper, 'made-by-root')).uid).toBe(start);
    // The overlay root keeps the image's owner, not the host user's upper dir.
    const owner = await drive(ws, 'runOnce', { config, process: shell('stat -c %u /') });
    expect(owner.stdout.trim()).toBe('0');
  });

  it('the keep-id user gets a passwd entry and a home directory of its own', async () => {
    const { uid, name } = userIds();
    const config = baseConfig(ws, { user: { uid, gid: userIds().gid, name, home: `/home/${name}` } });
    const r = await drive(ws, 'runOnce', { config, process: shell('whoami; stat -c %u $HOME', { env: { PATH: '/bin', HOME: `/home/${name}` } }) });
    expect(r.stdout.trim().split('\n')).toEqual([name, String(uid)]);
  });

  it('the single-uid fallback maps only the user and denies setgroups', async () => {
    const { uid } = userIds();
    // Only the user's own uid is mapped, so the rootfs must be the user's too (a subuid-owned one cannot be).
    const own = join(ws.dir, 'rootfs-own');
    expect((await runAsUser('cp', ['-a', ws.rootfs, own])).code).toBe(0);
    const r = await runAsUser(helper(), ['run', '--idmap', 'single', '--layer', own, '--env', 'PATH=/bin', '--', 'sh', '-c', 'cat /proc/self/uid_map /proc/self/setgroups; id -u']);
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]!.trim().split(/\s+/).map(Number)).toEqual([uid, uid, 1]);
    expect(lines.slice(1)).toEqual(['deny', String(uid)]);
  });
});

describe('processes', () => {
  it.each([
    ['exit 0', 0],
    ['exit 1', 1],
    ['exit 42', 42],
    ['kill -INT $$', 130],
    ['kill -KILL $$', 137],
  ])('passes the exit status of `%s` through as %i', async (script, expected) => {
    const r = await drive(ws, 'runOnce', { config: baseConfig(ws), process: shell(script) });
    expect(r.code).toBe(expected);
  });

  it('tells a missing command (127) and a non-executable one (126) apart from setup failures', async () => {
    const missing = await drive(ws, 'runOnce', { config: baseConfig(ws), process: shell('', { argv: ['no-such-command'] }) });
    expect(missing.code).toBe(127);
    expect(missing.stderr).toContain('no-such-command: command not found');
    const notExec = await drive(ws, 'runOnce', { config: baseConfig(ws), process: shell('', { argv: ['/etc/passwd'] }) });
    expect(notExec.code).toBe(126);
    const broken = await drive(ws, 'runOnce', { config: baseConfig(ws, { rootfs: { layers: [join(ws.dir, 'no-such-layer')] } }), process: shell('true') });
    expect(broken.code).toBe(199);
    expect(broken.stderr).toMatch(/ENVY_ERROR .*layer .*no-such-layer: No such file or directory/);
  });

  it('pid 1 reaps orphans: a reparented child that exits leaves no zombie', async () => {
    const script = [
      `sh -c 'sleep 0.3 & echo $! > /tmp/orphan'`,
      'pid=$(cat /tmp/orphan)',
      `echo ppid=$(awk '/^PPid/ {print $2}' /proc/$pid/status)`,
      'sleep 0.8',
      `echo zombies=$(grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l)`,
      'test -e /proc/$pid && echo orphan=present || echo orphan=gone',
      'echo mypid=$$',
    ].join('; ');
    const r = await drive(ws, 'runOnce', { config: baseConfig(ws), process: shell(script) });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('ppid=1\n');
    expect(r.stdout).toContain('zombies=0\n');
    expect(r.stdout).toContain('orphan=gone\n');
    expect(r.stdout).toContain('mypid=2\n');
  });

  it('forwards SIGTERM from the caller through Node and init to the workload', async () => {
    const argv = [...asUserArgv(driverEnv(ws)), process.execPath, ws.driver, 'runOnce', JSON.stringify({
      config: baseConfig(ws),
      process: shell('trap "echo got-TERM; exit 7" TERM; echo ready; while :; do sleep 0.05; done'),
    })];
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ready line: ${out}`)), 20_000);
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('ready')) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    // setpriv execs into env, which execs node: the child pid is the driver itself.
    child.kill('SIGTERM');
    const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
    expect(out).toContain('got-TERM');
    expect(code).toBe(7);
  });
});

describe('filesystem and hardening', () => {
  it('assembles /proc, /dev, read-only /sys, /tmp, hostname and /etc/hosts, and drops privileges', async () => {
    const script = [
      'hostname',
      'grep -c envybox /etc/hosts',
      'ls /dev | sort | tr "\\n" " "; echo',
      'echo x > /dev/null && head -c 4 /dev/urandom | wc -c',
      'touch /sys/probe 2>/dev/null && echo sys=rw || echo sys=ro',
      `awk '$5 == "/tmp" {print $9}' /proc/self/mountinfo`,
      `awk '$5 == "/workspace" {print $6}' /proc/self/mountinfo`,
      'grep -E "^(NoNewPrivs|CapBnd|CapEff)" /proc/self/status',
      'readlink /dev/ptmx',
    ].join('; ');
    const r = await drive(ws, 'runOnce', { config: baseConfig(ws), process: shell(script) });
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toBe('envybox');
    expect(lines[1]).toBe('1');
    for (const node of ['full', 'null', 'ptmx', 'pts', 'random', 'shm', 'tty', 'urandom', 'zero']) expect(lines[2]).toContain(node);
    expect(lines[3]).toBe('4');
    expect(lines[4]).toBe('sys=ro');
    expect(lines[5]).toBe('tmpfs');
    expect(lines[6]!.split(',')).toEqual(expect.arrayContaining(['rw', 'nosuid', 'nodev']));
    expect(lines).toContain('NoNewPrivs:\t1');
    expect(lines).toContain('CapBnd:\t00000000a80425fb');
    expect(lines).toContain('CapEff:\t0000000000000000');
    expect(lines[lines.length - 1]).toBe('pts/ptmx');
  });

  it('root inside keeps only the Docker default capabilities', async () => {
    const r = await drive(ws, 'runOnce', { config: baseConfig(ws), process: shell('grep -E "^Cap(Bnd|Eff)" /proc/self/status', { root: true }) });
    expect(r.stdout.trim().split('\n')).toEqual(['CapEff:\t00000000a80425fb', 'CapBnd:\t00000000a80425fb']);
  });

  it('read-only binds, tmpfs mounts, and a read-only root without an upper dir', async () => {
    const config = baseConfig(ws, {
      mounts: [
        { type: 'bind', source: join(ws.dir, 'ws'), target: '/ro-ws', readonly: true },
        { type: 'tmpfs', target: '/scratch', size: 1 << 20 },
      ],
    });
    const script = 'touch /ro-ws/x 2>/dev/null && echo ro-ws=rw || echo ro-ws=ro; touch /scratch/x && echo scratch=ok; touch /rootfile 2>/dev/null && echo root=rw || echo root=ro';
    const r = await drive(ws, 'runOnce', { config, process: shell(script) });
    expect(r.stdout.trim().split('\n')).toEqual(['ro-ws=ro', 'scratch=ok', 'root=ro']);
  });

  it('network none has only a working loopback', async () => {
    const script = 'ls /sys/class/net; (echo over-lo | nc -l -p 7777 127.0.0.1 &); sleep 0.2; nc 127.0.0.1 7777 </dev/null; cat /etc/resolv.conf';
    const r = await drive(ws, 'runOnce', { config: baseConfig(ws, { network: 'none' }), process: shell(script) });
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toBe('lo');
    expect(lines[1]).toBe('over-lo');
    expect(lines[2]).toMatch(/^# no network/);
  });

  it('leaves no mounts and no processes behind', async () => {
    const mountsBefore = (await runAsUser('cat', ['/proc/self/mountinfo'])).stdout;
    const r = await drive(ws, 'runOnce', { config: baseConfig(ws), process: shell('sleep 5 & sleep 5 & echo started') });
    expect(r.stdout.trim()).toBe('started');
    const mountsAfter = (await runAsUser('cat', ['/proc/self/mountinfo'])).stdout;
    expect(mountsAfter).toBe(mountsBefore);
    expect(strayProcesses()).toEqual([]);
  });

  it('applies rlimits for resources and warns that cgroups are unavailable', async () => {
    const config = baseConfig(ws, { resources: { pids: 40, memory: 256 << 20 } });
    const r = await drive(ws, 'runOnce', { config, process: shell('ulimit -u; ulimit -d') });
    expect(r.stdout.trim().split('\n')).toEqual(['40', String(256 * 1024)]);
    expect(r.stderr).toMatch(/^envy: warning: cgroup limits are unavailable \(.+\): memory is approximated with RLIMIT_DATA per process, pids with RLIMIT_NPROC$/m);
  });
});

describe('terminal', () => {
  it('gives the workload a pty with job control and window size, driven from a real pty', async () => {
    const script = `
import os, pty, sys, time, select, fcntl, termios, struct, signal
pid, fd = pty.fork()
if pid == 0:
    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack('HHHH', 30, 100, 0, 0))
    os.execvp(sys.argv[1], sys.argv[1:])
def read_until(token, timeout=10):
    buf = b''; end = time.time() + timeout
    while token not in buf and time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try: buf += os.read(fd, 4096)
            except OSError: break
    return buf
out = read_until(b'$ ')
os.write(fd, b'tty; stty size\\n')
out += read_until(b'$ ')
# The kernel signals SIGWINCH to the pty's foreground group (node and envy-ns); envy-ns resizes its pty.
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack('HHHH', 40, 120, 0, 0))
time.sleep(0.3)
os.write(fd, b'echo resized $(stty size)\\n')
out += read_until(b'resized 40 120')
os.write(fd, b'sleep 30\\n'); time.sleep(0.3); os.write(fd, b'\\x03')
out += read_until(b'$ ')
os.write(fd, b'echo after-interrupt; exit 5\\n')
out += read_until(b'NEVER', 3)
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors='replace'))
print('EXIT', os.waitstatus_to_exitcode(status))
`;
    const input = JSON.stringify({ config: baseConfig(ws), process: shell('', { argv: ['/bin/sh'], env: { PATH: '/bin', PS1: '$ ' }, tty: true }) });
    const argv = [...asUserArgv(driverEnv(ws)), '/usr/bin/python3', '-c', script, process.execPath, ws.driver, 'runOnce', input];
    const started = Date.now();
    const r = await collect(argv[0]!, argv.slice(1), {}, undefined, 60_000);
    expect(r.stdout).toMatch(/\/dev\/pts\/\d+/);
    expect(r.stdout).toContain('30 100');
    expect(r.stdout).toContain('resized 40 120');
    expect(r.stdout).toContain('^C');
    expect(r.stdout).toContain('after-interrupt');
    expect(r.stdout).toContain('EXIT 5');
    // Ctrl-C interrupted `sleep 30` instead of waiting it out.
    expect(Date.now() - started).toBeLessThan(20_000);
  });
});

describe('long-lived environments', () => {
  it('start, concurrent execs sharing one environment, status, and stop', async () => {
    const upper = join(ws.dir, 'env-upper');
    const work = join(ws.dir, 'env-work');
    await runAsUser('mkdir', ['-p', upper, work]);
    const config = baseConfig(ws, { rootfs: { layers: [ws.rootfs], upper, work } });
    startedConfigs.push(config);
    const started = await drive(ws, 'start', { config });
    expect(started.code).toBe(0);
    const status = JSON.parse(started.stdout) as { state: string; pid: number };
    expect(status.state).toBe('running');
    // start is idempotent.
    const again = JSON.parse((await drive(ws, 'start', { config })).stdout) as { pid: number };
    expect(again.pid).toBe(status.pid);

    const execs = await Promise.all(
      // Each waits (up to 60 s, not a guess at how long four starts take) until it sees all four marks.
      [1, 2, 3, 4].map((n) =>
        drive(ws, 'exec', {
          config,
          process: shell(`echo ${n} > /tmp/mark-${n}; i=0; while [ "$(ls /tmp | grep -c mark)" -lt 4 ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; ls /tmp | grep -c mark; cat /proc/1/cmdline | tr '\\0' ' '; exit ${n}`),
        }),
      ),
    );
    for (const [i, r] of execs.entries()) {
      expect(r.code).toBe(i + 1);
      // All four see each other's files in the one /tmp: they share the environment.
      expect(r.stdout.split('\n')[0]).toBe('4');
      expect(r.stdout).toContain('envy-ns run');
    }
    // The pid file guards against reuse: a forged start time reads as stopped.
    const statusNow = JSON.parse((await drive(ws, 'status', { config })).stdout) as { state: string };
    expect(statusNow.state).toBe('running');

    // One process that ends on SIGTERM, one that ignores it: stop must still end both.
    await drive(ws, 'exec', { config, process: shell(`(trap '' TERM; exec sleep 1000) > /dev/null 2>&1 & (sleep 1000 > /dev/null 2>&1 &) ; echo spawned`) });
    expect(strayProcesses().length).toBeGreaterThanOrEqual(3);
    const t0 = Date.now();
    const stop = await drive(ws, 'stop', { config, graceMs: 500 });
    expect(stop.code).toBe(0);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(500);
    expect(strayProcesses()).toEqual([]);
    expect(JSON.parse((await drive(ws, 'status', { config })).stdout)).toEqual({ state: 'stopped' });
    const execStopped = await drive(ws, 'exec', { config, process: shell('true') });
    expect(execStopped.code).toBe(199);
    expect(execStopped.stderr).toContain('is not running');
  });

  it('stop is prompt when every process honours SIGTERM', async () => {
    const config = baseConfig(ws);
    startedConfigs.push(config);
    expect((await drive(ws, 'start', { config })).code).toBe(0);
    await drive(ws, 'exec', { config, process: shell('(sleep 1000 > /dev/null 2>&1 &); true') });
    const t0 = Date.now();
    expect((await drive(ws, 'stop', { config, graceMs: 5000 })).code).toBe(0);
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(strayProcesses()).toEqual([]);
  });

  it('a stale pid file (pid reused after a reboot) reads as stopped', async () => {
    const config = baseConfig(ws);
    const dir = join(ws.dir, 'state', 'environments', config.id, 'run');
    // pid 1 exists, but not with this start time.
    await runAsUser('sh', ['-c', `mkdir -p ${dir} && echo '1 12345' > ${dir}/init.pid`]);
    const r = await drive(ws, 'status', { config });
    expect(JSON.parse(r.stdout)).toEqual({ state: 'stopped' });
    expect(existsSync(join(dir, 'init.pid'))).toBe(true);
    expect(testUser()).toBeTruthy();
  });
});
