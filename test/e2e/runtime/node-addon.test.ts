/**
 * dist/envy-node.node (native/envy-node.c) in a real Node process, as the test user: execve keeps the
 * pid and hands over stdio with clean signal dispositions, a failed execve throws and Node goes on,
 * spawn reports the exit code and fd 3's text, and isatty answers for a pipe.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { envyRoot, runAsUser, type RunResult } from '../harness.js';

const addonPath = (): string => join(envyRoot(), 'dist/envy-node.node');

/** Run `body` in a fresh Node process as the test user, with the addon loaded as `addon`. */
function node(body: string): Promise<RunResult> {
  const script = `const module_ = { exports: {} }; process.dlopen(module_, ${JSON.stringify(addonPath())}); const addon = module_.exports;\n${body}`;
  return runAsUser(process.execPath, ['-e', script]);
}

describe.skipIf(!existsSync(join(envyRoot(), 'dist/envy-node.node')))('the envy-node addon', () => {
  test('execve replaces Node in place: same pid, stdio handed over, no ignored or blocked signals', async () => {
    const result = await node(`
      process.stdout.write('node ' + process.pid + '\\n');
      addon.execve('/bin/sh', ['sh', '-c', 'echo "sh $$"; echo err >&2; grep -E "^Sig(Ign|Blk)" /proc/self/status; exit 7'], ['PATH=/usr/bin:/bin']);
    `);
    expect(result.code).toBe(7);
    const [nodeLine, shLine, ...signals] = result.stdout.trim().split('\n');
    expect(shLine!.split(' ')[1]).toBe(nodeLine!.split(' ')[1]);
    expect(signals).toEqual(['SigBlk:\t0000000000000000', 'SigIgn:\t0000000000000000']);
    expect(result.stderr).toBe('err\n');
  });

  test('a failed execve throws with the reason and leaves Node running', async () => {
    const result = await node(`
      try { addon.execve('/nonexistent/program', ['x'], []); } catch (error) { console.log(error.message); }
      console.log('still here');
    `);
    expect(result.code).toBe(0);
    expect(result.stdout).toBe('execve /nonexistent/program: No such file or directory\nstill here\n');
  });

  test('spawn inherits stdio, passes fd 3 back and reports exit codes and signal deaths', async () => {
    const result = await node(`
      addon.spawn('/bin/sh', ['sh', '-c', 'echo status-line >&3; echo visible; exit 3'], ['PATH=/usr/bin:/bin'], (code, status) => {
        console.log('first', code, JSON.stringify(status));
        addon.spawn('/bin/sh', ['sh', '-c', 'kill -TERM $$'], [], (code2, status2) => console.log('second', code2, JSON.stringify(status2)));
      });
    `);
    expect(result.code).toBe(0);
    expect(result.stdout).toBe('visible\nfirst 3 "status-line\\n"\nsecond 143 ""\n');
  });

  test('children being waited for hold no libuv worker: fs keeps working while five of them run', async () => {
    // Each child waits for a file that only fs.promises (the libuv thread pool, 4 workers) writes.
    const result = await node(`
      const { mkdtempSync, rmSync } = require('node:fs');
      const dir = mkdtempSync('/tmp/envy-addon-');
      let left = 5;
      for (let i = 0; i < 5; i++) {
        addon.spawn('/bin/sh', ['sh', '-c', 'while [ ! -e "$0/go" ]; do sleep 0.05; done; exit $1', dir, String(i)], [], (code) => {
          if (--left === 0) { rmSync(dir, { recursive: true }); console.log('all exited'); }
        });
      }
      require('node:fs').promises.writeFile(dir + '/go', '').then(() => console.log('written'));
    `);
    expect(result.stdout).toBe('written\nall exited\n');
  });

  test('isatty is false for a pipe', async () => {
    const result = await node('console.log(addon.isatty(1), addon.isatty(99));');
    expect(result.stdout).toBe('false false\n');
  });
});
