import { appendFileSync, chmodSync, mkdirSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { describe, expect, test } from 'vitest';
import { compilePlan, resolveUser } from '../../../src/plan/compile.js';
import { lockFromSpec } from '../../../src/plan/lock.js';
import type { BaseStep, PackagesStep, RunStep, UserStep } from '../../../src/plan/types.js';
import { compile, copyOfFixture, envyError, FIXTURE_PROJECT, HOST_USER, keys, makeSpec, project, setup, tempDir } from './helpers.js';

/** A spec touching every step kind, over the fixture project. */
function fullSpec() {
  return makeSpec({
    packages: { apt: ['git', 'curl'], npm: ['typescript@5'], pip: ['requests'] },
    env: { EDITOR: 'vi', LANG: 'C.UTF-8' },
    files: [
      { src: 'tools/bootstrap.sh', dest: '/usr/local/bin/bootstrap', mode: '0755' },
      { src: 'conf', dest: '/etc/app' },
    ],
    setup: [
      setup('echo one > /one'),
      setup('npm ci', { inputs: ['package.json', 'package-lock.json'] }),
      setup('make -C src', { inputs: ['src/**/*.ts'] }),
      setup('echo user > ~/marker', { user: 'user' }),
    ],
  });
}

describe('determinism', () => {
  test('compiling twice gives identical plans', () => {
    const spec = fullSpec();
    expect(compile(spec, FIXTURE_PROJECT)).toEqual(compile(spec, FIXTURE_PROJECT));
  });

  test('keys are identical when the project is copied to another absolute path', () => {
    const spec = fullSpec();
    const here = compile(spec, FIXTURE_PROJECT);
    const copy = copyOfFixture();
    const there = compile(spec, copy);
    expect(keys(there)).toEqual(keys(here));
    // No host path leaks into anything the plan carries.
    expect(JSON.stringify(there)).not.toContain(copy);
    expect(JSON.stringify(here)).not.toContain(FIXTURE_PROJECT);
  });

  test('key derivation is pinned: a change to it must show up here', () => {
    // If this fails, the derivation changed: bump KEY_FORMAT in src/plan/compile.ts and update these.
    expect(keys(compile(fullSpec(), FIXTURE_PROJECT))).toEqual([
      '25994c902eac47ac700c793bd52534b5aae2726913d6c9d3a2b2dea0efaea79f',
      '6bc68e66623bd551ad768888a85116532ed59720f580914c52ecd3fdfb23780d',
      '49a7f5690110bc10a1602a4187b407cc1b8b50c82a10814e7f357efe822c1f48',
      'bbf270d7a76e8f74034e9719ff8036288183792cb924df5b3f7f520ae0f7ee76',
      '8ffb75f8fa1519dd6b7baf00be033f4e55885bf2663dd6b625e4c17e2f12fbec',
      '832375058cb74ee3ca1f4358cc21a1a83c7d6bd1ceac454bff9bfad9bac94c82',
      '482663565864370db237ea7ab5718b0270aa6a0b99ea7dc5bf0fb5ccf54ec09f',
      '19d06ccb363c1989527c5ab2f38e4283ea15bcf1dee03d08ca3d2119ecdc4925',
      '5446bddebe8647e30021be794cc4dd8bc1735c1f2f6d1c50e5de8020c43c77c5',
      'f5471fb966b7d0330089cc26417561982dab2235dc24c10c0c60682a347ba5ab',
      '023da76dc0f9345ca06cc4183da7c8da1881643340e61287e273989f1ac7baa4',
      '1b1d3736c0f2031174c540bfeff8388907c082eefe1937f5f3bff6819ac1349a',
    ]);
  });

  test('a key is sha256 over the canonical JSON of parent, kind and inputs', () => {
    const base = compile(makeSpec(), FIXTURE_PROJECT).steps[0]!;
    const encoded = '{"arch":"x86_64","format":1,"kind":"base","parent":null,"source":{"kind":"debian","suite":"bookworm"}}';
    expect(base.key).toBe(createHash('sha256').update(encoded).digest('hex'));
  });

  test('the steps come in the documented order, the user step right before the first user-run setup step', () => {
    const plan = compile(fullSpec(), FIXTURE_PROJECT);
    expect(plan.steps.map((step) => (step.kind === 'packages' ? `packages:${step.manager}` : step.kind))).toEqual([
      'base',
      'packages:apt',
      'packages:npm',
      'packages:pip',
      'files',
      'files',
      'env',
      'run',
      'run',
      'run',
      'user',
      'run',
    ]);
    plan.steps.forEach((step, i) => expect(step.parent).toBe(i === 0 ? undefined : plan.steps[i - 1]!.key));
    expect(plan.key).toBe(plan.steps.at(-1)!.key);
  });

  test('without user-run setup steps the user step goes last', () => {
    const plan = compile(makeSpec({ setup: [setup('true'), setup('false')] }), FIXTURE_PROJECT);
    expect(plan.steps.map((step) => step.kind)).toEqual(['base', 'run', 'run', 'user']);
  });

  test('apt packages are one step, sorted and de-duplicated; empty managers have no step', () => {
    const plan = compile(makeSpec({ packages: { apt: ['jq', 'curl', 'jq', 'git'], npm: [], pip: [] } }), FIXTURE_PROJECT);
    const packages = plan.steps.filter((step): step is PackagesStep => step.kind === 'packages');
    expect(packages).toHaveLength(1);
    expect(packages[0]!.packages).toEqual(['curl', 'git', 'jq']);
    expect(keys(plan)).toEqual(keys(compile(makeSpec({ packages: { apt: ['git', 'curl', 'jq'], npm: [], pip: [] } }), FIXTURE_PROJECT)));
  });
});

describe('invalidation', () => {
  test('changing one setup step changes exactly its key and all later ones', () => {
    const before = compile(fullSpec(), FIXTURE_PROJECT);
    const edited = fullSpec();
    edited.setup[1] = setup('npm ci --ignore-scripts', { inputs: ['package.json', 'package-lock.json'] });
    const after = compile(edited, FIXTURE_PROJECT);
    const changedAt = before.steps.findIndex((step) => step.kind === 'run' && step.run === 'npm ci');
    expect(changedAt).toBe(8);
    before.steps.forEach((step, i) => {
      if (i < changedAt) expect(after.steps[i]!.key, `step ${i}`).toBe(step.key);
      else expect(after.steps[i]!.key, `step ${i}`).not.toBe(step.key);
    });
  });

  test("a setup step's label is not part of its key", () => {
    const named = fullSpec();
    named.setup[0] = { ...named.setup[0]!, name: 'write one' };
    expect(keys(compile(named, FIXTURE_PROJECT))).toEqual(keys(compile(fullSpec(), FIXTURE_PROJECT)));
  });

  test("changing a file matched by a step's inputs changes that step's key and later ones only", () => {
    const dir = copyOfFixture();
    const before = compile(fullSpec(), dir);
    appendFileSync(join(dir, 'src/util.ts'), 'export const more = 3;\n');
    const after = compile(fullSpec(), dir);
    const step = before.steps.findIndex((s) => s.kind === 'run' && s.run === 'make -C src');
    expect(keys(after).slice(0, step)).toEqual(keys(before).slice(0, step));
    for (let i = step; i < before.steps.length; i++) expect(after.steps[i]!.key).not.toBe(before.steps[i]!.key);
  });

  test('a file no input glob matches does not change any key', () => {
    const dir = copyOfFixture();
    const before = keys(compile(fullSpec(), dir));
    writeFileSync(join(dir, 'README.md'), 'rewritten\n');
    writeFileSync(join(dir, 'src/notes.txt'), 'not a .ts file\n');
    writeFileSync(join(dir, 'new-file'), 'x');
    expect(keys(compile(fullSpec(), dir))).toEqual(before);
  });

  test('a new file that an input glob matches changes the key', () => {
    const dir = copyOfFixture();
    const before = keys(compile(fullSpec(), dir));
    mkdirSync(join(dir, 'src/deep/er'), { recursive: true });
    writeFileSync(join(dir, 'src/deep/er/x.ts'), 'export {};\n');
    expect(keys(compile(fullSpec(), dir)).at(-1)).not.toBe(before.at(-1));
  });

  test('changing a files source changes its step and the ones after it, not the ones before', () => {
    const dir = copyOfFixture();
    const before = compile(fullSpec(), dir);
    writeFileSync(join(dir, 'conf/nested/extra.conf'), 'debug = true\n');
    const after = compile(fullSpec(), dir);
    const confStep = before.steps.findIndex((s) => s.kind === 'files' && s.copies[0]!.src === 'conf');
    expect(confStep).toBe(5);
    expect(keys(after).slice(0, confStep)).toEqual(keys(before).slice(0, confStep));
    for (let i = confStep; i < before.steps.length; i++) expect(after.steps[i]!.key).not.toBe(before.steps[i]!.key);
  });

  test('the execute bit of a copied file counts; other mode bits (umask) do not', () => {
    const dir = copyOfFixture();
    const before = keys(compile(fullSpec(), dir));
    chmodSync(join(dir, 'conf/app.conf'), 0o664);
    expect(keys(compile(fullSpec(), dir))).toEqual(before);
    chmodSync(join(dir, 'conf/app.conf'), 0o744);
    expect(keys(compile(fullSpec(), dir))[5]).not.toBe(before[5]);
  });

  test('a symlink inside a copied directory is keyed by its target text', () => {
    const dir = copyOfFixture();
    symlinkSync('app.conf', join(dir, 'conf/current'));
    const first = keys(compile(fullSpec(), dir));
    renameSync(join(dir, 'conf/current'), join(dir, 'conf/old'));
    symlinkSync('nested/extra.conf', join(dir, 'conf/current'));
    const second = keys(compile(fullSpec(), dir));
    expect(second[5]).not.toBe(first[5]);
    expect(second.slice(0, 5)).toEqual(first.slice(0, 5));
  });

  test('env order does not matter; env values do', () => {
    const ab = compile(makeSpec({ env: { A: '1', B: '2' } }), FIXTURE_PROJECT);
    const ba = compile(makeSpec({ env: { B: '2', A: '1' } }), FIXTURE_PROJECT);
    expect(keys(ba)).toEqual(keys(ab));
    expect(Object.keys(ba.env)).toEqual(['A', 'B']);
    expect(keys(compile(makeSpec({ env: { A: '1', B: '3' } }), FIXTURE_PROJECT))).not.toEqual(keys(ab));
  });

  test('the env name is not part of any key', () => {
    expect(keys(compile(makeSpec({ name: 'other' }), FIXTURE_PROJECT))).toEqual(keys(compile(makeSpec(), FIXTURE_PROJECT)));
  });

  test('the target architecture is part of the base key', () => {
    const spec = makeSpec();
    const x86 = compilePlan(spec, FIXTURE_PROJECT, undefined, { arch: 'x86_64', hostUser: HOST_USER });
    const arm = compilePlan(spec, FIXTURE_PROJECT, undefined, { arch: 'aarch64', hostUser: HOST_USER });
    expect(arm.steps[0]!.key).not.toBe(x86.steps[0]!.key);
    const vm = compilePlan(makeSpec({ backend: { type: 'vm', arch: 'aarch64', memory: 1, cpus: 1 } }), FIXTURE_PROJECT, undefined, { hostUser: HOST_USER });
    expect((vm.steps[0] as BaseStep).arch).toBe('aarch64');
    expect(vm.steps[0]!.key).toBe(arm.steps[0]!.key);
  });

  test('image references that name the same image key alike', () => {
    const short = compile(makeSpec({ base: { kind: 'image', ref: 'debian:bookworm' } }), FIXTURE_PROJECT);
    const long = compile(makeSpec({ base: { kind: 'image', ref: 'docker.io/library/debian:bookworm' } }), FIXTURE_PROJECT);
    const other = compile(makeSpec({ base: { kind: 'image', ref: 'debian:trixie' } }), FIXTURE_PROJECT);
    expect(long.key).toBe(short.key);
    expect(other.key).not.toBe(short.key);
  });
});

describe('env.lock pins', () => {
  const digest = `sha256:${'ab'.repeat(32)}`;

  test("the base key includes the lock's digest when the lock is for this base", () => {
    const spec = makeSpec({ packages: { apt: ['curl'], npm: [], pip: [] } });
    const lock = lockFromSpec(spec);
    const unpinned = compile(spec, FIXTURE_PROJECT, lock);
    expect(keys(unpinned)).toEqual(keys(compile(spec, FIXTURE_PROJECT)));
    lock.base.digest = digest;
    const pinned = compile(spec, FIXTURE_PROJECT, lock);
    expect((pinned.steps[0] as BaseStep).digest).toBe(digest);
    expect(pinned.steps[0]!.key).not.toBe(unpinned.steps[0]!.key);
  });

  test('a lock written for another base pins nothing', () => {
    const lock = lockFromSpec(makeSpec({ base: { kind: 'debian', suite: 'trixie' } }));
    lock.base.digest = digest;
    const plan = compile(makeSpec(), FIXTURE_PROJECT, lock);
    expect((plan.steps[0] as BaseStep).digest).toBeUndefined();
    expect(keys(plan)).toEqual(keys(compile(makeSpec(), FIXTURE_PROJECT)));
  });

  test('resolved package versions pin the packages step and enter its key', () => {
    const spec = makeSpec({ packages: { apt: ['curl', 'git'], npm: [], pip: [] } });
    const lock = lockFromSpec(spec);
    lock.packages.apt.curl = '7.88.1-10+deb12u5';
    lock.packages.apt.jq = '1.6-2.1';
    const plan = compile(spec, FIXTURE_PROJECT, lock);
    const apt = plan.steps[1] as PackagesStep;
    expect(apt.pinned).toEqual({ curl: '7.88.1-10+deb12u5' });
    expect(apt.key).not.toBe(compile(spec, FIXTURE_PROJECT).steps[1]!.key);
    expect(plan.steps[0]!.key).toBe(compile(spec, FIXTURE_PROJECT).steps[0]!.key);
  });
});

describe('the env user', () => {
  test('fields env.yaml leaves out come from the host user; a fully declared user ignores the host', () => {
    expect(resolveUser({ shell: '/bin/sh' }, HOST_USER)).toEqual({ name: 'alice', uid: 1000, gid: 1000, home: '/home/alice', shell: '/bin/sh' });
    const declared = { name: 'dev', uid: 1500, gid: 1501, shell: '/bin/bash' };
    expect(resolveUser(declared, { name: 'bob', uid: 2000, gid: 2000 })).toEqual({ ...declared, home: '/home/dev' });
    expect(resolveUser(declared, { name: 'carol', uid: 3000, gid: 3000 })).toEqual(resolveUser(declared, HOST_USER));
  });

  test('host names useradd would refuse are made valid', () => {
    expect(resolveUser({ shell: '/bin/sh' }, { name: 'John.Doe', uid: 1000, gid: 1000 }).name).toBe('john_doe');
    expect(resolveUser({ shell: '/bin/sh' }, { name: '1st', uid: 1000, gid: 1000 }).name).toBe('_1st');
  });

  test('a root host user does not make the env user a second root', () => {
    expect(resolveUser({ shell: '/bin/sh' }, { name: 'root', uid: 0, gid: 0 })).toEqual({ name: 'dev', uid: 1000, gid: 1000, home: '/home/dev', shell: '/bin/sh' });
    expect(resolveUser({ name: 'me', shell: '/bin/sh' }, { name: 'root', uid: 0, gid: 0 }).name).toBe('me');
  });

  test('a different host user changes only the user step and what follows it', () => {
    const spec = fullSpec();
    const alice = compilePlan(spec, FIXTURE_PROJECT, undefined, { arch: 'x86_64', hostUser: HOST_USER });
    const bob = compilePlan(spec, FIXTURE_PROJECT, undefined, { arch: 'x86_64', hostUser: { name: 'bob', uid: 1001, gid: 1001 } });
    const userAt = alice.steps.findIndex((step) => step.kind === 'user');
    expect(keys(bob).slice(0, userAt)).toEqual(keys(alice).slice(0, userAt));
    expect(bob.steps[userAt]!.key).not.toBe(alice.steps[userAt]!.key);
    expect((bob.steps[userAt] as UserStep).name).toBe('bob');
  });

  test('with the user declared, keys are the same for every host user', () => {
    const spec = { ...fullSpec(), user: { name: 'dev', uid: 1000, gid: 1000, shell: '/bin/bash' } };
    const alice = compilePlan(spec, FIXTURE_PROJECT, undefined, { arch: 'x86_64', hostUser: HOST_USER });
    const bob = compilePlan(spec, FIXTURE_PROJECT, undefined, { arch: 'x86_64', hostUser: { name: 'bob', uid: 1001, gid: 1001 } });
    expect(keys(bob)).toEqual(keys(alice));
  });
});

describe('inputs globs', () => {
  test('a matched directory stands for every file below it, and matches are sorted and unique', () => {
    const plan = compile(makeSpec({ setup: [setup('make', { inputs: ['src', 'src/*.ts', 'package*.json'] })] }), FIXTURE_PROJECT);
    const run = plan.steps.find((step): step is RunStep => step.kind === 'run')!;
    expect(run.inputs.map((input) => input.path)).toEqual(['package-lock.json', 'package.json', 'src/main.ts', 'src/util.ts']);
    expect(run.inputs[0]!.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
  });

  test('a literal input that does not exist is an error naming the field; a wildcard matching nothing is not', () => {
    const error = envyError(() => compile(makeSpec({ setup: [setup('a'), setup('make', { inputs: ['src', 'Makefile'] })] }), FIXTURE_PROJECT));
    expect(error.code).toBe('CONFIG_INVALID');
    expect(error.message).toBe('setup[1].inputs[1]: "Makefile" does not exist in the project directory');
    const plan = compile(makeSpec({ setup: [setup('make', { inputs: ['patches/*.diff'] })] }), FIXTURE_PROJECT);
    expect((plan.steps[1] as RunStep).inputs).toEqual([]);
  });
});

describe('untrusted paths', () => {
  test('files[].src with .. that leaves the project is refused', () => {
    const error = envyError(() => compile(makeSpec({ files: [{ src: 'conf/../../etc/passwd', dest: '/x' }] }), FIXTURE_PROJECT));
    expect(error.code).toBe('CONFIG_INVALID');
    expect(error.message).toBe('files[0].src: "conf/../../etc/passwd" leaves the project directory');
    expect(error.hint).toBeTruthy();
  });

  test('an absolute files[].src is refused', () => {
    expect(envyError(() => compile(makeSpec({ files: [{ src: '/etc/passwd', dest: '/x' }] }), FIXTURE_PROJECT)).message).toBe(
      'files[0].src: "/etc/passwd" is an absolute path; project paths are relative to env.yaml',
    );
  });

  test('a files[].src symlink that points outside the project is refused', () => {
    const outside = tempDir();
    writeFileSync(join(outside, 'secret'), 'token');
    const dir = project({ 'ok.txt': 'fine', 'leak': { symlink: join(outside, 'secret') } });
    const error = envyError(() => compile(makeSpec({ files: [{ src: 'ok.txt', dest: '/ok' }, { src: 'leak', dest: '/x' }] }), dir));
    expect(error.message).toMatch(/^files\[1\]\.src: "leak" is a symlink to .*\/secret, outside the project directory$/);
  });

  test('a files[].src through a symlinked parent directory that leaves the project is refused', () => {
    const outside = tempDir();
    writeFileSync(join(outside, 'key'), 'k');
    const dir = project({ 'a.txt': 'a' });
    symlinkSync(outside, join(dir, 'linked'));
    expect(envyError(() => compile(makeSpec({ files: [{ src: 'linked/key', dest: '/x' }] }), dir)).message).toMatch(/^files\[0\]\.src: "linked\/key" is a symlink to /);
  });

  test('a symlink inside the project is followed for files[].src', () => {
    const dir = project({ 'real.conf': 'x = 1\n', 'alias.conf': { symlink: 'real.conf' } });
    const viaLink = compile(makeSpec({ files: [{ src: 'alias.conf', dest: '/etc/x' }] }), dir);
    const direct = compile(makeSpec({ files: [{ src: 'real.conf', dest: '/etc/x' }] }), dir);
    expect((viaLink.steps[1] as { copies: { digest: string }[] }).copies[0]!.digest).toBe((direct.steps[1] as { copies: { digest: string }[] }).copies[0]!.digest);
  });

  test('an input glob that matches a symlink leading outside is refused, naming the pattern and the match', () => {
    const outside = tempDir();
    writeFileSync(join(outside, 'id_rsa'), 'key');
    const dir = project({ 'keys/a.pub': 'pub' });
    symlinkSync(join(outside, 'id_rsa'), join(dir, 'keys/b.pub'));
    const error = envyError(() => compile(makeSpec({ setup: [setup('x', { inputs: ['keys/*.pub'] })] }), dir));
    expect(error.message).toMatch(/^setup\[0\]\.inputs\[0\]: "keys\/b\.pub" is a symlink to .*id_rsa, outside the project directory$/);
  });

  test('inputs escaping with .. and base.oci escaping are refused', () => {
    expect(envyError(() => compile(makeSpec({ setup: [setup('x', { inputs: ['../**'] })] }), FIXTURE_PROJECT)).message).toBe(
      'setup[0].inputs[0]: "../**" leaves the project directory',
    );
    expect(envyError(() => compile(makeSpec({ base: { kind: 'oci', path: '../image.tar' } }), FIXTURE_PROJECT)).message).toBe(
      'base.oci: "../image.tar" leaves the project directory',
    );
  });

  test('a FIFO in a copied directory is refused instead of hanging the plan', () => {
    const dir = project({ 'data/a.txt': 'a' });
    execFileSync('mkfifo', [join(dir, 'data/pipe')]);
    expect(envyError(() => compile(makeSpec({ files: [{ src: 'data', dest: '/data' }] }), dir)).message).toBe(
      'files[0].src: "data/pipe" is not a regular file, directory or symlink',
    );
  });

  test('files[].dest must be absolute', () => {
    expect(envyError(() => compile(makeSpec({ files: [{ src: 'README.md', dest: 'etc/readme' }] }), FIXTURE_PROJECT)).message).toBe(
      'files[0].dest: "etc/readme" must be an absolute path inside the environment',
    );
  });
});

describe('bases', () => {
  test('an OCI layout is keyed by its index.json and its format recorded', () => {
    const dir = project({ 'img/oci-layout': '{"imageLayoutVersion":"1.0.0"}', 'img/index.json': '{"manifests":[]}', 'img/blobs/sha256/aa': 'blob' });
    const plan = compile(makeSpec({ base: { kind: 'oci', path: 'img/' } }), dir);
    expect((plan.steps[0] as BaseStep).ociFormat).toBe('oci-layout');
    writeFileSync(join(dir, 'img/blobs/sha256/bb'), 'unreferenced blob');
    expect(compile(makeSpec({ base: { kind: 'oci', path: 'img' } }), dir).key).toBe(plan.key);
    writeFileSync(join(dir, 'img/index.json'), '{"manifests":[{}]}');
    expect(compile(makeSpec({ base: { kind: 'oci', path: 'img' } }), dir).key).not.toBe(plan.key);
  });

  test('an OCI directory without index.json is refused', () => {
    const dir = project({ 'img/readme': 'x' });
    expect(envyError(() => compile(makeSpec({ base: { kind: 'oci', path: 'img' } }), dir)).message).toBe(
      'base.oci: "img" is a directory without index.json, so not an OCI image layout',
    );
  });

  test('docker-archive and oci-archive tarballs are told apart by their entries', () => {
    const dir = project({ 'd/manifest.json': '[]', 'd/layer.tar': 'x', 'o/oci-layout': '{}', 'o/index.json': '{}' });
    execFileSync('tar', ['-cf', join(dir, 'docker.tar'), '-C', join(dir, 'd'), 'layer.tar', 'manifest.json']);
    execFileSync('tar', ['-cf', join(dir, 'oci.tar'), '-C', join(dir, 'o'), 'oci-layout', 'index.json']);
    writeFileSync(join(dir, 'junk.tar'), 'not a tarball at all');
    const format = (path: string) => (compile(makeSpec({ base: { kind: 'oci', path } }), dir).steps[0] as BaseStep).ociFormat;
    expect(format('docker.tar')).toBe('docker-archive');
    expect(format('oci.tar')).toBe('oci-archive');
    expect(format('junk.tar')).toBeUndefined();
  });

  test('a host base cannot take packages', () => {
    const error = envyError(() => compile(makeSpec({ base: { kind: 'host' }, packages: { apt: [], npm: ['x'], pip: [] } }), FIXTURE_PROJECT));
    expect(error.message).toBe("packages.npm: a host base cannot install packages (it shares the host's read-only /usr)");
  });
});
