import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { envNameFrom } from '../../../src/cli/init.js';
import { kernelHasUsernsBinfmt } from '../../../src/runtime/emulation.js';
import { envy } from './helpers.js';

const pkg = JSON.parse(readFileSync(resolve(import.meta.dirname, '../../../package.json'), 'utf8')) as { version: string };

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'envy-cli-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('envy CLI basics', () => {
  test('--version prints the package version and exits 0', () => {
    for (const flag of ['--version', '-V']) {
      const r = envy([flag], dir);
      expect(r.code).toBe(0);
      expect(r.stdout.trim()).toBe(pkg.version);
    }
  });

  test('--help lists the commands', () => {
    const r = envy(['--help'], dir);
    expect(r.code).toBe(0);
    for (const command of ['init', 'plan', 'doctor']) expect(r.stdout).toContain(`envy ${command}`);
  });

  test('no command is a usage error (exit 2) with a hint', () => {
    const r = envy([], dir);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^envy: Name a command/m);
    expect(r.stderr).toContain('hint:');
  });

  test('logs --vm of a namespace environment, or with a service too, is a one-line usage error', () => {
    writeFileSync(join(dir, 'env.yaml'), 'name: nsenv\nbase: {host: true}\nservices: {web: "sleep 1"}\n');
    const vm = envy(['logs', '--vm'], dir);
    expect(vm.code).toBe(2);
    expect(vm.stderr).toMatch(/^envy: .*env\.yaml: nsenv runs on the namespace backend, which has no VM console$/m);
    const both = envy(['logs', 'web', '--vm'], dir);
    expect(both.code).toBe(2);
    expect(both.stderr).toMatch(/^envy: envy logs: name one of a service, --hooks or --vm$/m);
  });

  test('an unknown command or option is a usage error (exit 2), never a stack trace', () => {
    for (const args of [['frobnicate'], ['plan', '--no-such-flag'], ['plan', '--json', '--dockerfile']]) {
      const r = envy(args, dir);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(/^envy: /);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    }
  });
});

describe('envy init', () => {
  test('writes env.yaml from the default template, named after the directory', () => {
    const project = join(dir, 'My Project');
    mkdirSync(project);
    const r = envy(['init'], project);
    expect(r.code).toBe(0);
    const text = readFileSync(join(project, 'env.yaml'), 'utf8');
    expect(text).toMatch(/^name: my-project$/m);
    expect(text).toContain('debian: bookworm');
  });

  test('refuses to overwrite an existing env.yaml and leaves it untouched (exit 2)', () => {
    writeFileSync(join(dir, 'env.yaml'), 'name: mine\n');
    const r = envy(['init', '--template', 'node'], dir);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('already exists');
    expect(readFileSync(join(dir, 'env.yaml'), 'utf8')).toBe('name: mine\n');
  });

  test('--force replaces it', () => {
    writeFileSync(join(dir, 'env.yaml'), 'name: mine\n');
    const r = envy(['init', '--template', 'python', '--name', 'py', '--force'], dir);
    expect(r.code).toBe(0);
    expect(readFileSync(join(dir, 'env.yaml'), 'utf8')).toMatch(/^name: py$/m);
  });

  test('an unknown template is a usage error naming the available ones', () => {
    const r = envy(['init', '--template', 'cobol'], dir);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('no template named "cobol"');
    expect(r.stderr).toMatch(/hint: templates: c, default, go, node, python, rust/);
  });

  test('an invalid --name is refused', () => {
    const r = envy(['init', '--name', 'Bad_Name'], dir);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('not a valid environment name');
  });

  test('--list shows every template with its description', () => {
    const r = envy(['init', '--list'], dir);
    expect(r.code).toBe(0);
    expect(r.stdout.split('\n').filter(Boolean)).toHaveLength(6);
    expect(r.stdout).toMatch(/^rust\s+Rust project/m);
  });

  test('derives valid names from awkward directory names', () => {
    expect(envNameFrom('My Project')).toBe('my-project');
    expect(envNameFrom('__init__')).toBe('init');
    expect(envNameFrom('---')).toBe('env-project');
    expect(envNameFrom('x'.repeat(80))).toHaveLength(63);
  });
});

describe('envy doctor', () => {
  test('--json reports every check and an exit code consistent with the required ones', () => {
    const r = envy(['doctor', '--json'], dir);
    const report = JSON.parse(r.stdout) as { ok: boolean; checks: { id: string; ok: boolean; severity: string }[] };
    const ids = report.checks.map((c) => c.id);
    for (const id of ['userns', 'subuids', 'subgids', 'idmap', 'overlay', 'helper', 'exec-addon', 'ssh-keygen', 'kvm', 'cgroups', 'disk', 'foreign-build']) expect(ids).toContain(id);
    // Where the kernel gives user namespaces their own binfmt_misc and qemu-user-static is installed, the
    // probe registers for real and must succeed.
    if (process.arch === 'x64' && kernelHasUsernsBinfmt() && existsSync('/usr/bin/qemu-aarch64-static')) {
      expect(report.checks.find((c) => c.id === 'foreign-build')?.ok).toBe(true);
    }
    const requiredOk = report.checks.filter((c) => c.severity === 'required').every((c) => c.ok);
    expect(report.ok).toBe(requiredOk);
    expect(r.code).toBe(requiredOk ? 0 : 4);
  });
});

describe('envy plan', () => {
  test('walks up to find env.yaml and prints the plan table', () => {
    writeFileSync(join(dir, 'env.yaml'), 'name: demo\nbase: {host: true}\nsetup: ["echo hi"]\n');
    mkdirSync(join(dir, 'sub/deeper'), { recursive: true });
    const r = envy(['plan'], join(dir, 'sub/deeper'));
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^1\s+base\s+[0-9a-f]{12}\s+host/m);
    expect(r.stdout).toMatch(/run\s+[0-9a-f]{12}\s+echo hi/);
  });

  test('no env.yaml anywhere up the tree: exit 2, naming where it looked', () => {
    const r = envy(['plan'], dir);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^envy: no env.yaml \(or env.yml\) found in /m);
    expect(r.stderr).toContain(`looked in ${dir}`);
    expect(r.stderr).toContain('hint: create one with `envy init`');
  });

  test('an invalid env.yaml: exit 2 with file:line:col and the field', () => {
    writeFileSync(join(dir, 'env.yaml'), 'name: demo\nbase: {host: true}\npackges:\n  apt: [git]\n');
    const r = envy(['plan'], dir);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^envy: env.yaml:3:1: packges/m);
    expect(r.stderr).toContain('did you mean "packages"?');
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  test('--frozen without env.lock: exit 7', () => {
    writeFileSync(join(dir, 'env.yaml'), 'name: demo\nbase: {host: true}\n');
    const r = envy(['plan', '--frozen'], dir);
    expect(r.code).toBe(7);
    expect(r.stderr).toContain('env.lock');
  });

  test('--json is stable JSON with a version and every step', () => {
    const r = envy(['plan', '--json', '-f', resolve(import.meta.dirname, '../../../env.example.yaml')], dir);
    expect(r.code).toBe(0);
    const plan = JSON.parse(r.stdout) as { version: number; steps: { kind: string }[] };
    expect(plan.version).toBe(1);
    expect(plan.steps.map((s) => s.kind)).toEqual(['base', 'packages', 'env', 'run', 'user']);
  });

  test('--dockerfile renders FROM and RUN lines', () => {
    const r = envy(['plan', '--dockerfile', '-f', resolve(import.meta.dirname, '../../../env.example.yaml')], dir);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^FROM docker.io\/library\/debian:bookworm$/m);
    expect(r.stdout).toContain('apt-get install -y --no-install-recommends');
  });
});
