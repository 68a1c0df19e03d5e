/**
 * Editors attaching: `envy ssh-config` + `envy attach --stdio` driven by the real OpenSSH client
 * (ssh, scp, sftp) as the unprivileged test user. sshd runs inside the environment in inetd mode;
 * with a host base it is the host's /usr/sbin/sshd, but it runs in the environment's namespaces, as
 * its user, which the assertions check (hostname, workdir, variables, a file only the writable layer has).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { debianHome, envy, envyRoot, isRoot, runAsUser, testUser, userTempDir, type RunResult } from '../harness.js';
import { writeImage, writeIndex } from '../image/fixtures.js';

let project: { path: string; remove: () => void };
let home: { path: string; remove: () => void };
let sshConfig: string;

const ENV = (): Record<string, string> => ({ ENVY_HOME: home.path, CI: 'true' });
const run = (args: string[], timeoutMs = 120_000): Promise<RunResult> => envy(args, { cwd: project.path, env: ENV(), timeoutMs });
// No ENVY_HOME here, as for an editor started from the desktop: ssh-config pinned it in the ProxyCommand.
const ssh = (args: string[], input?: string): Promise<RunResult> =>
  runAsUser('ssh', ['-F', sshConfig, ...args], { cwd: project.path, timeoutMs: 60_000, ...(input !== undefined ? { input } : {}) });

function ok(result: RunResult): RunResult {
  if (result.code !== 0) throw new Error(`exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`);
  return result;
}

function giveToUser(path: string): void {
  if (isRoot()) execFileSync('chown', ['-R', `${testUser()}:`, path]);
}

describe('envy ssh-config and envy attach --stdio with the OpenSSH client', () => {
  beforeAll(async () => {
    project = userTempDir('envy-attach-');
    home = userTempDir('envy-attach-home-');
    writeFileSync(
      join(project.path, 'env.yaml'),
      ['name: attached', 'base: {host: true}', 'env: {GREETING: "hello there", QUOTED: "a \\"b\\" c"}', 'workdir: /workspace/sub', ''].join('\n'),
    );
    execFileSync('mkdir', ['-p', join(project.path, 'sub')]);
    giveToUser(join(project.path, 'sub'));
    const config = ok(await run(['ssh-config']));
    sshConfig = join(project.path, 'ssh_config');
    writeFileSync(sshConfig, config.stdout);
    giveToUser(sshConfig);
  });
  afterAll(async () => {
    await run(['down', '--rm']);
    await runAsUser(join(envyRoot(), 'dist/envy-ns'), ['userns', '--', 'rm', '-rf', home.path]);
    home.remove();
    project.remove();
  });

  test('the entry names a Host, the user, the ProxyCommand and a pinned host key', () => {
    const text = readFileSync(sshConfig, 'utf8');
    expect(text).toMatch(/^Host envy-attached$/m);
    expect(text).toMatch(new RegExp(`^  User ${testUser()}$`, 'm'));
    const proxy = /^ {2}ProxyCommand (.*)$/m.exec(text)![1]!;
    expect(proxy).toMatch(/^\/usr\/bin\/env ENVY_HOME=\S+ \S+node\S* \S+\/bin\/envy\.js attach --stdio --file \S+\/env\.yaml$/);
    expect(proxy).toContain(`ENVY_HOME=${home.path} `);
    expect(text).toMatch(/^ {2}StrictHostKeyChecking yes$/m);
    const knownHosts = /^ {2}UserKnownHostsFile (\S+)$/m.exec(text)![1]!;
    expect(readFileSync(knownHosts, 'utf8')).toMatch(/^envy-attached-[0-9a-f]{8} ssh-ed25519 \S+\n$/);
  });

  test('ssh starts the stopped environment and runs the command inside, as its user, in its workdir, with its env', async () => {
    const before = JSON.parse(ok(await run(['status', '--json'])).stdout) as { environments: { name: string; state: string }[] };
    expect(before.environments.find((e) => e.name === 'attached')?.state ?? 'absent').not.toBe('running');
    const result = ok(await ssh(['envy-attached', 'id -un; pwd; hostname; echo "$GREETING|$QUOTED|$ENVY_ENV"; cat /proc/1/comm']));
    expect(result.stdout).toBe(`${testUser()}\n/workspace/sub\nattached\nhello there|a "b" c|attached\nenvy-ns\n`);
    // Only the environment's writable layer has this file: proof the session runs inside it.
    ok(await run(['exec', '--', 'sh', '-c', 'echo from-the-layer > /var/tmp/marker']));
    expect(ok(await ssh(['envy-attached', 'cat /var/tmp/marker'])).stdout).toBe('from-the-layer\n');
    expect((await ssh(['envy-attached', 'exit 7'])).code).toBe(7);
  });

  test('scp and sftp copy files both ways (the sftp subsystem editors need)', async () => {
    const local = join(project.path, 'local.txt');
    writeFileSync(local, 'copied through scp\n');
    giveToUser(local);
    ok(await runAsUser('scp', ['-F', sshConfig, local, 'envy-attached:/var/tmp/remote.txt'], { cwd: project.path }));
    expect(ok(await ssh(['envy-attached', 'cat /var/tmp/remote.txt'])).stdout).toBe('copied through scp\n');
    const batch = 'get /var/tmp/remote.txt back.txt\nput local.txt /workspace/sub/put.txt\n';
    ok(await runAsUser('sftp', ['-F', sshConfig, '-b', '-', 'envy-attached'], { cwd: project.path, input: batch }));
    expect(readFileSync(join(project.path, 'back.txt'), 'utf8')).toBe('copied through scp\n');
    const put = join(project.path, 'sub/put.txt');
    expect(readFileSync(put, 'utf8')).toBe('copied through scp\n');
    expect(statSync(put).uid).toBe(statSync(project.path).uid);
  });

  test('ssh -tt gets a pty with the environment prompt; the exit code passes', async () => {
    const result = await ssh(['-tt', 'envy-attached'], 'tty; echo "prompt=$PS1"; exit 3\n');
    expect(result.code).toBe(3);
    expect(result.stdout).toMatch(/^\(attached\) \$ \/dev\/pts\/\d+\r?$/m);
    expect(result.stdout).toContain('prompt=(attached) ');
  });

  test('the host key survives down/up (the pinned known_hosts stays valid); parallel connections start one environment', async () => {
    const key = execFileSync('sh', ['-c', `cat ${home.path}/environments/attached-*/inside/ssh_host_ed25519_key.pub`], { encoding: 'utf8' });
    ok(await run(['down']));
    const results = await Promise.all([1, 2, 3].map((n) => ssh(['envy-attached', `echo conn${n}`])));
    for (const [i, r] of results.entries()) expect(ok(r).stdout).toBe(`conn${i + 1}\n`);
    expect(execFileSync('sh', ['-c', `cat ${home.path}/environments/attached-*/inside/ssh_host_ed25519_key.pub`], { encoding: 'utf8' })).toBe(key);
    const status = JSON.parse(ok(await run(['status', '--json'])).stdout) as { environments: { name: string; state: string }[] };
    expect(status.environments.filter((e) => e.name === 'attached').map((e) => e.state)).toEqual(['running']);
  });

  test('an edited env.yaml reaches the next ssh session (sshd files are rewritten, the fast path steps aside)', async () => {
    expect(ok(await ssh(['envy-attached', 'echo "$GREETING"'])).stdout).toBe('hello there\n');
    const file = join(project.path, 'env.yaml');
    writeFileSync(file, readFileSync(file, 'utf8').replace('hello there', 'changed greeting'));
    expect(ok(await ssh(['envy-attached', 'echo "$GREETING"'])).stdout).toBe('changed greeting\n');
    expect(ok(await ssh(['envy-attached', 'echo "$GREETING"'])).stdout).toBe('changed greeting\n');
  });

  test('down --rm after ssh-config alone (never up) forgets the keys', async () => {
    const other = userTempDir('envy-attach-keys-');
    try {
      writeFileSync(join(other.path, 'env.yaml'), 'name: keysonly\nbase: {host: true}\n');
      giveToUser(other.path);
      ok(await envy(['ssh-config'], { cwd: other.path, env: ENV() }));
      const dirs = (): string[] => execFileSync('ls', [join(home.path, 'environments')], { encoding: 'utf8' }).split('\n').filter((d) => d.startsWith('keysonly-'));
      expect(dirs()).toHaveLength(1);
      expect(ok(await envy(['down', '--rm'], { cwd: other.path, env: ENV() })).stdout).toContain('removed');
      expect(dirs()).toEqual([]);
    } finally {
      other.remove();
    }
  });

  test('attach without --stdio is a usage error', async () => {
    const result = await run(['attach']);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^envy: envy attach speaks SSH on stdin\/stdout/m);
  });
});

describe('envy attach on images: a Debian image with openssh-server, and one without sshd', () => {
  let dir: { path: string; remove: () => void };
  let state: { path: string; remove: () => void };
  const ENV2 = (): Record<string, string> => ({ ENVY_HOME: state.path, CI: 'true' });
  const envy2 = (args: string[], cwd: string, timeoutMs = 120_000): Promise<RunResult> => envy(args, { cwd, env: ENV2(), timeoutMs });

  beforeAll(() => {
    dir = userTempDir('envy-attach-img-');
    // The run's shared home: the Debian base is bootstrapped once per run (harness.ts, debianHome).
    state = { path: debianHome(), remove: () => {} };
  });
  afterAll(async () => {
    for (const name of ['deb', 'bare']) if (existsSync(join(dir.path, name, 'env.yaml'))) await envy2(['down', '--rm'], join(dir.path, name));
    await runAsUser(join(envyRoot(), 'dist/envy-ns'), ['userns', '--', 'rm', '-rf', dir.path]);
    dir.remove();
  });

  async function projectWith(name: string, yaml: string): Promise<{ path: string; config: string }> {
    const path = join(dir.path, name);
    mkdirSync(path, { recursive: true });
    writeFileSync(join(path, 'env.yaml'), yaml);
    const config = join(path, 'ssh_config');
    writeFileSync(config, ok(await envy2(['ssh-config', '--host', `envy-${name}`], path)).stdout);
    giveToUser(path);
    return { path, config };
  }

  test('without sshd in the image: ssh shows one line naming env.yaml and the package to add', async () => {
    const layout = join(dir.path, 'bare/layout');
    const image = await writeImage(layout, [
      {
        compression: 'gzip',
        entries: [
          { name: 'bin/', type: 'directory' },
          { name: 'bin/busybox', content: readFileSync('/usr/bin/busybox'), mode: 0o755 },
          ...['sh', 'grep', 'echo', 'mkdir', 'chown'].map((a) => ({ name: `bin/${a}`, type: 'symlink' as const, linkname: 'busybox' })),
          { name: 'etc/', type: 'directory' },
          { name: 'etc/passwd', content: 'root:x:0:0:root:/root:/bin/sh\n' },
          { name: 'etc/group', content: 'root:x:0:\n' },
        ],
      },
    ]);
    writeIndex(layout, [{ image, tag: 'v1', platform: { os: 'linux', architecture: 'amd64' } }]);
    const { path, config } = await projectWith('bare', 'name: bare\nbase: {oci: ./layout}\npackages:\n  apt: []\n');
    const result = await runAsUser('ssh', ['-F', config, 'envy-bare', 'true'], { cwd: path, timeoutMs: 120_000 });
    expect(result.code).toBe(255);
    expect(result.stderr).toMatch(new RegExp(`^envy: ${path}/env\\.yaml:4: packages\\.apt: envy attach needs openssh-server inside the environment$`, 'm'));
    expect(result.stderr).toContain('hint: add openssh-server to packages.apt in env.yaml and run envy up');
  });

  test("a Debian image's own sshd and sftp-server serve ssh, sftp and a pty", async () => {
    const { path, config } = await projectWith('deb', 'name: deb\nbase: {debian: bookworm}\npackages:\n  apt: [openssh-server]\nenv: {FROM_ENV: yes-it-is}\nuser: {shell: /bin/bash}\n');
    ok(await envy2(['up'], path, 600_000));
    const ssh = (args: string[], input?: string): Promise<RunResult> => runAsUser('ssh', ['-F', config, ...args], { cwd: path, timeoutMs: 60_000, ...(input !== undefined ? { input } : {}) });
    const result = ok(await ssh(['envy-deb', 'id -un; pwd; echo $FROM_ENV; cat /etc/debian_version']));
    const [user, pwd, fromEnv, debian] = result.stdout.split('\n');
    expect([user, pwd, fromEnv]).toEqual([testUser(), '/workspace', 'yes-it-is']);
    expect(debian).toMatch(/^12\./);
    const local = join(path, 'up.txt');
    writeFileSync(local, 'via sftp\n');
    giveToUser(local);
    ok(await runAsUser('sftp', ['-F', config, '-b', '-', 'envy-deb'], { cwd: path, input: 'put up.txt /tmp/up.txt\nget /tmp/up.txt down.txt\n' }));
    expect(readFileSync(join(path, 'down.txt'), 'utf8')).toBe('via sftp\n');
    const tty = await ssh(['-tt', 'envy-deb'], 'echo "tty=$(tty)"; exit 4\n');
    expect(tty.code).toBe(4);
    expect(tty.stdout).toMatch(/\(deb\)\S+@deb:\/workspace\$ /);
    expect(tty.stdout).toMatch(/tty=\/dev\/pts\/\d+/);
  }, 900_000);
});
