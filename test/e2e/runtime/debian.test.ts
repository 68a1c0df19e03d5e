/**
 * A real distribution under the full subordinate map: a minbase Debian bookworm made by
 * mmdebstrap (root -> the first subuid, as the runtime maps it), then apt-get installs a package
 * as root inside, which needs setgroups, seteuid to _apt and chown to many ids.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runAsUser } from '../harness.js';
import { baseConfig, drive, makeWorkspace, shell, type Workspace } from './fixtures.js';

let ws: Workspace;
let debian: string;

beforeAll(async () => {
  ws = await makeWorkspace();
  debian = join(ws.dir, 'bookworm');
  // Built once per file and reused by every test here (~30 s).
  const r = await runAsUser('mmdebstrap', ['--mode=unshare', '--variant=minbase', '--quiet', 'bookworm', debian], { timeoutMs: 280_000 });
  if (r.code !== 0) throw new Error(`mmdebstrap failed (${r.code}): ${r.stderr.slice(-2000)}`);
}, 300_000);

afterAll(async () => {
  await ws?.remove();
});

describe('Debian rootfs', () => {
  it('apt-get installs a package as root inside, and it runs for the keep-id user', async () => {
    const upper = join(ws.dir, 'upper');
    const work = join(ws.dir, 'work');
    await runAsUser('mkdir', ['-p', upper, work]);
    const config = baseConfig(ws, { rootfs: { layers: [debian], upper, work } });
    const env = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/root', DEBIAN_FRONTEND: 'noninteractive' };
    const install = await drive(ws, 'runOnce', { config, process: shell('apt-get update -qq && apt-get install -y -qq hello >/dev/null && hello', { root: true, env }) }, 240_000);
    expect(install.stderr).not.toMatch(/setgroups|seteuid/);
    expect(install.code).toBe(0);
    expect(install.stdout).toContain('Hello, world!');
    // The package persists in the upper dir and runs as the ordinary user in a later run.
    const run = await drive(ws, 'runOnce', { config, process: shell('id -un; hello -g hi', { env: { ...env, HOME: '/home/envtest' } }) });
    expect(run.code).toBe(0);
    expect(run.stdout.trim().split('\n')[1]).toBe('hi');
    const owners = await drive(ws, 'runOnce', { config, process: shell('stat -c %U /usr/bin/hello /var/cache/apt/archives/partial', { env }) });
    expect(owners.stdout.trim().split('\n')).toEqual(['root', '_apt']);
  }, 300_000);
});
