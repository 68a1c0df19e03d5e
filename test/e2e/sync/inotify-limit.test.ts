// The real inotify-limit fallback: the sync engine runs as the unprivileged test user inside a user
// namespace whose own watch budget (/proc/sys/user/max_inotify_watches, per user namespace since Linux
// 5.11) is set far below what the tree needs. The kernel then refuses inotify_add_watch with ENOSPC,
// exactly as on a host whose fs.inotify.max_user_watches is exhausted, while the host's sysctl is never
// touched and no root is needed.
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { build } from 'esbuild';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { asUserArgv, runAsUser, userTempDir } from '../harness.js';

const repo = resolve(import.meta.dirname, '../../..');
/** Far below one watch per directory and file of the tree the runner builds (40 dirs, 80 files). */
const NAMESPACE_WATCH_LIMIT = 30;

// Runs inside the namespace: build a tree, start the engine on inotify, let the kernel refuse the
// watches, then prove that changes made after the fallback arrive without a flush (a flush rescans and
// would hide a watcher that sees nothing).
const RUNNER = `
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
const { SyncEngine, LocalTransport } = await import(process.argv[2]);
const base = process.argv[3];
const host = join(base, 'host');
const env = join(base, 'env');
for (let d = 0; d < 40; d++) {
  mkdirSync(join(host, 'pkg' + d), { recursive: true });
  for (let f = 0; f < 2; f++) writeFileSync(join(host, 'pkg' + d, 'f' + f + '.txt'), d + '/' + f);
}
const engine = new SyncEngine({ source: new LocalTransport(host), target: new LocalTransport(env), pollIntervalMs: 50 });
const warnings = [];
const errors = [];
engine.on('warning', (message) => warnings.push(message));
engine.on('error', (error) => errors.push(String(error)));
const waitFor = async (condition) => {
  const deadline = Date.now() + 60_000;
  while (!condition()) {
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return true;
};
await engine.start();
const fellBack = await waitFor(() => engine.status().watchMode === 'polling');
const initialCopy = existsSync(join(env, 'pkg39', 'f1.txt'));
writeFileSync(join(host, 'pkg7', 'f0.txt'), 'edited after the fallback');
mkdirSync(join(host, 'late'));
writeFileSync(join(host, 'late', 'new.txt'), 'created after the fallback');
const read = (path) => { try { return readFileSync(path, 'utf8'); } catch { return null; } };
const synced = await waitFor(
  () => read(join(env, 'pkg7', 'f0.txt')) === 'edited after the fallback' && read(join(env, 'late', 'new.txt')) === 'created after the fallback',
);
const status = engine.status();
await engine.stop();
console.log(JSON.stringify({ fellBack, initialCopy, synced, watchMode: status.watchMode, warnings, errors }));
`;

interface RunnerResult {
  fellBack: boolean;
  initialCopy: boolean;
  synced: boolean;
  watchMode: string | null;
  warnings: string[];
  errors: string[];
}

function namespaceLimitUnsupported(): string | null {
  const [program, ...args] = asUserArgv();
  try {
    execFileSync(program!, [...args, 'unshare', '--user', '--map-root-user', 'sh', '-c', 'test -w /proc/sys/user/max_inotify_watches'], { stdio: 'ignore' });
    return null;
  } catch {
    return 'this kernel has no writable per-user-namespace inotify limit (/proc/sys/user/max_inotify_watches, Linux 5.11+) or no unprivileged user namespaces';
  }
}

describe('sync over a real inotify limit', () => {
  const unsupported = namespaceLimitUnsupported();
  if (unsupported) console.log(`skipping the inotify-limit e2e test: ${unsupported}`);
  let scratch: { path: string; remove: () => void } | null = null;

  beforeAll(async () => {
    if (unsupported) return;
    scratch = userTempDir('envy-sync-inotify-');
    await build({
      entryPoints: [join(repo, 'src/sync/index.ts')],
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      outfile: join(scratch.path, 'sync.mjs'),
      logLevel: 'error',
    });
    writeFileSync(join(scratch.path, 'runner.mjs'), RUNNER);
    execFileSync('chmod', ['a+r', join(scratch.path, 'sync.mjs'), join(scratch.path, 'runner.mjs')]);
  });

  afterAll(() => scratch?.remove());

  it.skipIf(unsupported !== null)('falls back to polling with a warning naming the limit, and keeps syncing', async () => {
    const dir = scratch!.path;
    // The work tree must belong to the user the namespace maps to root: create it from inside.
    const script =
      `echo ${NAMESPACE_WATCH_LIMIT} > /proc/sys/user/max_inotify_watches && mkdir work && ` +
      `exec ${process.execPath} runner.mjs "$PWD/sync.mjs" "$PWD/work"`;
    const result = await runAsUser('unshare', ['--user', '--map-root-user', 'sh', '-c', script], { cwd: dir, timeoutMs: 180_000 });
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const outcome = JSON.parse(result.stdout.trim().split('\n').at(-1)!) as RunnerResult;
    expect(outcome.fellBack).toBe(true);
    expect(outcome.watchMode).toBe('polling');
    expect(outcome.initialCopy).toBe(true);
    expect(outcome.synced).toBe(true);
    expect(outcome.errors).toEqual([]);
    expect(outcome.warnings).toHaveLength(1);
    expect(outcome.warnings[0]).toContain('ENOSPC');
    expect(outcome.warnings[0]).toContain(`this user namespace allows ${NAMESPACE_WATCH_LIMIT} watches`);
    expect(outcome.warnings[0]).toContain('sudo sysctl fs.inotify.max_user_watches=524288');
  });
});
