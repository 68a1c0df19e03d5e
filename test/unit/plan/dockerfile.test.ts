import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import type { EnvSpec } from '../../../src/config/types.js';
import { compilePlan } from '../../../src/plan/compile.js';
import { renderDockerfile } from '../../../src/plan/dockerfile.js';
import { lockFromSpec } from '../../../src/plan/lock.js';
import type { EnvLock } from '../../../src/plan/types.js';
import { compile, envyError, FIXTURE_PROJECT, FIXTURES, makeSpec, project, setup } from './helpers.js';

/**
 * Compare with test/fixtures/plan/NAME.Dockerfile. After a deliberate change,
 * regenerate with `UPDATE_GOLDEN=1 npx vitest run test/unit/plan/dockerfile.test.ts`
 * and review the diff.
 */
function expectGolden(name: string, text: string): void {
  const path = join(FIXTURES, `${name}.Dockerfile`);
  if (process.env.UPDATE_GOLDEN === '1') writeFileSync(path, text);
  expect(existsSync(path), `${path} is missing (UPDATE_GOLDEN=1 writes it)`).toBe(true);
  expect(text).toBe(readFileSync(path, 'utf8'));
}

function render(spec: EnvSpec, dir = FIXTURE_PROJECT, lock?: EnvLock): string {
  return renderDockerfile(compile(spec, dir, lock), spec);
}

describe('a VM image names its platform on FROM', () => {
  test('aarch64 and x86_64 VMs get --platform; a namespace env (the host\'s) does not', () => {
    const vm = (arch: 'x86_64' | 'aarch64') => makeSpec({ base: { kind: 'image', ref: 'debian:bookworm' }, backend: { type: 'vm', arch, memory: 1 << 30, cpus: 1 } });
    // The plan's arch is the VM's (compilePlan's default), whatever the host.
    const renderVm = (spec: EnvSpec) => renderDockerfile(compilePlan(spec, FIXTURE_PROJECT, undefined, { hostUser: { name: 'dev', uid: 1000, gid: 1000 } }), spec);
    expect(renderVm(vm('aarch64'))).toMatch(/^FROM --platform=linux\/arm64 debian:bookworm$/m);
    expect(renderVm(vm('x86_64'))).toMatch(/^FROM --platform=linux\/amd64 debian:bookworm$/m);
    expect(render(makeSpec({ base: { kind: 'image', ref: 'debian:bookworm' } }))).toMatch(/^FROM debian:bookworm$/m);
  });
});

describe('golden Dockerfiles', () => {
  test('debian with packages and setup', () => {
    const spec = makeSpec({
      name: 'toolbox',
      packages: { apt: ['make', 'git', 'curl', 'git'], npm: ['typescript', '@types/node'], pip: ['requests>=2.31', 'rich'] },
      setup: [
        setup('git --version > /etc/toolchain'),
        { ...setup('npm ci', { inputs: ['package.json', 'package-lock.json'], user: 'user' }), name: 'node modules' },
        setup('make -C /workspace install'),
      ],
      user: { name: 'dev', uid: 1000, gid: 1000, shell: '/bin/bash' },
    });
    expectGolden('debian-packages-setup', render(spec));
  });

  test('debian snapshot with everything pinned by env.lock', () => {
    const spec = makeSpec({
      name: 'pinned',
      base: { kind: 'debian', suite: 'bookworm', snapshot: '20240601T000000Z' },
      packages: { apt: ['curl', 'git'], npm: ['typescript@5'], pip: ['requests'] },
      user: { name: 'dev', uid: 1000, gid: 1000, shell: '/bin/sh' },
    });
    const lock = lockFromSpec(spec);
    lock.base.digest = `sha256:${'1'.repeat(64)}`;
    lock.packages.apt.curl = '7.88.1-10+deb12u5';
    lock.packages.apt.git = '1:2.39.2-1.1';
    lock.packages.npm['typescript@5'] = '5.4.5';
    lock.packages.pip.requests = '2.31.0';
    expectGolden('debian-snapshot-locked', render(spec, FIXTURE_PROJECT, lock));
  });

  test('image reference with a digest', () => {
    const spec = makeSpec({
      name: 'from-image',
      base: { kind: 'image', ref: `registry.example.com:5000/team/tools:1.2@sha256:${'f'.repeat(64)}` },
      packages: { apt: ['jq'], npm: [], pip: [] },
      user: { name: 'dev', uid: 1000, gid: 1000, shell: '/bin/sh' },
      workdir: '/workspace/app',
    });
    expectGolden('image-digest', render(spec));
  });

  test('custom shells, multi-line scripts and user steps', () => {
    const spec = makeSpec({
      name: 'shells',
      base: { kind: 'image', ref: 'docker.io/library/python:3.12-slim' },
      setup: [
        setup('echo root step'),
        setup('set -e\nfor f in a b; do\n  echo "$f" >> /tmp/list\ndone\n', { shell: ['/bin/bash', '-euo', 'pipefail', '-c'] }),
        setup('[ -d /opt ] && echo has opt'),
        setup("import sys; print(sys.version)", { shell: ['python3', '-c'], user: 'user' }),
        setup('cat <<EOF > /tmp/x', { user: 'user' }),
        setup('echo back to sh'),
      ],
      user: { name: 'dev', uid: 1001, gid: 1001, home: '/home/developer', shell: '/bin/bash' },
    });
    expectGolden('custom-shell', render(spec));
  });

  test('files with modes, directories, spaces and dollars', () => {
    const dir = project({
      'bin/tool': { content: '#!/bin/sh\necho tool\n', mode: 0o755 },
      'etc/app.conf': 'a = 1\n',
      'etc/nested/b.conf': 'b = 2\n',
      'my notes.txt': 'spaces\n',
      'price$list': 'dollars\n',
    });
    const spec = makeSpec({
      name: 'files',
      files: [
        { src: 'bin/tool', dest: '/usr/local/bin/tool', mode: '0755' },
        { src: 'etc', dest: '/etc/app' },
        { src: 'etc/app.conf', dest: '/etc/app.d/', mode: '0600' },
        { src: 'my notes.txt', dest: '/srv/my notes.txt' },
        { src: 'price$list', dest: '/srv/$HOME' },
      ],
      user: { name: 'dev', uid: 1000, gid: 1000, shell: '/bin/sh' },
    });
    expectGolden('files-modes', render(spec, dir));
  });

  test('env values that need escaping', () => {
    const spec = makeSpec({
      name: 'env',
      env: {
        PLAIN: 'vi',
        SPACES: 'a b  c',
        QUOTES: `say "hi" and 'bye'`,
        DOLLAR: '$HOME/${USER}',
        BACKSLASH: 'C:\\path\\to',
        EQUALS: 'a=b=c',
        EMPTY: '',
        UNICODE: 'héllo ☃',
        TRAILING: 'ends with \\',
      },
      user: { name: 'dev', uid: 1000, gid: 1000, shell: '/bin/sh' },
    });
    expectGolden('env-escaping', render(spec));
  });

  test('oci archive and host bases say what a Dockerfile cannot', () => {
    const dir = project({ 'image/index.json': '{"manifests":[]}', 'image/oci-layout': '{}' });
    const oci = makeSpec({ name: 'oci', base: { kind: 'oci', path: 'image' }, user: { name: 'dev', uid: 1000, gid: 1000, shell: '/bin/sh' } });
    const host = makeSpec({ name: 'host', base: { kind: 'host' }, env: { A: '1' }, user: { name: 'dev', uid: 1000, gid: 1000, shell: '/bin/sh' } });
    expectGolden('oci-and-host', `${render(oci, dir)}\n${render(host)}`);
  });
});

describe('quoting rules', () => {
  const user = { name: 'dev', uid: 1000, gid: 1000, shell: '/bin/sh' };

  test('an image base pinned by env.lock is pulled by digest', () => {
    const spec = makeSpec({ base: { kind: 'image', ref: 'debian:bookworm' }, user });
    const lock = lockFromSpec(spec);
    lock.base.digest = `sha256:${'e'.repeat(64)}`;
    expect(render(spec, FIXTURE_PROJECT, lock)).toContain(`\nFROM debian:bookworm@sha256:${'e'.repeat(64)}\n`);
    expect(render(spec)).toContain('\nFROM debian:bookworm\n');
  });

  test('an env value with a line break cannot be rendered and says so', () => {
    const error = envyError(() => render(makeSpec({ env: { MULTI: 'a\nb' }, user })));
    expect(error.message).toBe('env.MULTI: the value has a line break, which a Dockerfile ENV cannot carry');
  });

  test('a copied path a Dockerfile would read as a pattern is refused by name', () => {
    const dir = project({ 'a*b': 'x' });
    expect(envyError(() => render(makeSpec({ files: [{ src: 'a*b', dest: '/x' }], user }), dir)).message).toMatch(/^files\[0\]\.src: "a\*b" has a character/);
  });

  test('commands the shell form would misread use the exec form with the full shell', () => {
    const text = render(makeSpec({ setup: [setup('-x is an odd start'), setup('trailing \\'), setup('  padded  ')], user }));
    expect(text).toContain('RUN --mount=type=bind,source=.,target=/workspace ["/bin/sh","-c","-x is an odd start"]');
    expect(text).toContain('RUN --mount=type=bind,source=.,target=/workspace ["/bin/sh","-c","trailing \\\\"]');
    expect(text).toContain('RUN --mount=type=bind,source=.,target=/workspace padded\n');
  });

  test('package requests with shell characters are quoted', () => {
    const text = render(makeSpec({ packages: { apt: [], npm: [], pip: ['pkg[extra]>=1,<2'] }, user }));
    expect(text).toContain("      'pkg[extra]>=1,<2'");
  });
});
