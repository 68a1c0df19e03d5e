/**
 * `envy devcontainer` end to end, as the unprivileged test user: build from a small OCI layout base
 * (the host's static busybox), write .devcontainer/devcontainer.json and the image archive, load it
 * into rootless podman, and do what a Dev Containers client does with the file: create the container
 * from `image` with `workspaceMount`, `runArgs`, `containerEnv` and `remoteUser`, then run
 * `postCreateCommand` in `workspaceFolder`.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { DevContainerJson } from '../../../src/env/devcontainer.js';
import { envy, envyRoot, isRoot, runAsUser, testUser, userTempDir, type RunResult } from '../harness.js';
import { writeImage, writeIndex } from '../image/fixtures.js';

let project: { path: string; remove: () => void };
let home: { path: string; remove: () => void };
let podmanHome: string;

const ENV = (): Record<string, string> => ({ ENVY_HOME: home.path, CI: 'true', HOME: podmanHome, XDG_RUNTIME_DIR: join(podmanHome, 'run') });
const run = (args: string[], timeoutMs = 300_000): Promise<RunResult> => envy(args, { cwd: project.path, env: ENV(), timeoutMs });
const podman = (args: string[], timeoutMs = 120_000): Promise<RunResult> => runAsUser('podman', args, { env: ENV(), timeoutMs });

function ok(result: RunResult): RunResult {
  if (result.code !== 0) throw new Error(`exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`);
  return result;
}

const APPLETS = ['sh', 'cat', 'ls', 'echo', 'id', 'test', 'grep', 'mkdir', 'chown', 'env', 'pwd', 'touch', 'sleep'];

describe('envy devcontainer', () => {
  beforeAll(async () => {
    project = userTempDir('envy-devc-');
    home = userTempDir('envy-devc-home-');
    podmanHome = join(home.path, 'podman-home');
    mkdirSync(join(podmanHome, '.config/containers'), { recursive: true });
    mkdirSync(join(podmanHome, 'run'), { mode: 0o700 });
    writeFileSync(join(podmanHome, '.config/containers/storage.conf'), '[storage]\ndriver = "overlay"\n');
    const busybox = readFileSync('/usr/bin/busybox');
    const layout = join(project.path, 'layout');
    const image = await writeImage(
      layout,
      [
        {
          compression: 'gzip',
          entries: [
            { name: 'bin/', type: 'directory' },
            { name: 'bin/busybox', content: busybox, mode: 0o755 },
            ...APPLETS.map((applet) => ({ name: `bin/${applet}`, type: 'symlink' as const, linkname: 'busybox' })),
            { name: 'tmp/', type: 'directory', mode: 0o1777 },
            { name: 'home/', type: 'directory' },
            { name: 'etc/', type: 'directory' },
            { name: 'etc/passwd', content: 'root:x:0:0:root:/root:/bin/sh\n' },
            { name: 'etc/group', content: 'root:x:0:\n' },
          ],
        },
      ],
      { env: ['PATH=/bin'], cmd: ['/bin/sh'] },
    );
    writeIndex(layout, [{ image, tag: 'v1', platform: { os: 'linux', architecture: 'amd64' } }]);
    writeFileSync(
      join(project.path, 'env.yaml'),
      [
        'name: devc',
        'base: {oci: ./layout}',
        'env: {GREETING: "hi there"}',
        'ports: [3000]',
        'hooks:',
        '  onCreate:',
        '    - echo "created $GREETING by $(id -un) in $(pwd)" > made-by-postcreate',
        '    - echo second >> made-by-postcreate',
        '',
      ].join('\n'),
    );
    if (isRoot()) execFileSync('chown', ['-R', `${testUser()}:`, project.path, home.path]);
  });
  afterAll(async () => {
    await podman(['unshare', 'rm', '-rf', join(podmanHome, '.local/share/containers')]).catch(() => undefined);
    await runAsUser(join(envyRoot(), 'dist/envy-ns'), ['userns', '--', 'rm', '-rf', home.path]);
    home.remove();
    project.remove();
  });

  test('writes devcontainer.json and the image; podman runs postCreateCommand as remoteUser in the workspace', async () => {
    const probe = await podman(['info', '--format', '{{.Store.GraphDriverName}}']);
    const withPodman = probe.code === 0;
    if (!withPodman) console.warn(`not loading into podman: rootless podman cannot start here: ${probe.stderr.trim().split('\n').at(-1)}`);
    const out = ok(await run(['devcontainer', ...(withPodman ? ['--load', 'podman'] : [])]));
    expect(out.stdout).toMatch(/^wrote \.devcontainer\/devcontainer\.json \(image localhost\/envy-devc:[0-9a-f]{12}/m);
    const text = readFileSync(join(project.path, '.devcontainer/devcontainer.json'), 'utf8');
    const json = JSON.parse(text.split('\n').filter((l) => !l.startsWith('//')).join('\n')) as DevContainerJson;
    expect(json).toMatchObject({ name: 'devc', remoteUser: testUser(), workspaceFolder: '/workspace', containerEnv: { GREETING: 'hi there' }, forwardPorts: [3000] });
    expect(readFileSync(join(project.path, '.devcontainer/.gitignore'), 'utf8')).toBe('envy-image.tar\n');
    expect(statSync(join(project.path, '.devcontainer/envy-image.tar')).size).toBeGreaterThan(busyboxSize());
    if (!withPodman) return;

    // What a Dev Containers client does with the file (the devcontainer CLI adds --userns=keep-id under podman).
    const runtime = existsSync('/usr/sbin/runc') || existsSync('/usr/bin/runc') ? ['--runtime', 'runc'] : [];
    const mount = json.workspaceMount.replace('${localWorkspaceFolder}', project.path);
    const envArgs = Object.entries(json.containerEnv ?? {}).flatMap(([k, v]) => ['-e', `${k}=${v}`]);
    const created = await podman([
      'run', '--rm', ...runtime, '--userns=keep-id', '--mount', mount, ...(json.runArgs ?? []), ...envArgs,
      '--user', json.remoteUser, '-w', json.workspaceFolder, json.image, '/bin/sh', '-c', json.postCreateCommand!,
    ]);
    expect(created.code, created.stderr).toBe(0);
    const made = join(project.path, 'made-by-postcreate');
    expect(readFileSync(made, 'utf8')).toBe(`created hi there by ${testUser()} in /workspace\nsecond\n`);
    expect(statSync(made).uid).toBe(statSync(project.path).uid);
    ok(await podman(['rmi', json.image]));
  });

  test('an existing devcontainer.json is kept unless --force; --force replaces it atomically', async () => {
    const file = join(project.path, '.devcontainer/devcontainer.json');
    writeFileSync(file, '{"name": "mine"}\n');
    const refused = await run(['devcontainer']);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/^envy: \.devcontainer\/devcontainer\.json exists; envy devcontainer does not overwrite it/m);
    expect(refused.stderr).toContain('hint: pass --force');
    expect(readFileSync(file, 'utf8')).toBe('{"name": "mine"}\n');
    ok(await run(['devcontainer', '--force']));
    expect(readFileSync(file, 'utf8')).toContain('"name": "devc"');
    expect(execFileSync('ls', ['-a', join(project.path, '.devcontainer')], { encoding: 'utf8' }).split('\n').filter((n) => n.includes('tmp'))).toEqual([]);
  });

  test('a host-based environment cannot become a container image: one line, exit 2', async () => {
    const other = userTempDir('envy-devc-host-');
    try {
      writeFileSync(join(other.path, 'env.yaml'), 'name: hosty\nbase: {host: true}\n');
      if (isRoot()) execFileSync('chown', ['-R', `${testUser()}:`, other.path]);
      const result = await envy(['devcontainer'], { cwd: other.path, env: ENV() });
      expect(result.code).toBe(2);
      expect(result.stderr).toMatch(/^envy: hosty is based on the host's \/usr/m);
      expect(existsSync(join(other.path, '.devcontainer/devcontainer.json'))).toBe(false);
    } finally {
      await runAsUser(join(envyRoot(), 'dist/envy-ns'), ['userns', '--', 'rm', '-rf', join(other.path, '.devcontainer')]);
      other.remove();
    }
  });
});

function busyboxSize(): number {
  return statSync('/usr/bin/busybox').size / 2;
}
