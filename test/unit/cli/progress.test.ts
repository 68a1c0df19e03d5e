import { EventEmitter } from 'node:events';
import { describe, expect, test, vi } from 'vitest';

// ink decides when its module loads whether it runs under CI, and then paints only the last frame at
// unmount. The reporter never picks ink under CI (plain mode); this file tests the live view itself.
vi.hoisted(() => {
  process.env.CI = 'false';
});
import { formatBytes, formatDuration, type ProgressEvent } from '../../../src/cli/ui/events.js';
import { applyEvent, emptyViewState, InkReporter } from '../../../src/cli/ui/ink-reporter.js';
import { PlainReporter, QuietReporter, colorEnabled, resolveMode } from '../../../src/cli/ui/reporter.js';

const plan: ProgressEvent = {
  type: 'plan',
  steps: [
    { key: 'a'.repeat(64), label: 'base debian:bookworm', kind: 'base' },
    { key: 'b'.repeat(64), label: 'apt install curl git', kind: 'packages' },
    { key: 'c'.repeat(64), label: 'run make', kind: 'run' },
  ],
};

function fakeStream(isTTY: boolean): NodeJS.WriteStream & { output: string } {
  const stream = new EventEmitter() as NodeJS.WriteStream & { output: string };
  stream.output = '';
  Object.assign(stream, { isTTY, columns: 100, rows: 40, write: (chunk: string) => ((stream.output += chunk), true) });
  return stream;
}

describe('plain progress', () => {
  test('one line per event, steps numbered, output lines indented', () => {
    const lines: string[] = [];
    const r = new PlainReporter((l) => lines.push(l));
    r.report(plan);
    r.report({ type: 'step-cached', key: 'a'.repeat(64) });
    r.report({ type: 'step-start', key: 'b'.repeat(64) });
    r.report({ type: 'step-output', key: 'b'.repeat(64), line: 'Setting up curl' });
    r.report({ type: 'step-done', key: 'b'.repeat(64), ms: 1500 });
    r.report({ type: 'step-failed', key: 'c'.repeat(64), ms: 20, message: 'exit 2' });
    r.report({ type: 'warning', text: 'no cgroups' });
    expect(lines).toEqual([
      '[1/3] base debian:bookworm: cached',
      '[2/3] apt install curl git: running',
      '  | Setting up curl',
      '[2/3] apt install curl git: done in 1.5s',
      '[3/3] run make: FAILED after 20ms: exit 2',
      'warning: no cgroups',
    ]);
  });

  test('downloads print at each quarter, not per chunk', () => {
    const lines: string[] = [];
    const r = new PlainReporter((l) => lines.push(l));
    for (let done = 0; done <= 1000; done += 50) r.report({ type: 'download', id: 'x', label: 'layer 1', done, total: 1000 });
    expect(lines).toHaveLength(5);
    expect(lines.at(-1)).toBe('download layer 1: 1000 B / 1000 B');
  });

  test('quiet shows only warnings and failures', () => {
    const lines: string[] = [];
    const r = new QuietReporter((l) => lines.push(l));
    r.report(plan);
    r.report({ type: 'step-start', key: 'a'.repeat(64) });
    r.report({ type: 'message', text: 'hello' });
    r.report({ type: 'warning', text: 'careful' });
    r.report({ type: 'step-failed', key: 'c'.repeat(64), ms: 1, message: 'boom' });
    expect(lines).toEqual(['warning: careful', 'step failed: boom']);
  });
});

describe('mode and colour selection', () => {
  test('plain when not a terminal, under CI, or TERM=dumb; tty otherwise', () => {
    expect(resolveMode('auto', fakeStream(false), {})).toBe('plain');
    expect(resolveMode('auto', fakeStream(true), { CI: 'true' })).toBe('plain');
    expect(resolveMode('auto', fakeStream(true), { TERM: 'dumb' })).toBe('plain');
    expect(resolveMode('auto', fakeStream(true), {})).toBe('tty');
    expect(resolveMode('plain', fakeStream(true), {})).toBe('plain');
    expect(resolveMode('quiet', fakeStream(true), {})).toBe('quiet');
  });

  test('NO_COLOR turns colour off', () => {
    expect(colorEnabled(fakeStream(true), {})).toBe(true);
    expect(colorEnabled(fakeStream(true), { NO_COLOR: '1' })).toBe(false);
    expect(colorEnabled(fakeStream(false), {})).toBe(false);
  });
});

describe('ink view', () => {
  test('state follows events; finished downloads leave the live area', () => {
    let s = applyEvent(emptyViewState(), plan, 0);
    s = applyEvent(s, { type: 'step-start', key: 'b'.repeat(64) }, 1000);
    s = applyEvent(s, { type: 'step-output', key: 'b'.repeat(64), line: 'Unpacking' }, 1100);
    expect(s.states['b'.repeat(64)]).toEqual({ status: 'running', startedAt: 1000, lastLine: 'Unpacking' });
    s = applyEvent(s, { type: 'download', id: 'l1', label: 'sha256:abc', done: 10, total: 100 }, 0);
    expect(s.downloads).toHaveLength(1);
    s = applyEvent(s, { type: 'download', id: 'l1', label: 'sha256:abc', done: 100, total: 100 }, 0);
    expect(s.downloads).toHaveLength(0);
  });

  test('renders each step with its status into a terminal stream, without colour under NO_COLOR', async () => {
    const stream = fakeStream(true);
    const r = new InkReporter(stream, false);
    r.report(plan);
    r.report({ type: 'step-cached', key: 'a'.repeat(64) });
    r.report({ type: 'step-start', key: 'b'.repeat(64) });
    r.report({ type: 'step-output', key: 'b'.repeat(64), line: 'Get:1 http://deb.debian.org bookworm InRelease' });
    r.report({ type: 'download', id: 'l1', label: 'layer 1', done: 512, total: 2048 });
    await new Promise((resolve) => setTimeout(resolve, 50));
    const frame = stream.output;
    expect(frame).toContain('✓ base debian:bookworm (cached)');
    expect(frame).toContain('▸ apt install curl git');
    expect(frame).toContain('Get:1 http://deb.debian.org bookworm InRelease');
    expect(frame).toContain('↓ layer 1 512 B / 2.0 KiB');
    expect(frame).toContain('· run make');
    r.report({ type: 'step-done', key: 'b'.repeat(64), ms: 2500 });
    r.report({ type: 'step-done', key: 'c'.repeat(64), ms: 10 });
    await r.close();
    expect(stream.output).toContain('✓ apt install curl git 2.5s');
    // eslint-disable-next-line no-control-regex
    expect(stream.output).not.toMatch(/\u001b\[3\dm/);
  });
});

test('formatting helpers', () => {
  expect(formatBytes(0)).toBe('0 B');
  expect(formatBytes(1536)).toBe('1.5 KiB');
  expect(formatBytes(5 * 2 ** 30)).toBe('5.0 GiB');
  expect(formatDuration(999)).toBe('999ms');
  expect(formatDuration(61_000)).toBe('1m01s');
});
