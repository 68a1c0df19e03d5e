import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, test } from 'vitest';
import { loadSpec } from '../../../src/config/load.js';
import { checkFrozen, lockFromSpec, parseLock, readLock, refreshLock, renderLock, writeLock } from '../../../src/plan/lock.js';
import type { EnvLock } from '../../../src/plan/types.js';
import { envyError, makeSpec, setup, tempDir } from './helpers.js';

const DIGEST = `sha256:${'a'.repeat(64)}`;

function specWithEverything() {
  return makeSpec({
    base: { kind: 'debian', suite: 'bookworm', snapshot: '20240601T000000Z' },
    packages: { apt: ['git', 'curl'], npm: ['@types/node@20', 'typescript'], pip: ['requests>=2'] },
    env: { EDITOR: 'vi' },
    files: [{ src: 'tools/x.sh', dest: '/usr/local/bin/x', mode: '0755' }],
    setup: [setup('make', { inputs: ['Makefile'] })],
    user: { name: 'dev', shell: '/bin/bash' },
  });
}

function resolvedLock(): EnvLock {
  const lock = lockFromSpec(specWithEverything());
  lock.base.digest = DIGEST;
  lock.packages.apt.git = '1:2.39.2-1.1';
  lock.packages.apt.curl = '7.88.1-10+deb12u5';
  lock.packages.npm['@types/node@20'] = '20.11.5';
  return lock;
}

describe('reading and writing', () => {
  test('a lock survives a write and a read unchanged, nulls and empty maps included', () => {
    const path = join(tempDir(), 'env.lock');
    const lock = resolvedLock();
    writeLock(path, lock);
    expect(readLock(path)).toEqual(lock);
    const empty = lockFromSpec(makeSpec({ base: { kind: 'host' } }));
    writeLock(path, empty);
    expect(readLock(path)).toEqual(empty);
  });

  test('the write is atomic: no temp file is left beside the lock', () => {
    const dir = tempDir();
    writeLock(join(dir, 'env.lock'), resolvedLock());
    writeLock(join(dir, 'env.lock'), lockFromSpec(makeSpec()));
    expect(readdirSync(dir)).toEqual(['env.lock']);
  });

  test('the format is fixed: sorted packages, quoted strings, a header', () => {
    const lock = lockFromSpec(makeSpec({ base: { kind: 'image', ref: 'debian:bookworm' }, packages: { apt: ['jq', 'curl'], npm: [], pip: [] } }));
    lock.base.digest = DIGEST;
    lock.packages.apt.jq = '1.6';
    const text = renderLock(lock);
    expect(text.split('\n').slice(0, 14).join('\n')).toBe(
      [
        '# env.lock: written by envy from env.yaml. Commit it; do not edit it by hand.',
        '# It pins the base image and package versions (docs/lockfile.md).',
        'lockfileVersion: 1',
        `specDigest: "${lock.specDigest}"`,
        'base:',
        '  kind: "image"',
        '  ref: "debian:bookworm"',
        `  digest: "${DIGEST}"`,
        'packages:',
        '  apt:',
        '    curl: null',
        '    jq: "1.6"',
        '  npm: {}',
        '  pip: {}',
      ].join('\n'),
    );
    expect(renderLock(parseLock(text, 'env.lock'))).toBe(text);
  });

  test('the example in docs/lockfile.md is a valid lock in the written format', () => {
    const doc = readFileSync(join(dirname(fileURLToPath(import.meta.url)), '../../../docs/lockfile.md'), 'utf8');
    const example = /## Example\n\n```yaml\n([\s\S]*?)```/.exec(doc)?.[1];
    expect(example).toBeDefined();
    const lock = parseLock(example!, 'docs/lockfile.md');
    expect(lock.packages.apt.git).toBe('1:2.39.2-1.1');
    expect(renderLock(lock)).toBe(example);
  });

  test('a missing lock reads as undefined', () => {
    expect(readLock(join(tempDir(), 'env.lock'))).toBeUndefined();
  });

  const good = renderLock(resolvedLock());
  const corrupt: [what: string, text: string, message: string][] = [
    ['broken YAML', good.replace('packages:', 'packages: [\n'), 'env.lock:'],
    ['a version written as a number', good.replace('"7.88.1-10+deb12u5"', '7.88'), 'packages.apt.curl: expected a version string or null, got 7.88'],
    ['a bad digest', good.replace(DIGEST, 'sha256:abc'), 'base.digest: expected a sha256:<64 hex> digest, got "sha256:abc"'],
    ['an unknown field', good.replace('lockfileVersion: 1', 'lockfileVersion: 1\nextra: true'), 'extra: unknown field'],
    ['a newer lockfile version', good.replace('lockfileVersion: 1', 'lockfileVersion: 2'), 'lockfileVersion: version 2 was written by a newer envy'],
    ['an unknown base kind', good.replace('kind: "debian"', 'kind: "vm"'), 'base.kind: expected debian, image, oci or host, got "vm"'],
    ['a missing section digest', good.replace(/ {2}setup: .*\n/, ''), 'sections.setup: expected a sha256:<64 hex> digest, got nothing'],
    ['a duplicate key', good.replace('lockfileVersion: 1', 'lockfileVersion: 1\nlockfileVersion: 1'), 'env.lock:'],
    ['not a mapping', '- just\n- a list\n', 'expected a mapping (is this an env.lock?)'],
    ['an empty file', '', 'expected a mapping (is this an env.lock?)'],
  ];
  test.each(corrupt)('a corrupt lock (%s) is LOCK_INVALID with its position', (what, text, message) => {
    const path = join(tempDir(), 'env.lock');
    writeFileSync(path, text);
    const error = envyError(() => readLock(path, 'env.lock'));
    expect(error.code).toBe('LOCK_INVALID');
    expect(error.message).toContain(message);
    expect(error.message).toMatch(what.startsWith('an empty') ? /^env\.lock(:\d+:\d+)?: / : /^env\.lock:\d+:\d+: /);
    expect(error.hint).toMatch(/delete it and run envy up/);
  });

  test('the position points at the offending line', () => {
    const text = renderLock(resolvedLock()).replace('"7.88.1-10+deb12u5"', '7.88');
    const line = text.split('\n').findIndex((l) => l.includes('curl:')) + 1;
    expect(envyError(() => parseLock(text, 'env.lock')).message).toBe(
      `env.lock:${line}:11: packages.apt.curl: expected a version string or null, got 7.88`,
    );
  });
});

describe('checkFrozen', () => {
  const frozen = (spec: ReturnType<typeof makeSpec>, lock: EnvLock | undefined) => envyError(() => checkFrozen(spec, lock));

  test('a lock for this very spec passes, resolved or not', () => {
    expect(() => checkFrozen(specWithEverything(), resolvedLock())).not.toThrow();
    expect(() => checkFrozen(specWithEverything(), lockFromSpec(specWithEverything()))).not.toThrow();
  });

  test('a missing lock', () => {
    const error = frozen(makeSpec(), undefined);
    expect(error.code).toBe('LOCK_MISMATCH');
    expect(error.exitCode).toBe(7);
    expect(error.message).toBe('env.lock is missing, and --frozen forbids writing it');
  });

  test('a changed base', () => {
    const spec = { ...specWithEverything(), base: { kind: 'debian' as const, suite: 'trixie', snapshot: '20240601T000000Z' } };
    expect(frozen(spec, resolvedLock()).message).toBe(
      'env.lock disagrees with env.yaml: base changed from debian:bookworm@20240601T000000Z to debian:trixie@20240601T000000Z',
    );
    const plain = lockFromSpec(makeSpec());
    expect(frozen(makeSpec({ base: { kind: 'debian', suite: 'trixie' } }), plain).message).toBe(
      'env.lock disagrees with env.yaml: base changed from debian:bookworm to debian:trixie',
    );
    expect(frozen(makeSpec({ base: { kind: 'image', ref: 'debian:bookworm' } }), plain).message).toBe(
      'env.lock disagrees with env.yaml: base changed from debian:bookworm to image debian:bookworm',
    );
  });

  test('an added package', () => {
    const spec = specWithEverything();
    spec.packages.apt.push('jq');
    const error = frozen(spec, resolvedLock());
    expect(error.message).toBe('env.lock disagrees with env.yaml: packages.apt: env.yaml adds "jq", env.lock lacks it');
    expect(error.hint).toBe('run envy up without --frozen to update env.lock, then commit it');
  });

  test('a dropped package', () => {
    const spec = specWithEverything();
    spec.packages.npm = ['typescript'];
    expect(frozen(spec, resolvedLock()).message).toBe(
      'env.lock disagrees with env.yaml: packages.npm: env.yaml drops "@types/node@20", env.lock still has it',
    );
  });

  test('a changed setup step', () => {
    const spec = specWithEverything();
    spec.setup[0] = setup('make all', { inputs: ['Makefile'] });
    expect(frozen(spec, resolvedLock()).message).toBe('env.lock disagrees with env.yaml: setup: the setup steps changed since env.lock was written');
  });

  test('changed env, files, user and workdir, all named', () => {
    const spec = specWithEverything();
    spec.env.EDITOR = 'nano';
    spec.files[0]!.mode = '0700';
    spec.user = { name: 'other', shell: '/bin/bash' };
    spec.workdir = '/workspace/app';
    const error = frozen(spec, resolvedLock());
    expect([error.message, ...error.details]).toEqual([
      'env.lock disagrees with env.yaml: env: the env variables changed since env.lock was written',
      'files: the files entries changed since env.lock was written',
      'user: the user changed since env.lock was written',
      'workdir: workdir or workspace.path changed since env.lock was written',
    ]);
  });

  test('every disagreement is listed: the first in the message, the rest as details', () => {
    const spec = specWithEverything();
    spec.base = { kind: 'host' };
    spec.packages.pip = [];
    spec.packages.apt = ['curl', 'git', 'make'];
    const error = frozen(spec, resolvedLock());
    expect(error.message).toBe('env.lock disagrees with env.yaml: base changed from debian:bookworm@20240601T000000Z to host');
    expect(error.details).toEqual(['packages.apt: env.yaml adds "make", env.lock lacks it', 'packages.pip: env.yaml drops "requests>=2", env.lock still has it']);
  });

  test('a hand-edited spec digest is caught even when every section agrees', () => {
    const lock = resolvedLock();
    lock.specDigest = DIGEST;
    expect(frozen(specWithEverything(), lock).message).toMatch(/specDigest does not match env.yaml/);
  });

  test('edits that do not change the build are not mismatches', () => {
    const spec = specWithEverything();
    const lock = resolvedLock();
    spec.name = 'renamed';
    spec.env = { ...spec.env };
    spec.packages.apt = ['curl', 'git', 'curl'];
    spec.setup[0] = { ...spec.setup[0]!, name: 'a label' };
    spec.ports = [{ container: 80, host: 8080, protocol: 'tcp' }];
    spec.hooks.postStart = ['echo hi'];
    expect(() => checkFrozen(spec, lock)).not.toThrow();
  });

  test('comment, whitespace and key-order edits to env.yaml keep env.lock valid', async () => {
    const dir = tempDir();
    const write = (text: string) => {
      writeFileSync(join(dir, 'env.yaml'), text);
      return loadSpec('env.yaml', { env: {}, cwd: dir });
    };
    const { spec } = await write('name: demo\nbase: {debian: bookworm}\npackages:\n  apt: [git, curl]\nenv:\n  A: "1"\n  B: "2"\n');
    const lock = lockFromSpec(spec);
    const edited = await write(
      '# the demo env\nname: demo\n\nenv:   # variables\n  B: "2"\n  A: "1"\npackages:\n  apt:\n    - curl   # fetches\n    - git\nbase:\n  debian: bookworm\n',
    );
    expect(readFileSync(join(dir, 'env.yaml'), 'utf8')).toContain('# the demo env');
    expect(() => checkFrozen(edited.spec, lock)).not.toThrow();
    const changed = await write('name: demo\nbase: {debian: bookworm}\npackages:\n  apt: [git, curl, jq]\nenv:\n  A: "1"\n  B: "2"\n');
    expect(envyError(() => checkFrozen(changed.spec, lock)).message).toContain('env.yaml adds "jq"');
  });
});

describe('refreshLock', () => {
  test('keeps what still applies and drops the rest', () => {
    const spec = specWithEverything();
    spec.packages.apt = ['git', 'jq'];
    const refreshed = refreshLock(spec, resolvedLock());
    expect(refreshed.base.digest).toBe(DIGEST);
    expect(refreshed.packages.apt).toEqual({ git: '1:2.39.2-1.1', jq: null });
    expect(() => checkFrozen(spec, refreshed)).not.toThrow();
  });

  test('a new base loses the old digest', () => {
    const spec = { ...specWithEverything(), base: { kind: 'debian' as const, suite: 'trixie' } };
    expect(refreshLock(spec, resolvedLock()).base).toEqual({ kind: 'debian', suite: 'trixie' });
  });
});

describe('the architecture a base digest is for', () => {
  const vm = (arch: 'x86_64' | 'aarch64') => makeSpec({ backend: { type: 'vm', arch, memory: 1 << 30, cpus: 1 } });

  test('a VM lock names its arch; it survives a write and a read; a namespace lock stays as it was', () => {
    const lock = lockFromSpec(vm('aarch64'));
    lock.base.digest = DIGEST;
    expect(lock.base.arch).toBe('aarch64');
    const text = renderLock(lock);
    expect(text).toMatch(/\n {2}arch: "aarch64"\n/);
    expect(parseLock(text, 'env.lock')).toEqual(lock);
    expect(renderLock(lockFromSpec(makeSpec()))).not.toContain('arch:');
    expect(() => parseLock(text.replace('"aarch64"', '"mips"'), 'env.lock')).toThrow(/base\.arch.*expected x86_64 or aarch64/);
  });

  test('a digest locked for one arch is not reused for another, and --frozen names the change', () => {
    const arm = lockFromSpec(vm('aarch64'));
    arm.base.digest = DIGEST;
    expect(refreshLock(vm('aarch64'), arm).base.digest).toBe(DIGEST);
    expect(refreshLock(vm('x86_64'), arm).base.digest).toBeUndefined();
    expect(() => checkFrozen(vm('aarch64'), arm)).not.toThrow();
    expect(envyError(() => checkFrozen(vm('x86_64'), arm)).message).toMatch(/architecture changed from aarch64 to x86_64/);
  });
});
