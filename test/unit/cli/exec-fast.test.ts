import { describe, expect, it } from 'vitest';
import { parseFastExecArgs } from '../../../src/cli/exec-fast.js';

describe('the envy exec fast path takes exactly the options it understands', () => {
  it('parses -e, -w, --root and -f before --', () => {
    expect(parseFastExecArgs(['exec', '-e', 'A=1=2', '--env', 'B=', '-w', '/src', '--root', '-f', 'x/env.yaml', '--', 'sh', '-c', 'echo --'])).toEqual({
      env: { A: '1=2', B: '' },
      workdir: '/src',
      root: true,
      file: 'x/env.yaml',
      argv: ['sh', '-c', 'echo --'],
    });
  });

  it('hands anything else to the full CLI (which reports errors properly)', () => {
    for (const argv of [
      ['plan'],
      ['exec', 'true'],
      ['exec', '--'],
      ['exec', '-e', 'NOEQUALS', '--', 'true'],
      ['exec', '-e', '=x', '--', 'true'],
      ['exec', '-w', '--', 'true'],
      ['exec', '--debug', '--', 'true'],
      ['exec', '--help', '--', 'true'],
    ]) {
      expect(parseFastExecArgs(argv), argv.join(' ')).toBeUndefined();
    }
  });
});
