/**
 * The kernel agrees with the unpacker: layers whose OCI whiteouts became 0/0
 * character devices and whose opaque dirs carry user.overlay.opaque=y hide the
 * lower layers' files when overlayfs stacks them with `userxattr` inside an
 * unprivileged user namespace (the way envy's runtime mounts them).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { extractLayer } from '../../../src/image/extract.js';
import { makeTar } from '../../unit/image/tar-helpers.js';
import { isRoot, runAsUser, testUser, userTempDir } from '../harness.js';

let scratch: { path: string; remove: () => void };

beforeAll(() => {
  scratch = userTempDir('envy-overlay-');
});
afterAll(() => scratch?.remove());

describe('unpacked whiteouts under a real overlay mount', () => {
  it('hides whited-out files and the lower contents of opaque dirs', async () => {
    const base = join(scratch.path, 'base');
    const top = join(scratch.path, 'top');
    await extractLayer(
      Readable.from([
        await makeTar([
          { name: 'etc/motd', content: 'lower motd' },
          { name: 'etc/keep', content: 'kept' },
          { name: 'var/cache/old', content: 'stale' },
        ]),
      ]),
      base,
      { label: 'base' },
    );
    await extractLayer(
      Readable.from([await makeTar([{ name: 'etc/.wh.motd' }, { name: 'var/cache/.wh..wh..opq' }, { name: 'var/cache/new', content: 'fresh' }])]),
      top,
      { label: 'top' },
    );
    for (const dir of ['upper', 'work', 'merged']) mkdirSync(join(scratch.path, dir));
    if (isRoot()) execFileSync('chown', ['-R', `${testUser()}:`, scratch.path]);
    const s = scratch.path;
    const script = `mount -t overlay overlay -o userxattr,lowerdir=${top}:${base},upperdir=${s}/upper,workdir=${s}/work ${s}/merged && cd ${s}/merged && find . -type f | sort`;
    const result = await runAsUser('unshare', ['--user', '--map-root-user', '--mount', 'sh', '-c', script]);
    if (result.code !== 0 && /mount:.*(permission denied|not supported|unknown filesystem)/i.test(result.stderr)) {
      console.warn(`skipping: this kernel cannot mount overlayfs in a user namespace: ${result.stderr.trim()}`);
      return;
    }
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout.trim().split('\n')).toEqual(['./etc/keep', './var/cache/new']);
  });
});
