/**
 * The progress display through the real CLI in a real terminal (test/e2e/pty-driver.py), as the
 * unprivileged test user: the live ink view with colours in a terminal, the same without colour under
 * NO_COLOR, plain lines with --progress=plain or CI=true even in a terminal, and --quiet printing
 * nothing on success but still the failure. The reporters' details are unit-tested
 * (test/unit/cli/progress.test.ts); this checks the modes are chosen and wired as documented.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { asUserArgv, envy, envyRoot, runAsUser, userTempDir } from '../harness.js';

let project: { path: string; remove: () => void };
let home: { path: string; remove: () => void };

interface Driven {
  exit: number;
  steps: { ok: boolean; output: string }[];
  rest: string;
}

/** Run envy in a pty as the test user until `until` shows (or it exits); all it printed, and its exit code. */
function inTerminal(args: string[], env: Record<string, string>, until: string): { exit: number; output: string } {
  const driver = resolve(import.meta.dirname, '../pty-driver.py');
  const argv = [...asUserArgv({ ENVY_HOME: home.path, TERM: 'xterm-256color', ...env }), process.execPath, join(envyRoot(), 'bin/envy.js'), ...args];
  const out = execFileSync('sh', ['-c', 'cd "$0" && exec "$@"', project.path, 'python3', driver, JSON.stringify([{ expect: until, timeout: 240 }]), '--', ...argv], {
    encoding: 'utf8',
    timeout: 300_000,
  });
  const driven = JSON.parse(out) as Driven;
  return { exit: driven.exit, output: driven.steps.map((s) => s.output).join('') + driven.rest };
}

// eslint-disable-next-line no-control-regex
const COLOUR = /\u001b\[(?:3|9)\dm/;
// eslint-disable-next-line no-control-regex
const CURSOR_UP = /\u001b\[\d*A/;

describe('progress modes in a terminal', () => {
  beforeAll(() => {
    project = userTempDir('envy-progress-');
    home = userTempDir('envy-progress-home-');
    writeFileSync(join(project.path, 'env.yaml'), 'name: prog\nbase: {host: true}\nsetup:\n  - name: make a file\n    run: echo made > /opt/made\n');
  });
  afterAll(async () => {
    await envy(['down', '--rm'], { cwd: project.path, env: { ENVY_HOME: home.path } });
    await runAsUser(join(envyRoot(), 'dist/envy-ns'), ['userns', '--', 'rm', '-rf', home.path]);
    home.remove();
    project.remove();
  });

  test('a terminal gets the live view, in colour', () => {
    const { exit, output } = inTerminal(['build'], {}, 'built prog: image');
    expect(exit, output).toBe(0);
    // The elapsed time is dimmed: an SGR code sits between the label and it.
    // eslint-disable-next-line no-control-regex
    expect(output).toMatch(/✓ make a file (?:\u001b\[\d+m)?\d/);
    expect(output).toMatch(COLOUR);
    expect(output).not.toMatch(/^\[\d\/\d\] /m);
  });

  test('NO_COLOR: the same view without colour', () => {
    const { exit, output } = inTerminal(['build'], { NO_COLOR: '1' }, 'built prog: image');
    expect(exit, output).toBe(0);
    expect(output).toMatch(/✓ make a file \(cached\)/);
    expect(output).not.toMatch(COLOUR);
  });

  test('--progress=plain and CI=true: one line per event even in a terminal', () => {
    for (const [args, env] of [
      [['build', '--progress=plain'], {}],
      [['build'], { CI: 'true' }],
    ] as const) {
      const { exit, output } = inTerminal([...args], env, 'built prog: image');
      expect(exit, output).toBe(0);
      expect(output).toMatch(/^\[2\/3] make a file: cached\r?$/m);
      expect(output).not.toMatch(CURSOR_UP);
      expect(output).not.toMatch(COLOUR);
    }
  });

  test('--quiet: nothing on success; a failure still says what failed', () => {
    const quiet = inTerminal(['up', '--quiet'], {}, '$never^');
    expect(quiet.exit, quiet.output).toBe(0);
    expect(quiet.output).toBe('');
    writeFileSync(join(project.path, 'env.yaml'), 'name: prog\nbase: {host: true}\nsetup:\n  - name: break\n    run: echo broken; exit 3\n');
    const failed = inTerminal(['up', '--quiet'], {}, '$never^');
    expect(failed.exit).toBe(5);
    expect(failed.output).toMatch(/^envy: step "break" failed with exit code 3/m);
  });
});
