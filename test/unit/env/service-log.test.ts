import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, test } from 'vitest';
import { LineSplitter, LogFollower, RotatingLog, logGenerations } from '../../../src/env/service-log.js';
import { describeChanges } from '../../../src/cli/up.js';
import { makeSpec } from '../plan/helpers.js';
import type { ServiceSpec } from '../../../src/config/types.js';

const svc = (name: string, run: string): ServiceSpec => ({ name, run, restart: 'on-failure', env: {}, stopGrace: 10_000 });

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'envy-log-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const line = (n: number): Buffer => Buffer.from(`line ${String(n).padStart(4, '0')}\n`); // 10 bytes

test('rotation keeps whole lines, at most the size limit per file, and three old generations', () => {
  const path = join(dir, 'web.log');
  const log = new RotatingLog(path, 100);
  for (let i = 0; i < 55; i++) log.write(line(i));
  log.close();
  expect(logGenerations(path)).toEqual([`${path}.3`, `${path}.2`, `${path}.1`, path]);
  expect(existsSync(`${path}.4`)).toBe(false);
  for (const file of logGenerations(path)) {
    const text = readFileSync(file, 'utf8');
    expect(text.length).toBeLessThanOrEqual(100);
    expect(text.endsWith('\n')).toBe(true);
  }
  // The newest 45 lines survive, in order: 10 per full file, 5 in the live one.
  const all = logGenerations(path).map((f) => readFileSync(f, 'utf8')).join('');
  expect(all).toBe(Array.from({ length: 35 }, (_, i) => line(i + 20).toString()).join(''));
});

test('a reopened log appends and rotates on its existing size', () => {
  const path = join(dir, 'db.log');
  const first = new RotatingLog(path, 25);
  first.write(line(1));
  first.write(line(2));
  first.close();
  const second = new RotatingLog(path, 25);
  second.write(line(3));
  second.close();
  expect(readFileSync(`${path}.1`, 'utf8')).toBe('line 0001\nline 0002\n');
  expect(readFileSync(path, 'utf8')).toBe('line 0003\n');
});

test('the follower reads across rotations without loss or repetition', () => {
  const path = join(dir, 'chatty.log');
  const log = new RotatingLog(path, 30);
  log.write(line(0));
  const follower = new LogFollower(path, true);
  let seen = '';
  for (let i = 1; i <= 20; i++) {
    log.write(line(i));
    if (i % 2 === 0) seen += follower.read().toString();
  }
  seen += follower.read().toString();
  log.close();
  follower.close();
  expect(seen).toBe(Array.from({ length: 20 }, (_, i) => line(i + 1).toString()).join(''));
});

test('the line splitter holds back a partial line and flushes it with a newline', () => {
  const split = new LineSplitter();
  expect(split.push(Buffer.from('a\nb')).map(String)).toEqual(['a\n']);
  expect(split.push(Buffer.from('c\nd')).map(String)).toEqual(['bc\n']);
  expect(split.flush().map(String)).toEqual(['d\n']);
  expect(split.flush()).toEqual([]);
});

test('describeChanges names top-level fields and services by name', () => {
  const before = makeSpec({ services: [svc('a', 'run-a'), svc('b', 'run-b'), svc('c', 'run-c')] });
  const after = makeSpec({ env: { K: 'v' }, services: [svc('a', 'run-a'), svc('b', 'run-b2'), svc('d', 'run-d')] });
  expect(describeChanges(before, after)).toEqual(['env', 'services.b', 'services.d (added)', 'services.c (removed)']);
  expect(describeChanges(before, before)).toEqual([]);
});
