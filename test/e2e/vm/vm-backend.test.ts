/**
 * backend: vm through the real CLI, as the unprivileged test user: envy up builds a Debian image
 * with the plan's kernel step, makes its ext4 disk, boots it in qemu (TCG here: /dev/kvm on these
 * machines is kvm_pvm, or absent) and talks to envy-agent over virtio-serial. The guest runs the
 * image's kernel, not the host's.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { asUserArgv, collect, envy, envyRoot, runAsUser, userTempDir, waitFor, type RunResult } from '../harness.js';

let project: { path: string; remove: () => void };
/** The host loopback port forwarded to the guest's 8080 (`ports`), free when the test starts. */
let forwarded: number;
let home: { path: string; remove: () => void };
/** The directory env.yaml binds at /data. */
let data: { path: string; remove: () => void };

const run = (args: string[], options: { timeoutMs?: number; input?: string } = {}): Promise<RunResult> =>
  envy(args, { cwd: project.path, env: { ENVY_HOME: home.path, CI: 'true' }, timeoutMs: options.timeoutMs ?? 180_000, ...(options.input !== undefined ? { input: options.input } : {}) });

function ok(result: RunResult): RunResult {
  if (result.code !== 0) throw new Error(`exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`);
  return result;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.startsWith('Z');
  } catch {
    return false;
  }
}

interface StatusRow {
  name: string;
  state: string;
  pid?: number;
  vm?: { arch: string; kernel: string; accel: string };
  supervisor?: string;
  services?: { name: string; state: string; restarts: number; guestPid?: number; pid?: number }[];
}

async function status(): Promise<StatusRow | undefined> {
  const rows = JSON.parse(ok(await run(['status', '--json'])).stdout) as { environments: StatusRow[] };
  return rows.environments.find((r) => r.name === 'vmt');
}

/** One connection to the forwarded port: what the guest sent before closing ('' when nothing answered). */
function fetchForwarded(): Promise<string> {
  return new Promise((resolve) => {
    let text = '';
    const socket = connect(forwarded, '127.0.0.1');
    socket.setTimeout(5000, () => socket.destroy());
    socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
    socket.on('error', () => resolve(text));
    socket.on('close', () => resolve(text));
  });
}

describe('backend: vm (x86_64 guest under qemu)', () => {
  beforeAll(async () => {
    project = userTempDir('envy-vm-');
    home = userTempDir('envy-vm-home-');
    forwarded = await new Promise<number>((resolve) => {
      const probe = createServer().listen(0, '127.0.0.1', () => {
        const { port } = probe.address() as { port: number };
        probe.close(() => resolve(port));
      });
    });
    // A bind source outside the project, so the workspace sync does not carry it too.
    data = userTempDir('envy-vm-data-');
    writeFileSync(join(data.path, 'seed.txt'), 'seeded on the host\n');
    writeFileSync(
      join(project.path, 'env.yaml'),
      [
        'name: vmt',
        'base:',
        '  debian: bookworm',
        'backend:',
        '  type: vm',
        '  memory: 1g',
        '  cpus: 2',
        'hooks:',
        '  onCreate: echo created > /var/tmp/hook',
        'ports:',
        `  - "${forwarded}:8080"`,
        'mounts:',
        '  - {volume: cache, target: /cache}',
        `  - {bind: ${data.path}, target: /data}`,
        '',
      ].join('\n'),
    );
    writeFileSync(join(project.path, 'hello.txt'), 'from the host\n');

    // Bootstrap (~1.5 min), the kernel package (~70 MB), the disk, the first boot.
    ok(await run(['up'], { timeoutMs: 600_000 }));
  }, 620_000);

  afterAll(async () => {
    await run(['down', '--rm']).catch(() => undefined);
    await runAsUser(join(envyRoot(), 'dist/envy-ns'), ['userns', '--', 'rm', '-rf', home.path]).catch(() => undefined);
    home.remove();
    data.remove();
    project.remove();
  });

  test("the guest runs the image's kernel (from env.lock), not the host's", async () => {
    const lock = readFileSync(join(project.path, 'env.lock'), 'utf8');
    const resolved = /resolved: "linux-image-([^"]+)"/.exec(lock)?.[1];
    expect(resolved).toMatch(/^\d+\.\d+\.\d+-\d+-amd64$/);
    const guest = ok(await run(['exec', '--', 'uname', '-r'])).stdout.trim();
    expect(guest).toBe(resolved);
    expect(guest).not.toBe(execFileSync('uname', ['-r']).toString().trim());
    expect(ok(await run(['exec', '--', 'uname', '-m'])).stdout.trim()).toBe('x86_64');
    // The hook ran in the guest, on the guest's disk.
    expect(ok(await run(['exec', '--', 'cat', '/var/tmp/hook'])).stdout).toBe('created\n');
    // The workspace was copied in at boot and belongs to the env user.
    expect(ok(await run(['exec', '--', 'cat', '/workspace/hello.txt'])).stdout).toBe('from the host\n');
    const uid = execFileSync('stat', ['-c', '%u', project.path]).toString().trim();
    expect(ok(await run(['exec', '--', 'stat', '-c', '%u', '/workspace/hello.txt'])).stdout.trim()).toBe(uid);
    const row = await status();
    expect(row?.state).toBe('running');
    expect(row?.vm).toMatchObject({ arch: 'x86_64', kernel: resolved });
    expect(alive(row!.pid!)).toBe(true);
    expect(readFileSync(`/proc/${row!.pid}/cmdline`, 'utf8')).toContain('qemu-system-x86_64');
    // The serial console: envy-init reports what it loaded and mounted.
    expect(ok(await run(['logs', '--vm'])).stdout).toMatch(/\d+ modules loaded and \S+ mounted in \d+ ms/);
  });

  test('exec passes exit codes, signals, stdout/stderr, stdin and the user through', async () => {
    expect((await run(['exec', '--', 'sh', '-c', 'exit 42'])).code).toBe(42);
    expect((await run(['exec', '--', 'sh', '-c', 'kill -TERM $$'])).code).toBe(143);
    const split = await run(['exec', '--', 'sh', '-c', 'echo out; echo err >&2']);
    expect(split.stdout).toBe('out\n');
    expect(split.stderr).toContain('err\n');
    expect(ok(await run(['exec', '--', 'cat'], { input: 'through stdin\n' })).stdout).toBe('through stdin\n');
    const uid = execFileSync('stat', ['-c', '%u', project.path]).toString().trim();
    expect(ok(await run(['exec', '--', 'id', '-u'])).stdout.trim()).toBe(uid);
    expect(ok(await run(['exec', '--root', '--', 'id', '-u'])).stdout.trim()).toBe('0');
    expect((await run(['exec', '--', 'no-such-command-here'])).code).toBe(127);
  });

  test('exec into a running VM becomes the agent client in C: host signals reach the guest process, the port is freed', async () => {
    // The envy process of an exec whose command line holds `marker` (the exec fast path keeps the pid).
    const findExec = async (marker: string): Promise<{ pid: number; exe: string }> => {
      for (let i = 0; i < 400; i++) {
        for (const pid of readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
          try {
            if (!readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(marker)) continue;
            const exe = readlinkSync(`/proc/${pid}/exe`);
            if (exe.endsWith('/envy-vm-exec')) return { pid: Number(pid), exe };
          } catch {
            // gone meanwhile
          }
        }
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      throw new Error(`no envy-vm-exec process running ${marker}`);
    };
    const marker = `marker-${process.pid}-${Date.now()}`;
    const running = run(['exec', '--', 'sh', '-c', `trap "echo got-term; exit 42" TERM; echo ${marker}; sleep 60 & wait`]);
    const client = await findExec(marker);
    expect(client.exe).toBe(join(envyRoot(), 'dist/envy-vm-exec'));
    // SIGTERM to the client on the host is forwarded to the process's group in the guest.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    process.kill(client.pid, 'SIGTERM');
    const result = await running;
    expect(result.code, result.stdout + result.stderr).toBe(42);
    expect(result.stdout).toBe(`${marker}\ngot-term\n`);
    // The port it took is free again: no lock file is left in the VM's run dir.
    const envDir = join(home.path, 'environments', readdirSync(join(home.path, 'environments')).find((name) => name.startsWith('vmt-'))!);
    expect(readdirSync(join(envDir, 'run')).filter((name) => /^port-\d+\.lock$/.test(name))).toEqual([]);
    // The Node client (ENVY_VM_EXEC_NODE=1, also what `envy shell` and hooks use) agrees on codes and output.
    const viaNode = await envy(['exec', '--', 'sh', '-c', 'echo via node; exit 9'], { cwd: project.path, env: { ENVY_HOME: home.path, CI: 'true', ENVY_VM_EXEC_NODE: '1' } });
    expect([viaNode.code, viaNode.stdout]).toEqual([9, 'via node\n']);
  });

  test('ports: a server in the guest is reached from the host on 127.0.0.1 only', async () => {
    // perl-base is in every Debian image; the server answers one connection and exits 0.
    const server = run(['exec', '--', 'perl', '-MIO::Socket::INET', '-e', '$s = IO::Socket::INET->new(LocalAddr => "0.0.0.0", LocalPort => 8080, Listen => 1, ReuseAddr => 1) or die "listen: $!"; $c = $s->accept; print $c "hello from the guest\\n"; close $c']);
    // qemu accepts on the host side at once and drops the connection until the guest listens.
    let answer = '';
    for (let i = 0; i < 240 && !answer.includes('hello'); i++) {
      answer = await fetchForwarded();
      if (!answer.includes('hello')) await new Promise((resolve) => setTimeout(resolve, 250));
    }
    expect(answer).toBe('hello from the guest\n');
    expect(ok(await server).code).toBe(0);
    // Every listening socket on that port is qemu's, on loopback (the 4th column: the local address).
    const local = execFileSync('ss', ['-ltnH', `sport = :${forwarded}`]).toString().trim().split('\n').map((line) => line.trim().split(/\s+/)[3]);
    expect(local).toEqual([`127.0.0.1:${forwarded}`]);
  });

  test('a shell on a real terminal: pty of the local size, resize, keystrokes, exit status', async () => {
    const script = 'tty; stty size; echo READY; read line; stty size; echo "got:$line"; exit 3';
    const argv = [...asUserArgv({ ENVY_HOME: home.path, CI: 'true' }), process.execPath, join(envyRoot(), 'bin/envy.js'), 'exec', '--', 'sh', '-c', script];
    const result = spawnSync('python3', [join(import.meta.dirname, 'pty-driver.py'), 'READY', 'typed\r', ...argv], { cwd: project.path, encoding: 'utf8', timeout: 90_000 });
    const lines = result.stdout.split(/\r*\n/);
    expect(result.status, result.stdout + result.stderr).toBe(3);
    expect(lines[0]).toMatch(/^\/dev\/pts\/\d+$/);
    expect(lines[1]).toBe('30 100');
    expect(lines).toContain('50 132');
    expect(lines).toContain('got:typed');
  });

  test('shells and execs share the running VM: two shells held open on real terminals while execs come and go', async () => {
    const shellArgv = (name: string): string[] => [
      ...asUserArgv({ ENVY_HOME: home.path, CI: 'true' }),
      process.execPath,
      join(envyRoot(), 'bin/envy.js'),
      'exec',
      '--',
      'sh',
      '-c',
      // Open until an exec from outside creates the gate: the execs must run while both shells live.
      `touch /tmp/open-${name}; echo READY; while [ ! -e /tmp/gate ]; do sleep 0.1; done; read line; echo "${name}:$line"; exit ${name === 'a' ? 3 : 4}`,
    ];
    const shell = (name: string) => collect('python3', [join(import.meta.dirname, 'pty-driver.py'), 'READY', `typed-${name}\r`, ...shellArgv(name)], { cwd: project.path }, undefined, 150_000);
    const shells = [shell('a'), shell('b')];
    const bothOpen = async (): Promise<boolean> => (await run(['exec', '--', 'sh', '-c', 'test -e /tmp/open-a && test -e /tmp/open-b'])).code === 0;
    for (let i = 0; i < 240 && !(await bothOpen()); i++) await new Promise((resolve) => setTimeout(resolve, 250));
    expect(await bothOpen()).toBe(true);
    // Several execs at once beside the two shells, each with its own exit code and output.
    const execs = await Promise.all([1, 2, 3, 4].map((n) => run(['exec', '--', 'sh', '-c', `sleep 0.5; echo run-${n}; exit ${10 + n}`])));
    expect(execs.map((r) => [r.code, r.stdout])).toEqual([1, 2, 3, 4].map((n) => [10 + n, `run-${n}\n`]));
    ok(await run(['exec', '--', 'touch', '/tmp/gate']));
    const [a, b] = await Promise.all(shells);
    expect(a!.code, a!.stdout + a!.stderr).toBe(3);
    expect(b!.code, b!.stdout + b!.stderr).toBe(4);
    expect(a!.stdout).toContain('a:typed-a');
    expect(b!.stdout).toContain('b:typed-b');
    ok(await run(['exec', '--root', '--', 'rm', '-f', '/tmp/gate', '/tmp/open-a', '/tmp/open-b']));
  });

  test('volumes and binds from env.yaml are kept live in the guest both ways, like the workspace', async () => {
    const uid = execFileSync('stat', ['-c', '%u', project.path]).toString().trim();
    expect(ok(await run(['exec', '--', 'cat', '/data/seed.txt'])).stdout).toBe('seeded on the host\n');
    expect(ok(await run(['exec', '--', 'stat', '-c', '%u', '/data', '/cache'])).stdout.trim().split('\n')).toEqual([uid, uid]);
    // A host edit arrives with no command run.
    writeFileSync(join(data.path, 'seed.txt'), 'edited on the host\n');
    await waitFor('the host edit in the guest', async () => (await run(['exec', '--', 'cat', '/data/seed.txt'])).stdout === 'edited on the host\n', 30_000);
    // Files written in the guest come back: to the bind's source, and to the volume's directory on
    // the host, so the volume outlives a fresh disk (a new image) as a namespace volume does.
    ok(await run(['exec', '--', 'sh', '-c', 'echo from the guest > /data/made-in-guest; echo cached > /cache/made-in-guest']));
    const volume = execFileSync('sh', ['-c', `ls -d ${join(home.path, 'environments')}/vmt-*/volumes/cache`]).toString().trim();
    await waitFor('the guest files on the host', () => existsSync(join(data.path, 'made-in-guest')) && existsSync(join(volume, 'made-in-guest')), 30_000);
    expect(readFileSync(join(data.path, 'made-in-guest'), 'utf8')).toBe('from the guest\n');
    expect(readFileSync(join(volume, 'made-in-guest'), 'utf8')).toBe('cached\n');
    ok(await run(['exec', '--', 'rm', '/data/made-in-guest']));
    ok(await run(['sync', '--flush']));
    await waitFor('the guest deletion on the host', () => !existsSync(join(data.path, 'made-in-guest')), 30_000);
  });

  test('services in the guest: up starts them, ports reach them, status and logs show them, a killed one restarts, down stops them', async () => {
    const specWithout = readFileSync(join(project.path, 'env.yaml'), 'utf8');
    // perl-base is in every Debian image: a server that answers every connection with its pid.
    writeFileSync(
      join(project.path, 'server.pl'),
      'use IO::Socket::INET; $| = 1;\n$s = IO::Socket::INET->new(LocalAddr => "0.0.0.0", LocalPort => 8080, Listen => 5, ReuseAddr => 1) or die "listen: $!";\nprint "listening as $$\\n";\nwhile ($c = $s->accept) { print $c "hello from $ENV{GREETING} pid $$\\n"; close $c }\n',
    );
    writeFileSync(
      join(project.path, 'env.yaml'),
      specWithout +
        [
          'services:',
          '  web:',
          '    run: echo "uid=$(id -u) cwd=$(pwd) greeting=$GREETING"; exec perl server.pl',
          '    env: {GREETING: envy}',
          '    restart: always',
          '    stopGrace: 3s',
          `    ready: {run: "bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080'", interval: 200ms, timeout: 60s}`,
          '  tick:',
          '    run: while true; do echo tick; sleep 1; done',
          '',
        ].join('\n'),
    );
    const vmPid = (await status())!.pid!;
    // The server reaches /workspace through the live sync.
    ok(await run(['sync', '--flush']));
    const started = ok(await run(['up']));
    // Only services changed: the VM kept running, the services started in it.
    expect(started.stdout).toContain('services changed: web (new), tick (new); the rest keep running');
    expect(started.stdout).toMatch(/services: web ready, tick running/);
    let row = (await status())!;
    expect(row.pid).toBe(vmPid);
    expect(row.supervisor).toBe('running');
    const web = () => row.services!.find((s) => s.name === 'web')!;
    expect(web()).toMatchObject({ state: 'ready', restarts: 0 });
    expect(web().pid).toBeUndefined();
    const first = web().guestPid!;
    expect(first).toBeGreaterThan(1);
    // `up` has exited: the service still answers through `ports`, from the process status names.
    expect(await fetchForwarded()).toBe(`hello from envy pid ${first}\n`);
    const uid = execFileSync('stat', ['-c', '%u', project.path]).toString().trim();
    const log = ok(await run(['logs', 'web'])).stdout;
    expect(log).toContain(`uid=${uid} cwd=/workspace greeting=envy\n`);
    expect(log).toContain(`listening as ${first}\n`);
    expect(log).toMatch(/\[envy\] ready \(bash -c/);
    expect(ok(await run(['logs'])).stdout).toMatch(/^tick \| tick$/m);
    expect(ok(await run(['status'])).stdout).toMatch(/services: web ready, tick running/);

    // Killed in the guest: restarted (restart: always), ready again under a new pid.
    ok(await run(['exec', '--root', '--', 'sh', '-c', `kill -KILL ${first}`]));
    await waitFor('web restarted and ready', async () => {
      row = (await status())!;
      return web().restarts === 1 && web().state === 'ready' && web().guestPid !== first;
    }, 90_000);
    const second = web().guestPid!;
    expect(await fetchForwarded()).toBe(`hello from envy pid ${second}\n`);
    expect(ok(await run(['logs', 'web'])).stdout).toMatch(/\[envy\] exited with code 137; restarting in 500 ms \(restart: always\)/);

    // A SIGKILLed supervisor takes its services with it (the agent ends what its connection
    // started); `up` starts a new one and the services again.
    const runDir = execFileSync('sh', ['-c', `ls -d ${join(home.path, 'environments')}/vmt-*/run`]).toString().trim();
    const supervisorPid = Number((JSON.parse(readFileSync(join(runDir, 'supervisor.lock'), 'utf8')) as { pid: number }).pid);
    process.kill(supervisorPid, 'SIGKILL');
    await waitFor('the supervisor to die', () => !alive(supervisorPid));
    await waitFor('the guest to end the service', async () => (await run(['exec', '--', 'sh', '-c', `kill -0 ${second}`])).code !== 0, 30_000);
    row = (await status())!;
    expect(row.supervisor).toBe('stopped');
    expect(web().state).toBe('stopped');
    const again = ok(await run(['up']));
    expect(again.stdout).toContain('the service supervisor was not running: services restarted');
    row = (await status())!;
    expect(row.pid).toBe(vmPid);
    expect(web().state).toBe('ready');
    const third = web().guestPid!;
    expect(await fetchForwarded()).toBe(`hello from envy pid ${third}\n`);

    // down: services stop in reverse file order, with SIGTERM, then the VM.
    const newSupervisor = Number((JSON.parse(readFileSync(join(runDir, 'supervisor.lock'), 'utf8')) as { pid: number }).pid);
    ok(await run(['down']));
    expect(alive(newSupervisor)).toBe(false);
    expect(alive(vmPid)).toBe(false);
    const combined = ok(await run(['logs'])).stdout;
    const tail = combined.slice(combined.lastIndexOf('web | [envy] ready'));
    expect(tail.indexOf('tick | [envy] stopping')).toBeGreaterThan(-1);
    expect(tail.indexOf('tick | [envy] stopping')).toBeLessThan(tail.indexOf('web | [envy] stopping'));
    expect(tail).toContain('web | [envy] stopped (exit code 143)');
    row = (await status())!;
    expect(row.state).toBe('stopped');
    expect(row.services!.map((s) => s.state)).toEqual(['stopped', 'stopped']);
    expect(await fetchForwarded()).toBe('');
    writeFileSync(join(project.path, 'env.yaml'), specWithout);
  });

  test('down keeps the disk, up resumes it; killing envy mid-boot leaves no qemu behind', async () => {
    ok(await run(['exec', '--root', '--', 'sh', '-c', 'echo kept > /var/tmp/state']));
    const before = (await status())!.pid!;
    ok(await run(['down']));
    expect(alive(before)).toBe(false);
    expect((await status())?.state).toBe('stopped');

    // SIGKILL envy while the VM boots: the next look at the environment kills the orphan.
    const argv = [join(envyRoot(), 'bin/envy.js'), 'up'];
    // Booting the kernel, not resuming the saved boot state: a resumed boot can be ready before the kill.
    const pending = collect('sh', ['-c', `exec "$@"`, 'sh', ...asUserArgv({ ENVY_HOME: home.path, CI: 'true', ENVY_VM_SNAPSHOT: '0' }), process.execPath, ...argv], { cwd: project.path }, undefined, 180_000);
    const stateFile = join(home.path, 'environments');
    let qemuPid: number | undefined;
    for (let i = 0; i < 600 && qemuPid === undefined; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      const dir = execFileSync('sh', ['-c', `ls -d ${stateFile}/vmt-*/run 2>/dev/null || true`]).toString().trim();
      const file = dir ? join(dir, 'vm.json') : '';
      if (file && existsSync(file)) qemuPid = (JSON.parse(readFileSync(file, 'utf8')) as { pid: number }).pid;
    }
    expect(qemuPid).toBeDefined();
    const envyPid = execFileSync('sh', ['-c', `pgrep -u ${execFileSync('stat', ['-c', '%u', project.path]).toString().trim()} -f "bin/envy.js up" | head -n1`]).toString().trim();
    execFileSync('kill', ['-KILL', envyPid]);
    await pending;
    expect((await status())?.state).toBe('stopped');
    expect(alive(qemuPid!)).toBe(false);

    writeFileSync(join(project.path, 'hello.txt'), 'edited while down\n');
    ok(await run(['up']));
    expect(ok(await run(['exec', '--', 'cat', '/var/tmp/state'])).stdout).toBe('kept\n');
    expect(ok(await run(['exec', '--', 'cat', '/workspace/hello.txt'])).stdout).toBe('edited while down\n');
    // onCreate ran once: the disk kept the environment across boots.
    expect(ok(await run(['exec', '--', 'cat', '/var/tmp/hook'])).stdout).toBe('created\n');
    // A fresh disk (as after a new image): the guest's own state is gone, the volume's files come
    // back from its host directory (written there by the guest in the volumes test).
    ok(await run(['down']));
    rmSync(join(execFileSync('sh', ['-c', `ls -d ${stateFile}/vmt-*/vm`]).toString().trim(), 'disk.qcow2'));
    ok(await run(['up']));
    expect((await run(['exec', '--', 'test', '-e', '/var/tmp/state'])).code).toBe(1);
    expect(ok(await run(['exec', '--', 'cat', '/cache/made-in-guest'])).stdout).toBe('cached\n');
    const last = (await status())!.pid!;
    ok(await run(['down', '--rm']));
    expect(alive(last)).toBe(false);
    expect(ok(await run(['status'])).stdout).not.toContain('vmt');
  });

  test('backend.kernel as a kernel file of the project boots that kernel; gc collects VM disks no environment uses', async () => {
    // The kernel: the vmlinux envy unpacked from Debian's package for the first environment (removed
    // by now, its VM disk still cached), and its modules, which the second image carries in
    // /lib/modules/RELEASE through `files`.
    const release = /resolved: "linux-image-([^"]+)"/.exec(readFileSync(join(project.path, 'env.lock'), 'utf8'))![1]!;
    const images = join(home.path, 'vm/images');
    const [firstImage] = readdirSync(images).filter((name) => !name.startsWith('.') && !name.endsWith('.lock'));
    const other = userTempDir('envy-vm-kfile-');
    const uid = execFileSync('stat', ['-c', '%u:%g', project.path]).toString().trim();
    try {
      mkdirSync(join(other.path, 'modules'));
      copyFileSync(join(images, firstImage!, 'kernel'), join(other.path, 'vmlinux'));
      for (const name of readdirSync(join(images, firstImage!, 'modules'))) copyFileSync(join(images, firstImage!, 'modules', name), join(other.path, 'modules', name.replace(/^\d+-/, '')));
      writeFileSync(
        join(other.path, 'env.yaml'),
        ['name: vmk', 'base:', '  debian: bookworm', 'backend:', '  type: vm', '  kernel: vmlinux', '  memory: 512m', 'network: none', 'files:', `  - {src: modules, dest: /lib/modules/${release}/kernel/envy}`, ''].join('\n'),
      );
      execFileSync('chown', ['-R', uid, other.path]);
      const inOther = (args: string[]) => envy(args, { cwd: other.path, env: { ENVY_HOME: home.path, CI: 'true' }, timeoutMs: 300_000 });
      ok(await inOther(['up']));
      const lock = readFileSync(join(other.path, 'env.lock'), 'utf8');
      expect(lock).toContain('file: "vmlinux"');
      expect(lock).toMatch(/digest: "sha256:[0-9a-f]{64}"/);
      expect(lock).not.toContain('linux-image');
      expect(ok(await inOther(['exec', '--', 'uname', '-r'])).stdout.trim()).toBe(release);
      const rows = JSON.parse(ok(await inOther(['status', '--json'])).stdout) as { environments: StatusRow[] };
      expect(rows.environments.find((r) => r.name === 'vmk')?.vm?.kernel).toBe(release);
      const vmImages = readdirSync(images).filter((name) => !name.startsWith('.') && !name.endsWith('.lock'));
      const secondImage = vmImages.find((name) => name !== firstImage);
      expect(secondImage).toBeDefined();

      // While the second environment exists (stopped), gc keeps its VM disk; the first one's goes
      // (its environment was removed). Once the second is removed too, its disk goes as well.
      ok(await inOther(['down']));
      const first = JSON.parse(ok(await run(['gc', '--grace', '0', '--json'])).stdout) as { vmImages: string[] };
      expect(first.vmImages).toEqual([firstImage]);
      expect(existsSync(join(images, firstImage!))).toBe(false);
      expect(existsSync(join(images, secondImage!, 'rootfs.raw'))).toBe(true);
      ok(await inOther(['down', '--rm']));
      const second = JSON.parse(ok(await run(['gc', '--grace', '0', '--json'])).stdout) as { vmImages: string[] };
      expect(second.vmImages).toEqual([secondImage]);
      expect(existsSync(join(images, secondImage!))).toBe(false);
    } finally {
      await envy(['down', '--rm'], { cwd: other.path, env: { ENVY_HOME: home.path, CI: 'true' }, timeoutMs: 60_000 }).catch(() => undefined);
      other.remove();
    }
  });
});
