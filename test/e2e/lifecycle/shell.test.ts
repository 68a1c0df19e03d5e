/**
 * `envy shell` through a real pty (test/e2e/pty-driver.py, Python's pty module), as the unprivileged
 * test user: the prompt names the environment, hooks.postAttach runs, job control works, Ctrl-C
 * interrupts the foreground job and not the shell, a window resize reaches `stty size`, env.yaml's
 * PATH survives the login profile, and the shell's exit code is envy's.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { asUserArgv, envy, envyRoot, runAsUser, userTempDir, type RunResult } from '../harness.js';

let project: { path: string; remove: () => void };
let home: { path: string; remove: () => void };

interface Step {
  send?: string;
  expect?: string;
  timeout?: number;
  resize?: [number, number];
  sleep?: number;
}
interface Driven {
  exit: number;
  steps: { ok: boolean; output: string; elapsed: number }[];
  rest: string;
}

const ENV = (): Record<string, string> => ({ ENVY_HOME: home.path, TERM: 'xterm' });
const run = (args: string[]): Promise<RunResult> => envy(args, { cwd: project.path, env: { ...ENV(), CI: 'true' } });

/** Run `envy shell` (or another envy command) in a pty as the test user, playing `steps`. */
function drive(steps: Step[], command: string[] = ['shell']): Driven {
  const driver = resolve(import.meta.dirname, '../pty-driver.py');
  const argv = [...asUserArgv(ENV()), process.execPath, join(envyRoot(), 'bin/envy.js'), ...command];
  // setpriv keeps the pty as controlling terminal; cd happens before it, in the shell below.
  const out = execFileSync('sh', ['-c', 'cd "$0" && exec "$@"', project.path, 'python3', driver, JSON.stringify(steps), '--', ...argv], { encoding: 'utf8', timeout: 120_000 });
  return JSON.parse(out) as Driven;
}

function expectAll(result: Driven): void {
  const failed = result.steps.findIndex((s) => !s.ok);
  if (failed >= 0) throw new Error(`step ${failed} failed; output so far:\n${result.steps.map((s) => s.output).join('')}${result.rest}`);
}

describe('envy shell through a real pty', () => {
  beforeAll(async () => {
    project = userTempDir('envy-shell-');
    home = userTempDir('envy-shell-home-');
    writeFileSync(
      join(project.path, 'env.yaml'),
      [
        'name: ptyenv',
        'base: {host: true}',
        'env: {PATH: "/opt/envtools/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}',
        'user: {shell: /bin/bash}',
        'hooks:',
        '  postAttach: echo "hook ran $((6*7))"',
        '',
      ].join('\n'),
    );
    const up = await run(['up']);
    if (up.code !== 0) throw new Error(up.stderr);
  });
  afterAll(async () => {
    await run(['down', '--rm']);
    await runAsUser(join(envyRoot(), 'dist/envy-ns'), ['userns', '--', 'rm', '-rf', home.path]);
    home.remove();
    project.remove();
  });

  test('prompt, postAttach, PATH, job control, Ctrl-C, resize and the exit code', () => {
    const prompt = String.raw`\(ptyenv\)\S*@ptyenv:/workspace\$ $`;
    const result = drive([
      { expect: 'hook ran 42', timeout: 30 },
      { expect: prompt, timeout: 15 },
      { send: 'echo "path=$PATH"\r' },
      { expect: String.raw`path=/opt/envtools/bin:` },
      { expect: prompt },
      // Job control: a background job is listed, and the shell owns the terminal again.
      { send: 'sleep 100 &\r' },
      { expect: String.raw`\[1\] \d+` },
      { expect: prompt },
      { send: 'jobs\r' },
      { expect: String.raw`\[1\]\+\s+Running\s+sleep 100 &` },
      { expect: prompt },
      // Ctrl-C interrupts the foreground job only: it returns in well under its 50 s, and the shell lives.
      { send: 'sleep 50; echo "after=$?"\r' },
      { sleep: 0.5 },
      { send: '\x03' },
      { expect: prompt, timeout: 5 },
      { send: 'echo "alive $((2+3))"\r' },
      { expect: 'alive 5' },
      { expect: prompt },
      // The background job survived the Ctrl-C (it is in its own process group).
      { send: 'jobs\r' },
      { expect: String.raw`Running\s+sleep 100 &` },
      { expect: prompt },
      // A resize of the outer terminal reaches the pty inside.
      { resize: [33, 111] },
      { sleep: 0.3 },
      { send: 'stty size\r' },
      { expect: String.raw`[^0-9]33 111\r?\n` },
      { expect: prompt },
      { send: 'kill %1; exit 5\r' },
    ]);
    expectAll(result);
    expect(result.exit).toBe(5);
    // No "after=" line: the whole `sleep; echo` list was interrupted, as in a plain terminal.
    expect(result.steps.map((s) => s.output).join('')).not.toMatch(/after=0/);
  });

  test('envy exec with a terminal (envy becomes the helper): a pty inside, Ctrl-C, resize and the exit code', () => {
    const prompt = String.raw`exec\$ $`;
    const result = drive(
      [
        { expect: prompt, timeout: 30 },
        { send: 'tty\r' },
        { expect: String.raw`/dev/pts/\d+\r?\n` },
        { expect: prompt },
        { send: 'sleep 50; echo "after=$?"\r' },
        { sleep: 0.5 },
        { send: '\x03' },
        { expect: prompt, timeout: 5 },
        { resize: [21, 77] },
        { sleep: 0.3 },
        { send: 'stty size\r' },
        { expect: String.raw`[^0-9]21 77\r?\n` },
        { expect: prompt },
        { send: 'exit 7\r' },
      ],
      ['exec', '-e', 'PS1=exec$ ', '--', 'bash', '--norc', '--noprofile', '-i'],
    );
    expectAll(result);
    expect(result.exit).toBe(7);
    expect(result.steps.map((s) => s.output).join('')).not.toMatch(/after=0/);
  });

  test('a shell killed by a signal reports 128+n; sh gets the marked prompt too', () => {
    const killed = drive([{ expect: String.raw`\$ $`, timeout: 30 }, { send: 'kill -KILL $$\r' }]);
    expectAll(killed);
    expect(killed.exit).toBe(137);
    writeFileSync(join(project.path, 'env.yaml'), execFileSync('sed', ['s#/bin/bash#/bin/sh#', join(project.path, 'env.yaml')], { encoding: 'utf8' }));
    const sh = drive([{ expect: String.raw`^\(ptyenv\) \$ $`, timeout: 60 }, { send: 'exit 0\r' }]);
    expectAll(sh);
    expect(sh.exit).toBe(0);
  });
});
