// The sync engine over the guest agent: the host tree is a LocalTransport, the "guest" tree is served
// by the real agent binary (running as the unprivileged test user) through AgentTransport. Edits on the
// guest side are made the way a guest would make them: by processes the agent runs.
import { chmodSync, existsSync, mkdtempSync, readdirSync, lstatSync, mkdirSync, readFileSync, renameSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../../src/runtime/vm/agent-client.js';
import { AgentTransport } from '../../../src/runtime/vm/agent-transport.js';
import { SyncEngine, type SyncEngineOptions } from '../../../src/sync/engine.js';
import { LocalTransport } from '../../../src/sync/local-transport.js';
import { readOrNull, snapshot, waitFor, write } from '../../unit/sync/helpers.js';
import { collectStream, startAgent, type RunningAgent } from './agent-harness.js';

let agent: RunningAgent;
let client: AgentClient;
let counter = 0;

beforeAll(async () => {
  agent = await startAgent();
  client = await agent.connect();
});
afterAll(async () => {
  for (const base of bases) rmSync(base, { recursive: true, force: true });
  client?.close();
  await agent?.stop();
});

interface Pair {
  host: string;
  env: string;
  engine: SyncEngine;
  errors: Error[];
}
let pair: Pair | null = null;
const bases: string[] = [];
afterEach(async () => {
  await pair?.engine.stop();
  pair = null;
});

/** host: a directory of this process; env: a directory the agent owns, reached only through the agent. */
function createPair(options: Partial<SyncEngineOptions> = {}): Pair {
  const base = mkdtempSync(join(tmpdir(), 'envy-agent-sync-'));
  const host = join(base, 'host');
  // The agent's user owns agent.dir; the transport makes this directory itself.
  const env = join(agent.dir, `case-${++counter}`);
  mkdirSync(host, { recursive: true });
  bases.push(base);
  const engine = new SyncEngine({
    source: new LocalTransport(host),
    target: new AgentTransport(client, env, 'test'),
    stateDir: join(base, 'state'),
    ...options,
  });
  const errors: Error[] = [];
  engine.on('error', (error) => errors.push(error));
  pair = { host, env, engine, errors };
  return pair;
}

/** Run a shell command in the "guest" (as the agent's user) and fail loudly if it fails. */
async function guest(script: string, ...args: string[]): Promise<string> {
  const exec = client.exec({ argv: ['sh', '-c', script, 'sh', ...args], env: { PATH: '/usr/bin:/bin' } });
  const out = collectStream(exec.stdout);
  const err = collectStream(exec.stderr);
  exec.stdin.end();
  const code = await exec.exit;
  if (code !== 0) throw new Error(`guest command failed (${code}): ${script}: ${await err}`);
  return out;
}

const guestWrite = (path: string, content: string): Promise<string> => guest('mkdir -p "$(dirname "$1")" && printf %s "$2" > "$1"', path, content);

describe('sync over the guest agent', () => {
  it('makes the initial copy: files, directories, modes, times, symlinks, a streamed large file', async () => {
    const p = createPair();
    const large = randomBytes(3 * 1024 * 1024);
    write(join(p.host, 'src/main.c'), 'int main(void) { return 0; }\n');
    write(join(p.host, 'src/deep/er/file.txt'), 'deep');
    write(join(p.host, 'empty'), '');
    write(join(p.host, 'run.sh'), '#!/bin/sh\necho hi\n');
    chmodSync(join(p.host, 'run.sh'), 0o755);
    writeFileSync(join(p.host, 'large.bin'), large);
    symlinkSync('src/main.c', join(p.host, 'link'));
    symlinkSync('/etc/passwd', join(p.host, 'abs-link'));
    mkdirSync(join(p.host, 'empty-dir'));
    write(join(p.host, 'node_modules/pkg/index.js'), 'ignored');
    write(join(p.host, '.gitignore'), 'node_modules/\n');
    await p.engine.start();

    expect(snapshot(p.env)).toEqual(snapshot(p.host, (rel) => rel.startsWith('node_modules')));
    expect(readFileSync(join(p.env, 'large.bin')).equals(large)).toBe(true);
    expect(lstatSync(join(p.env, 'run.sh')).mode & 0o7777).toBe(0o755);
    for (const file of ['src/main.c', 'large.bin', 'run.sh']) {
      expect(Math.abs(lstatSync(join(p.env, file)).mtimeMs - lstatSync(join(p.host, file)).mtimeMs)).toBeLessThan(1);
    }
    expect(existsSync(join(p.env, 'node_modules'))).toBe(false);
    expect(p.engine.status().state).toBe('in-sync');
    expect(p.errors).toEqual([]);
  });

  it('carries host changes into the guest, live', async () => {
    const p = createPair();
    write(join(p.host, 'a.txt'), 'one');
    write(join(p.host, 'dir/b.txt'), 'b');
    await p.engine.start();
    writeFileSync(join(p.host, 'a.txt'), 'two');
    await waitFor(() => readOrNull(join(p.env, 'a.txt')) === 'two', 'a modification');
    write(join(p.host, 'new/nested/c.txt'), 'c');
    await waitFor(() => readOrNull(join(p.env, 'new/nested/c.txt')) === 'c', 'a new nested file');
    renameSync(join(p.host, 'dir'), join(p.host, 'moved'));
    await waitFor(() => readOrNull(join(p.env, 'moved/b.txt')) === 'b' && !existsSync(join(p.env, 'dir')), 'a directory rename');
    unlinkSync(join(p.host, 'a.txt'));
    await waitFor(() => !existsSync(join(p.env, 'a.txt')), 'a deletion');
    // An editor-style save: write a temp file and rename it over the original.
    writeFileSync(join(p.host, 'moved/.b.txt.swp'), 'b2');
    renameSync(join(p.host, 'moved/.b.txt.swp'), join(p.host, 'moved/b.txt'));
    await waitFor(() => readOrNull(join(p.env, 'moved/b.txt')) === 'b2', 'an atomic save');
    await p.engine.flush();
    expect(snapshot(p.env)).toEqual(snapshot(p.host));
    expect(p.errors).toEqual([]);
  });

  it('two-way: guest changes come back to the host (inotify in the agent), deletions of seen files too', async () => {
    const p = createPair({ direction: 'two-way' });
    write(join(p.host, 'from-host.txt'), 'h');
    await p.engine.start();
    expect(readOrNull(join(p.env, 'from-host.txt'))).toBe('h');
    await guestWrite(join(p.env, 'built/out.js'), 'made in the guest');
    await waitFor(() => readOrNull(join(p.host, 'built/out.js')) === 'made in the guest', 'guest → host');
    writeFileSync(join(p.host, 'from-host.txt'), 'h2');
    await waitFor(() => readOrNull(join(p.env, 'from-host.txt')) === 'h2', 'host → guest');
    await guest('rm "$1"', join(p.env, 'from-host.txt'));
    await waitFor(() => !existsSync(join(p.host, 'from-host.txt')), 'a guest deletion of a seen file');
    await guest('mkdir -p "$1/x/y" && echo z > "$1/x/y/z.txt"', join(p.env, 'tree'));
    await waitFor(() => readOrNull(join(p.host, 'tree/x/y/z.txt')) === 'z\n', 'a directory tree made at once in the guest');
    await p.engine.flush();
    expect(snapshot(p.env)).toEqual(snapshot(p.host));
    expect(p.engine.status().conflicts).toEqual([]);
    expect(p.errors).toEqual([]);
  });

  it('two-way: when both sides change a file, both versions are kept and the conflict reported', async () => {
    const now = new Date('2025-03-04T05:06:07.890Z');
    const p = createPair({ direction: 'two-way', batchWindowMs: 60_000, now: () => now });
    write(join(p.host, 'shared.txt'), 'base');
    await p.engine.start();
    writeFileSync(join(p.host, 'shared.txt'), 'host edit');
    await guest('printf %s "guest edit" > "$1"', join(p.env, 'shared.txt'));
    // Let the guest's inotify event reach the engine before flushing the held batch.
    await new Promise((resolve) => setTimeout(resolve, 200));
    await p.engine.flush();
    const conflictName = 'shared.txt.envy-conflict-20250304T050607Z';
    expect(p.engine.status().conflicts.map((c) => c.conflictPath)).toEqual([conflictName]);
    for (const side of [p.host, p.env]) {
      expect(readOrNull(join(side, 'shared.txt'))).toBe('host edit');
      expect(readOrNull(join(side, conflictName))).toBe('guest edit');
    }
  });

  it('two-way: an ignored directory made in the guest is neither copied nor kept under watch', async () => {
    const p = createPair({ direction: 'two-way' });
    write(join(p.host, '.gitignore'), 'node_modules/\n');
    write(join(p.host, 'src/index.js'), 'x');
    await p.engine.start();
    await guest('mkdir -p "$1/node_modules/a/b/c" && for i in 1 2 3; do echo $i > "$1/node_modules/a/b/c/f$i"; done', p.env);
    // Events are handled in order: once a later guest file reaches the host, the prune has been sent.
    await guestWrite(join(p.env, 'src/after.js'), 'later');
    await waitFor(() => readOrNull(join(p.host, 'src/after.js')) === 'later', 'a guest file after the ignored tree');
    await p.engine.flush();
    expect(existsSync(join(p.host, 'node_modules'))).toBe(false);
    // The agent's inotify watches, as the kernel counts them: the root and src, nothing under node_modules.
    const fdDir = `/proc/${agent.process.pid}/fdinfo`;
    const watches = readdirSync(fdDir).flatMap((fd) => {
      try {
        return readFileSync(join(fdDir, fd), 'utf8').split('\n').filter((line) => line.startsWith('inotify wd:'));
      } catch {
        return [];
      }
    });
    expect(watches).toHaveLength(2);
    expect(p.errors).toEqual([]);
  });

  it('the transport never follows a symlink the guest planted on the way', async () => {
    const base = join(agent.dir, `escape-${++counter}`);
    const outside = join(base, 'outside');
    const root = join(base, 'root');
    await guest('mkdir -p "$1" "$2" && ln -s "$1" "$2/dir" && echo secret > "$1/secret"', outside, root);
    const transport = new AgentTransport(client, root);
    await expect(transport.writeFile('dir/planted', Buffer.from('x'), { mode: 0o644, mtimeMs: Date.now() })).rejects.toThrow(/symlink/);
    await expect(transport.readFile('dir/secret')).rejects.toThrow(/symlink/);
    await expect(transport.readDir('dir')).resolves.toEqual([]);
    expect((await transport.stat('dir'))?.type).toBe('symlink');
    expect(existsSync(join(outside, 'planted'))).toBe(false);
    await expect(transport.stat('../x')).rejects.toThrow(/not a plain path/);
  });

  it('file operations report the guest errno as a code', async () => {
    const root = join(agent.dir, `ops-${++counter}`);
    const transport = new AgentTransport(client, root);
    await transport.init();
    expect(await transport.stat('missing')).toBeNull();
    await expect(transport.readFile('missing')).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(transport.hash('missing')).rejects.toMatchObject({ code: 'ENOENT' });
    const written = await transport.writeFile('f.txt', Buffer.from('abc'), { mode: 0o600, mtimeMs: 1_700_000_000_123.456 });
    expect(written).toMatchObject({ type: 'file', mode: 0o600, size: 3 });
    expect(written.mtimeMs).toBeCloseTo(1_700_000_000_123.456, 3);
    expect(await transport.hash('f.txt')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    await transport.mkdir('d', 0o700);
    await transport.rename('f.txt', 'd/g.txt');
    expect((await transport.readDir('d')).map((e) => e.name)).toEqual(['g.txt']);
    await transport.chmod('d/g.txt', 0o644);
    await transport.setMtime('d/g.txt', 1_600_000_000_000);
    expect(await transport.stat('d/g.txt')).toMatchObject({ mode: 0o644, mtimeMs: 1_600_000_000_000 });
    await transport.remove('d');
    expect(await transport.stat('d')).toBeNull();
    rmSync(root, { recursive: true, force: true });
  });
});
