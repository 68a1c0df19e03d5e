import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { hostArch } from '../../../src/config/normalize.js';
import type { EnvSpec } from '../../../src/config/types.js';
import { loadText, MINIMAL } from './helpers.js';

async function spec(yaml: string, env: Record<string, string> = {}): Promise<EnvSpec> {
  return (await loadText(yaml, { env })).spec;
}

describe('env.yaml normalization', () => {
  it('fills every default for a minimal file', async () => {
    expect(await spec(MINIMAL)).toEqual({
      name: 'demo',
      base: { kind: 'host' },
      packages: { apt: [], npm: [], pip: [] },
      env: {},
      files: [],
      setup: [],
      user: { shell: '/bin/sh' },
      workdir: '/workspace',
      workspace: { path: '/workspace', sync: 'bind', direction: 'two-way', ignore: [] },
      mounts: [],
      ports: [],
      services: [],
      hooks: { onCreate: [], postStart: [], postAttach: [] },
      network: 'host',
      resources: {},
      backend: { type: 'namespace' },
    } satisfies EnvSpec);
  });

  it('reads every base kind', async () => {
    expect((await spec('name: a\nbase: {debian: bookworm, snapshot: 20240101T000000Z, mirror: "http://deb.debian.org/debian/"}\n')).base).toEqual({
      kind: 'debian',
      suite: 'bookworm',
      snapshot: '20240101T000000Z',
      mirror: 'http://deb.debian.org/debian',
    });
    const digest = 'a'.repeat(64);
    expect((await spec(`name: a\nbase: {image: "ghcr.io/org/tool:1.2@sha256:${digest}"}\n`)).base).toEqual({ kind: 'image', ref: `ghcr.io/org/tool:1.2@sha256:${digest}` });
    expect((await spec('name: a\nbase: {image: "127.0.0.1:5000/tools/base"}\n')).base).toEqual({ kind: 'image', ref: '127.0.0.1:5000/tools/base' });
    expect((await spec('name: a\nbase: {oci: ./images/../images/base.tar}\n')).base).toEqual({ kind: 'oci', path: 'images/base.tar' });
  });

  it('expands the shorthand forms', async () => {
    const result = await spec(
      [
        MINIMAL,
        'setup: ["make"]',
        'user: dev',
        'workspace: /src/',
        'ports: [3000, "8080:80", "5353:53/udp", {container: 5432, host: 15432}, {container: 9000, protocol: udp}]',
        'services:',
        '  web: npm start',
        '  db:',
        '    run: postgres',
        '    ready: pg_isready',
        'hooks:',
        '  onCreate: npm ci',
        '  postStart: [a, b]',
        'backend: vm',
      ].join('\n'),
    );
    expect(result.setup).toEqual([{ run: 'make', inputs: [], shell: ['/bin/sh', '-c'], user: 'root' }]);
    expect(result.user).toEqual({ name: 'dev', shell: '/bin/sh' });
    expect(result.workspace.path).toBe('/src');
    expect(result.workdir).toBe('/src');
    expect(result.ports).toEqual([
      { container: 3000, host: 3000, protocol: 'tcp' },
      { container: 80, host: 8080, protocol: 'tcp' },
      { container: 53, host: 5353, protocol: 'udp' },
      { container: 5432, host: 15432, protocol: 'tcp' },
      { container: 9000, host: 9000, protocol: 'udp' },
    ]);
    expect(result.services).toEqual([
      { name: 'web', run: 'npm start', restart: 'on-failure', env: {}, stopGrace: 10_000 },
      { name: 'db', run: 'postgres', restart: 'on-failure', env: {}, stopGrace: 10_000, ready: { run: 'pg_isready', interval: 1000, timeout: 60_000 } },
    ]);
    expect(result.hooks).toEqual({ onCreate: ['npm ci'], postStart: ['a', 'b'], postAttach: [] });
    expect(result.backend).toEqual({ type: 'vm', arch: hostArch(), memory: 2 * 1024 ** 3, cpus: 2 });
  });

  it('converts sizes and durations', async () => {
    const result = await spec(
      [
        MINIMAL,
        'resources: {memory: 2g, pids: 512, cpus: 0.5}',
        'mounts:',
        '  - {tmpfs: /tmp, size: 512m}',
        '  - {tmpfs: /run, size: 1.5GiB}',
        '  - {tmpfs: /t2, size: 4096}',
        'services:',
        '  api:',
        '    run: ./serve',
        '    stopGrace: 2m',
        '    ready: {run: curl -f localhost, interval: 500ms, timeout: 1.5s}',
        'backend: {type: vm, arch: amd64, memory: 4G, cpus: 4, kernel: 6.1.0-18}',
      ].join('\n'),
    );
    expect(result.resources).toEqual({ memory: 2 * 1024 ** 3, pids: 512, cpus: 0.5 });
    expect(result.mounts).toEqual([
      { type: 'tmpfs', target: '/tmp', size: 512 * 1024 ** 2 },
      { type: 'tmpfs', target: '/run', size: 1.5 * 1024 ** 3 },
      { type: 'tmpfs', target: '/t2', size: 4096 },
    ]);
    expect(result.services[0]).toMatchObject({ stopGrace: 120_000, ready: { interval: 500, timeout: 1500 } });
    expect(result.backend).toEqual({ type: 'vm', arch: 'x86_64', memory: 4 * 1024 ** 3, cpus: 4, kernel: '6.1.0-18' });
  });

  it('maps the arm64 alias', async () => {
    expect((await spec(MINIMAL + 'backend: {type: vm, arch: arm64, kernel: 6.1.0-18}\n')).backend).toEqual({
      type: 'vm',
      arch: 'aarch64',
      memory: 2 * 1024 ** 3,
      cpus: 2,
      kernel: '6.1.0-18',
    });
  });

  it('keeps env values as written and in file order', async () => {
    const result = await spec(MINIMAL + 'env:\n  ZED: z\n  VERSION: 1.10\n  OCTAL: 0755\n  FLAG: yes\n  ON: true\n  QUOTED: "007"\n');
    expect(result.env).toEqual({ ZED: 'z', VERSION: '1.10', OCTAL: '0755', FLAG: 'yes', ON: 'true', QUOTED: '007' });
    expect(Object.keys(result.env)).toEqual(['ZED', 'VERSION', 'OCTAL', 'FLAG', 'ON', 'QUOTED']);
  });

  it('reads file modes in octal however YAML typed them', async () => {
    const result = await spec(MINIMAL + 'files:\n  - {src: a, dest: /a, mode: 0755}\n  - {src: b, dest: /b/, mode: "644"}\n  - {src: c, dest: /c, mode: 0o4755}\n  - {src: d/, dest: /d}\n');
    expect(result.files).toEqual([
      { src: 'a', dest: '/a', mode: '0755' },
      { src: 'b', dest: '/b/', mode: '0644' },
      { src: 'c', dest: '/c', mode: '4755' },
      { src: 'd', dest: '/d' },
    ]);
  });

  it('reads setup steps with every option', async () => {
    const result = await spec(
      MINIMAL +
        'setup:\n  - name: deps\n    run: npm ci\n    inputs: [package.json, "src/**/*.ts"]\n    shell: bash\n    user: user\n  - run: x\n    shell: "bash -euo pipefail -c"\n  - run: y\n    shell: [/usr/bin/env, python3, -c]\n',
    );
    expect(result.setup).toEqual([
      { name: 'deps', run: 'npm ci', inputs: ['package.json', 'src/**/*.ts'], shell: ['bash', '-c'], user: 'user' },
      { run: 'x', inputs: [], shell: ['bash', '-euo', 'pipefail', '-c'], user: 'root' },
      { run: 'y', inputs: [], shell: ['/usr/bin/env', 'python3', '-c'], user: 'root' },
    ]);
  });

  it('reads mounts, keeping bind sources symbolic', async () => {
    const result = await spec(MINIMAL + 'mounts:\n  - {volume: cache, target: /cache/}\n  - {bind: ~/.ssh, target: /home/dev/.ssh, readonly: true}\n  - {bind: ./data/../data, target: /data}\n');
    expect(result.mounts).toEqual([
      { type: 'volume', name: 'cache', target: '/cache', readonly: false },
      { type: 'bind', source: '~/.ssh', target: '/home/dev/.ssh', readonly: true },
      { type: 'bind', source: 'data', target: '/data', readonly: false },
    ]);
  });

  it('reads the object forms of user and workspace', async () => {
    const result = await spec(MINIMAL + 'user: {name: dev, uid: 1000, gid: 1000, home: /home/dev/, shell: /bin/bash}\nworkspace: {path: /src, sync: watch, direction: one-way, ignore: [node_modules/]}\nworkdir: /src/app\nnetwork: private\n');
    expect(result.user).toEqual({ name: 'dev', uid: 1000, gid: 1000, home: '/home/dev', shell: '/bin/bash' });
    expect(result.workspace).toEqual({ path: '/src', sync: 'watch', direction: 'one-way', ignore: ['node_modules/'] });
    expect(result.workdir).toBe('/src/app');
    expect(result.network).toBe('private');
  });

  it('accepts env.yaml with a BOM, CRLF line ends and the core YAML tags', async () => {
    expect((await spec('\ufeffname: demo\r\nbase: {host: true}\r\nenv: {A: !!str 5}\r\n')).env).toEqual({ A: '5' });
  });

  it('records the source file, its directory and the sha256 of its bytes', async () => {
    const { source } = await loadText(MINIMAL);
    expect(source.file.endsWith('/env.yaml')).toBe(true);
    expect(source.dir).toBe(source.file.slice(0, -'/env.yaml'.length));
    expect(source.digest).toBe(createHash('sha256').update(MINIMAL).digest('hex'));
    expect(source.digest).toMatch(/^[0-9a-f]{64}$/);
  });
});
