/**
 * Saved boot state (runtime/vm/snapshot.ts), through the real CLI as the unprivileged test user under
 * TCG: the first boot saves the machine at envy-init's boot gate, later boots resume it instead of
 * booting the kernel, and what must differ per boot does (clock, random pool, boot_id, the disk).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { envy, envyRoot, runAsUser, userTempDir, type RunResult } from '../harness.js';

let project: { path: string; remove: () => void };
let home: { path: string; remove: () => void };
let forwarded: number;

const run = (args: string[], timeoutMs = 240_000): Promise<RunResult> => envy(args, { cwd: project.path, env: { ENVY_HOME: home.path, CI: 'true' }, timeoutMs });

function ok(result: RunResult): RunResult {
  if (result.code !== 0) throw new Error(`exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`);
  return result;
}

const sh = async (script: string): Promise<string> => ok(await run(['exec', '--root', '--', 'sh', '-c', script])).stdout.trim();

function envDir(): string {
  const root = join(home.path, 'environments');
  return join(root, readdirSync(root).find((name) => name.startsWith('vms-'))!);
}

/** What the last boot did with the saved boot state (run/vm.json). */
function bootState(): { use: string; ms?: number } | undefined {
  return (JSON.parse(readFileSync(join(envDir(), 'run/vm.json'), 'utf8')) as { bootState?: { use: string; ms?: number } }).bootState;
}

function snapshots(): string[] {
  const images = join(home.path, 'vm/images');
  return readdirSync(images)
    .filter((name) => existsSync(join(images, name, 'snapshots')))
    .flatMap((name) => readdirSync(join(images, name, 'snapshots')).map((file) => join(images, name, 'snapshots', file)));
}

async function restart(): Promise<void> {
  ok(await run(['down']));
  ok(await run(['up']));
}

/** ext4's mount count (s_mnt_count, at byte 52 of the superblock at 1024) as the guest's kernel has it. */
const mountCount = async (): Promise<number> => Number(await sh('dd if=/dev/vda bs=1024 skip=1 count=1 2>/dev/null | od -An -tu2 -j52 -N2'));

describe('backend: vm, saved boot state (x86_64 under TCG)', () => {
  beforeAll(async () => {
    project = userTempDir('envy-vmsnap-');
    home = userTempDir('envy-vmsnap-home-');
    forwarded = await new Promise<number>((resolve) => {
      const probe = createServer().listen(0, '127.0.0.1', () => {
        const { port } = probe.address() as { port: number };
        probe.close(() => resolve(port));
      });
    });
    writeFileSync(
      join(project.path, 'env.yaml'),
      ['name: vms', 'base:', '  debian: bookworm', 'backend:', '  type: vm', '  memory: 1g', '  cpus: 2', 'ports:', `  - "${forwarded}:8080"`, ''].join('\n'),
    );
    ok(await run(['up'], 900_000));
  }, 920_000);

  afterAll(async () => {
    await run(['down', '--rm']).catch(() => undefined);
    await runAsUser(join(envyRoot(), 'dist/envy-ns'), ['userns', '--', 'rm', '-rf', home.path]).catch(() => undefined);
    home.remove();
    project.remove();
  });

  test('the first boot saves the machine at the gate; the next boots resume it with their own clock, seed and disk', async () => {
    expect(bootState()?.use).toBe('saved');
    const [saved] = snapshots();
    expect(saved).toMatch(/\/vm\/images\/[^/]+\/snapshots\/[0-9a-f]{32}\.vmstate$/);
    const firstBootId = await sh('cat /proc/sys/kernel/random/boot_id');
    const hostname = await sh('hostname');
    await sh('echo kept > /var/tmp/state');

    await restart();
    expect(bootState()?.use).toBe('restored');
    expect(ok(await run(['logs', '--vm'])).stdout).toMatch(/boot gate passed \(restored\)/);
    const release = /resolved: "linux-image-([^"]+)"/.exec(readFileSync(join(project.path, 'env.lock'), 'utf8'))![1]!;
    expect(ok(await run(['exec', '--', 'uname', '-r'])).stdout.trim()).toBe(release);
    // The disk is this environment's (written before down), the hostname its own.
    expect(await sh('cat /var/tmp/state')).toBe('kept');
    expect(await sh('hostname')).toBe(hostname);
    // The wall clock is the host's, not the time of the save; the monotonic clock runs forward.
    const guestNow = Number(await sh('date +%s'));
    expect(Math.abs(guestNow - Date.now() / 1000)).toBeLessThan(10);
    const [up1, up2] = (await sh('cat /proc/uptime; sleep 1; cat /proc/uptime')).split('\n').map((line) => Number(line.split(' ')[0]));
    expect(up2! - up1!).toBeGreaterThanOrEqual(0.9);
    expect(up2! - up1!).toBeLessThan(5);
    const bootId1 = await sh('cat /proc/sys/kernel/random/boot_id');
    const random1 = await sh('head -c 16 /dev/urandom | od -An -tx1');

    await restart();
    expect(bootState()?.use).toBe('restored');
    const bootId2 = await sh('cat /proc/sys/kernel/random/boot_id');
    const random2 = await sh('head -c 16 /dev/urandom | od -An -tx1');
    expect(new Set([firstBootId, bootId1, bootId2]).size).toBe(3);
    expect(random2).not.toBe(random1);
  });

  test('ports and the network work in a resumed VM', async () => {
    expect(bootState()?.use).toBe('restored');
    const server = run(['exec', '--', 'perl', '-MIO::Socket::INET', '-e', '$s = IO::Socket::INET->new(LocalAddr => "0.0.0.0", LocalPort => 8080, Listen => 1, ReuseAddr => 1) or die "listen: $!"; $c = $s->accept; print $c "hello from the guest\\n"; close $c']);
    const fetch = (): Promise<string> =>
      new Promise((resolve) => {
        let text = '';
        const socket = connect(forwarded, '127.0.0.1');
        socket.setTimeout(5000, () => socket.destroy());
        socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
        socket.on('error', () => resolve(text));
        socket.on('close', () => resolve(text));
      });
    let answer = '';
    for (let i = 0; i < 240 && !answer.includes('hello'); i++) {
      answer = await fetch();
      if (!answer.includes('hello')) await new Promise((resolve) => setTimeout(resolve, 250));
    }
    expect(answer).toBe('hello from the guest\n');
    expect(ok(await server).code).toBe(0);
    // eth0 has its address and the default route goes through slirp's gateway.
    expect(await sh('cat /proc/net/route')).toMatch(/eth0\s+00000000\s+0202000A/);
  });

  test('a corrupt saved state falls back to booting the kernel, is said in the VM log and replaced', async () => {
    const [saved] = snapshots();
    const size = statSync(saved!).size;
    // Keep the header, garble the rest: qemu starts loading, then fails.
    execFileSync('sh', ['-c', `dd if=/dev/urandom of='${saved}' bs=4096 seek=1 count=64 conv=notrunc status=none`]);
    await restart();
    expect(bootState()?.use).toBe('saved');
    expect(ok(await run(['logs', '--vm'])).stdout).toMatch(/the saved boot state \S+ did not resume .*booting the kernel and saving it again/);
    expect(await sh('cat /var/tmp/state')).toBe('kept');
    expect(snapshots()).toEqual([saved]);
    expect(Math.abs(statSync(saved!).size - size)).toBeLessThan(size / 2);
    await restart();
    expect(bootState()?.use).toBe('restored');
    expect(await sh('cat /var/tmp/state')).toBe('kept');
  });

  test("down --rm drops the disk; a resumed machine mounts the new disk, not the cached blocks of the saver's", async () => {
    // The last state was saved on a disk mounted several times; the kernel's probe had read its superblock.
    expect(await mountCount()).toBeGreaterThan(2);
    ok(await run(['down', '--rm']));
    ok(await run(['up']));
    expect(bootState()?.use).toBe('restored');
    expect((await run(['exec', '--', 'cat', '/var/tmp/state'])).code).not.toBe(0);
    // A fresh disk from the image: mounted once, not the saver's count. (envy-init drops the disk's
    // cached blocks at the gate; ext4's own mount, switching the device to its 4 KiB block size,
    // invalidates them too, so this also holds without that: docs/vm.md.)
    expect(await mountCount()).toBe(1);
  });

  test('gc removes the saved states with the VM disk they belong to', async () => {
    const [saved] = snapshots();
    ok(await run(['down', '--rm']));
    ok(await run(['gc', '--grace', '0']));
    expect(existsSync(saved!)).toBe(false);
  });
});
