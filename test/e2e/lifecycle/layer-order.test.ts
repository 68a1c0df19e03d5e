/**
 * Layers stack the right way up: what a later setup step changes (content, a mode, a deletion) is
 * what a later step and the running environment see. The layers once went to envy-ns top first
 * while it takes them lowest first, so the base sat on top and every later change to an earlier
 * file was hidden (found by the python template: `chmod -R a+rwX /opt/venv` in a second step did
 * not show).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { envy, envyRoot, runAsUser, userTempDir, type RunResult } from '../harness.js';

let project: { path: string; remove: () => void };
let home: { path: string; remove: () => void };

const run = (args: string[]): Promise<RunResult> => envy(args, { cwd: project.path, env: { ENVY_HOME: home.path, CI: 'true' } });

describe('layer order', () => {
  beforeAll(() => {
    project = userTempDir('envy-order-');
    home = userTempDir('envy-order-home-');
    writeFileSync(
      join(project.path, 'env.yaml'),
      [
        'name: order',
        'base: {host: true}',
        'setup:',
        '  - run: mkdir -p /opt/d && chmod 700 /opt/d && echo one > /opt/x && echo doomed > /opt/gone',
        '  - run: echo two > /opt/x && chmod 777 /opt/d && rm /opt/gone',
        '  - run: cat /opt/x > /opt/seen-by-a-later-step && ls /opt >> /opt/seen-by-a-later-step',
        '',
      ].join('\n'),
    );
  });
  afterAll(async () => {
    await run(['down', '--rm']);
    await runAsUser(join(envyRoot(), 'dist/envy-ns'), ['userns', '--', 'rm', '-rf', home.path]);
    home.remove();
    project.remove();
  });

  test('a later step overrides an earlier one, in later build steps and at run time', async () => {
    const up = await run(['up']);
    expect(up.code, up.stderr).toBe(0);
    const seen = await run(['exec', '--', 'sh', '-c', 'cat /opt/x; stat -c %a /opt/d; test -e /opt/gone && echo still-there; cat /opt/seen-by-a-later-step']);
    expect(seen.stdout).toBe('two\n777\ntwo\nd\nseen-by-a-later-step\nx\n');
  });
});
