import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, test } from 'vitest';
import { acquireLock, processStartTime } from '../../../src/state/lock.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'envy-lock-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

test('a second acquirer waits until the first releases', async () => {
  const path = join(dir, 'env.lock');
  const first = await acquireLock(path, { purpose: 'first' });
  const waited: number[] = [];
  let secondHeld = false;
  const second = acquireLock(path, { purpose: 'second', onWait: (o) => waited.push(o.pid), pollMs: 10 }).then((l) => {
    secondHeld = true;
    return l;
  });
  await new Promise((r) => setTimeout(r, 80));
  expect(secondHeld).toBe(false);
  expect(waited).toEqual([process.pid]);
  first.release();
  (await second).release();
  expect(secondHeld).toBe(true);
  expect(existsSync(path)).toBe(false);
});

test('times out with a BUSY error naming the holder', async () => {
  const path = join(dir, 'env.lock');
  const held = await acquireLock(path, { purpose: 'building' });
  await expect(acquireLock(path, { purpose: 'x', timeoutMs: 50, pollMs: 10 })).rejects.toMatchObject({
    code: 'BUSY',
    exitCode: 8,
    message: expect.stringContaining(`pid ${process.pid} (building)`),
  });
  held.release();
});

test('a lock left by a SIGKILLed process is taken over', async () => {
  const path = join(dir, 'env.lock');
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)']);
  await new Promise((r) => setTimeout(r, 100));
  writeFileSync(path, JSON.stringify({ pid: child.pid, startTime: processStartTime(child.pid!), purpose: 'doomed' }));
  await expect(acquireLock(path, { purpose: 'x', timeoutMs: 30, pollMs: 10 })).rejects.toMatchObject({ code: 'BUSY' });
  child.kill('SIGKILL');
  await new Promise((r) => child.on('exit', r));
  const lock = await acquireLock(path, { purpose: 'after', timeoutMs: 1000 });
  expect(JSON.parse(readFileSync(path, 'utf8')).pid).toBe(process.pid);
  lock.release();
});

test('a reused pid with a different start time is not mistaken for the owner', async () => {
  const path = join(dir, 'env.lock');
  writeFileSync(path, JSON.stringify({ pid: process.pid, startTime: '1', purpose: 'before reboot' }));
  const lock = await acquireLock(path, { purpose: 'now', timeoutMs: 500 });
  lock.release();
});

test('a torn (empty) lock file does not block forever', async () => {
  const path = join(dir, 'env.lock');
  writeFileSync(path, '');
  (await acquireLock(path, { purpose: 'x', timeoutMs: 500 })).release();
});
