import { describe, expect, test } from 'vitest';
import { planToJson, renderPlanTable } from '../../../src/plan/table.js';
import { compile, FIXTURE_PROJECT, makeSpec, setup } from './helpers.js';

const spec = makeSpec({
  name: 'demo',
  packages: { apt: ['git', 'curl'], npm: [], pip: [] },
  env: { EDITOR: 'vi' },
  files: [{ src: 'tools/bootstrap.sh', dest: '/usr/local/bin/bootstrap', mode: '0755' }],
  setup: [setup('echo first\necho second'), { ...setup('npm ci', { inputs: ['package*.json'], user: 'user' }), name: 'node modules' }],
  user: { name: 'dev', uid: 1000, gid: 1000, shell: '/bin/bash' },
});

describe('renderPlanTable', () => {
  test('one aligned row per step with a 12-hex key, then a summary', () => {
    const plan = compile(spec, FIXTURE_PROJECT);
    const short = plan.steps.map((step) => step.key.slice(0, 12));
    expect(renderPlanTable(plan)).toBe(
      [
        '#  kind      key           step',
        `1  base      ${short[0]}  debian bookworm`,
        `2  packages  ${short[1]}  apt: curl git`,
        `3  files     ${short[2]}  copy tools/bootstrap.sh -> /usr/local/bin/bootstrap (0755)`,
        `4  env       ${short[3]}  env: EDITOR`,
        `5  run       ${short[4]}  echo first`,
        `6  user      ${short[5]}  user dev (1000:1000, /home/dev)`,
        `7  run       ${short[6]}  node modules`,
        '',
        `demo: 7 steps, image key ${plan.key.slice(0, 12)}`,
        '',
      ].join('\n'),
    );
  });

  test('the step number column widens past nine steps', () => {
    const many = makeSpec({ setup: Array.from({ length: 10 }, (_, i) => setup(`echo ${i}`)), user: { name: 'dev', uid: 1, gid: 1, shell: '/bin/sh' } });
    const lines = renderPlanTable(compile(many, FIXTURE_PROJECT)).split('\n');
    expect(lines[0]).toMatch(/^ # {2}kind/);
    expect(lines[1]).toMatch(/^ 1 {2}base {2}[0-9a-f]{12} {2}debian bookworm$/);
    expect(lines[12]).toMatch(/^12 {2}user {2}[0-9a-f]{12} {2}user dev/);
  });
});

describe('planToJson', () => {
  test('a versioned, JSON-safe document with every step and its details', () => {
    const plan = compile(spec, FIXTURE_PROJECT);
    const json = planToJson(plan);
    expect(JSON.parse(JSON.stringify(json))).toEqual(json);
    expect(json.version).toBe(1);
    expect(json).toMatchObject({ name: 'demo', key: plan.key, workdir: '/workspace', env: { EDITOR: 'vi' } });
    expect(json.steps.map((step) => [step.index, step.kind, step.parent])).toEqual(plan.steps.map((step, i) => [i + 1, step.kind, i === 0 ? null : plan.steps[i - 1]!.key]));
    expect(json.steps[1]!.details).toEqual({ manager: 'apt', packages: ['curl', 'git'], pinned: {} });
    expect(json.steps[6]!.details).toMatchObject({ name: 'node modules', run: 'npm ci', user: 'user', inputs: [{ path: 'package-lock.json' }, { path: 'package.json' }] });
    expect(Object.keys(json)).toEqual(['version', 'name', 'key', 'workdir', 'env', 'steps']);
  });
});
