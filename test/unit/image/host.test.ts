import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, test } from 'vitest';
import { createHostBaseLayer, hostBaseMounts } from '../../../src/image/host.js';

let work: string;
let host: string;
let layer: string;
beforeEach(() => {
  work = mkdtempSync(join(tmpdir(), 'envy-hostbase-'));
  host = join(work, 'host');
  layer = join(work, 'layer');
  mkdirSync(join(host, 'usr/bin'), { recursive: true });
  mkdirSync(join(host, 'usr/lib'), { recursive: true });
  mkdirSync(join(host, 'etc/ssl/certs'), { recursive: true });
  mkdirSync(join(host, 'etc/alternatives'), { recursive: true });
  symlinkSync('usr/bin', join(host, 'bin'));
  symlinkSync('usr/lib', join(host, 'lib'));
  writeFileSync(join(host, 'etc/ld.so.cache'), 'cache');
  writeFileSync(join(host, 'etc/ssl/certs/ca.pem'), 'pem');
  mkdirSync(join(host, 'etc/ssl/private'));
  writeFileSync(join(host, 'etc/ssl/private/server.key'), 'KEY');
  symlinkSync('/usr/bin/vim.basic', join(host, 'etc/alternatives/editor'));
  writeFileSync(join(host, 'etc/passwd'), 'root:x:0:0::/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n');
  writeFileSync(join(host, 'etc/shadow'), 'alice:$6$secret:::\n');
  writeFileSync(join(host, 'etc/machine-id'), 'abc');
  mkdirSync(layer);
});
afterEach(() => rmSync(work, { recursive: true, force: true }));

test('copies the loader, certificates and alternatives, keeping symlinks as links', () => {
  createHostBaseLayer(layer, { hostRoot: host });
  expect(readFileSync(join(layer, 'etc/ld.so.cache'), 'utf8')).toBe('cache');
  expect(readFileSync(join(layer, 'etc/ssl/certs/ca.pem'), 'utf8')).toBe('pem');
  expect(readlinkSync(join(layer, 'etc/alternatives/editor'))).toBe('/usr/bin/vim.basic');
  expect(readlinkSync(join(layer, 'bin'))).toBe('usr/bin');
  expect(lstatSync(join(layer, 'usr')).isDirectory()).toBe(true);
  expect(lstatSync(join(layer, 'var/tmp')).mode & 0o7777).toBe(0o1777);
});

test("never copies the host's accounts, secrets or identity", () => {
  createHostBaseLayer(layer, { hostRoot: host });
  expect(readFileSync(join(layer, 'etc/passwd'), 'utf8')).not.toContain('alice');
  expect(readFileSync(join(layer, 'etc/shadow'), 'utf8')).not.toContain('secret');
  expect(existsSync(join(layer, 'etc/machine-id'))).toBe(false);
  expect(existsSync(join(layer, 'etc/ssl/private'))).toBe(false);
});

test('refuses a host without merged /usr', () => {
  rmSync(join(host, 'bin'));
  mkdirSync(join(host, 'bin'));
  expect(() => createHostBaseLayer(layer, { hostRoot: host })).toThrow(/needs a merged-\/usr host/);
});

test('binds the host /usr read-only', () => {
  expect(hostBaseMounts(host)).toEqual([{ type: 'bind', source: join(host, 'usr'), target: '/usr', readonly: true }]);
});
