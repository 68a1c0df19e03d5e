// The guest agent's exec path, for real: the static agent binary runs on the host as the unprivileged
// test user over a unix socket, and the host client drives it (no VM needed for the protocol).
import { createHash, randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { PassThrough, Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient, execAttached, type ExecOptions } from '../../../src/runtime/vm/agent-client.js';
import { FrameDecoder, H, A, Reader, frame, Writer } from '../../../src/runtime/vm/agent-protocol.js';
import { collectStream, startAgent, type RunningAgent } from './agent-harness.js';

let agent: RunningAgent;
let client: AgentClient;

beforeAll(async () => {
  agent = await startAgent();
  client = await agent.connect();
});
afterAll(async () => {
  client?.close();
  await agent?.stop();
});

const ENV = { PATH: '/usr/local/bin:/usr/bin:/bin', LANG: 'C.UTF-8' };

async function run(argv: string[], options: Partial<ExecOptions> & { input?: string | Buffer } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const exec = client.exec({ env: ENV, ...options, argv });
  const stdout = collectStream(exec.stdout);
  const stderr = collectStream(exec.stderr);
  exec.stdin.end(options.input ?? '');
  return { code: await exec.exit, stdout: await stdout, stderr: await stderr };
}

describe('guest agent: exec', () => {
  it('says hello with its architecture', () => {
    expect(client.hello.version).toBe(1);
    expect(client.hello.arch).toBe(process.arch === 'arm64' ? 'aarch64' : 'x86_64');
    expect(client.hello.pid).toBe(agent.process.pid);
  });

  it('passes exit codes through', async () => {
    expect((await run(['true'])).code).toBe(0);
    expect((await run(['false'])).code).toBe(1);
    expect((await run(['sh', '-c', 'exit 42'])).code).toBe(42);
  });

  it('reports death by signal as 128+n', async () => {
    expect((await run(['sh', '-c', 'kill -INT $$'])).code).toBe(130);
    const exec = client.exec({ argv: ['sleep', '30'], env: ENV });
    exec.stdout.resume();
    exec.stderr.resume();
    await exec.started;
    exec.signal('SIGKILL');
    expect(await exec.exit).toBe(137);
  });

  it('forwards a signal to the process group', async () => {
    const exec = client.exec({ argv: ['sh', '-c', 'trap "echo got-term; exit 7" TERM; echo ready; while :; do sleep 0.05; done'], env: ENV });
    exec.stderr.resume();
    let out = '';
    await new Promise<void>((resolve) => exec.stdout.on('data', (d: Buffer) => (out += d.toString()).includes('ready') && resolve()));
    exec.signal('SIGTERM');
    expect(await exec.exit).toBe(7);
    await new Promise((resolve) => setImmediate(resolve));
    expect(out).toContain('got-term');
  });

  it('runs with the given environment and working directory, nothing inherited', async () => {
    const result = await run(['sh', '-c', 'pwd; echo "$FOO"; echo "${HOME-unset}"'], { env: { ...ENV, FOO: 'bar baz' }, cwd: '/tmp' });
    expect(result).toEqual({ code: 0, stdout: '/tmp\nbar baz\nunset\n', stderr: '' });
  });

  it('separates stdout and stderr and carries stdin', async () => {
    const result = await run(['sh', '-c', 'read line; echo "out:$line"; echo "err:$line" >&2'], { input: 'hello\n' });
    expect(result).toEqual({ code: 0, stdout: 'out:hello\n', stderr: 'err:hello\n' });
  });

  it('streams large data both ways with backpressure', async () => {
    const size = 64 * 1024 * 1024;
    const payload = randomBytes(size);
    const exec = client.exec({ argv: ['sha256sum'], env: ENV });
    const out = collectStream(exec.stdout);
    exec.stderr.resume();
    exec.stdin.end(payload);
    expect(await exec.exit).toBe(0);
    expect((await out).split(' ')[0]).toBe(createHash('sha256').update(payload).digest('hex'));

    // Output: 64 MiB from the guest into a consumer that is slow at first; nothing may be lost.
    const big = client.exec({ argv: ['head', '-c', String(size), '/dev/zero'], env: ENV });
    big.stderr.resume();
    let received = 0;
    let maxBuffered = 0;
    const slow = new Writable({
      highWaterMark: 16 * 1024,
      write(chunk: Buffer, _e, cb) {
        received += chunk.length;
        maxBuffered = Math.max(maxBuffered, big.stdout.readableLength);
        if (received < 4 * 1024 * 1024) setTimeout(cb, 1);
        else cb();
      },
    });
    const drained = finished(big.stdout.pipe(slow));
    expect(await big.exit).toBe(0);
    await drained;
    expect(received).toBe(size);
    // The client never buffers more than its stream's high-water mark plus one window from the agent.
    expect(maxBuffered).toBeLessThanOrEqual(64 * 1024 + 256 * 1024);
  });

  it('a process that is not read from stops, and continues when read', async () => {
    const exec = client.exec({ argv: ['sh', '-c', 'head -c 3000000 /dev/zero; echo done >&2'], env: ENV });
    let err = '';
    exec.stderr.on('data', (d: Buffer) => (err += d.toString()));
    await exec.started;
    await new Promise((resolve) => setTimeout(resolve, 300));
    // Only the window (256 KiB) plus the pipe buffer can have left the process: it must still be writing.
    expect(err).toBe('');
    const out = await collectStream(exec.stdout);
    expect(out.length).toBe(3_000_000);
    expect(await exec.exit).toBe(0);
    expect(err).toBe('done\n');
  });

  it('multiplexes concurrent execs over one connection', async () => {
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) => run(['sh', '-c', `sleep 0.$((${i} % 3)); head -c ${100_000 + i} /dev/zero | tr '\\0' x; exit ${i}`])),
    );
    results.forEach((r, i) => {
      expect(r.code).toBe(i);
      expect(r.stdout.length).toBe(100_000 + i);
    });
  });

  it('rejects a command that cannot start with the reason', async () => {
    await expect(client.exec({ argv: ['/no/such/program'], env: ENV }).exit).rejects.toThrow(/cannot run \/no\/such\/program: No such file or directory \(ENOENT\)/);
    await expect(client.exec({ argv: ['true'], env: ENV, cwd: '/no/such/dir' }).exit).rejects.toThrow(/working directory \/no\/such\/dir/);
  });

  it('runs in a pty: a terminal, with its size, following resizes', async () => {
    const exec = client.exec({
      argv: ['sh', '-c', 'tty; stty size; read go; stty size; exit 3'],
      env: { ...ENV, TERM: 'xterm' },
      tty: true,
      rows: 30,
      cols: 100,
    });
    let out = '';
    exec.stdout.on('data', (d: Buffer) => (out += d.toString()));
    exec.stderr.resume();
    const waitFor = async (text: string): Promise<void> => {
      const deadline = Date.now() + 10_000;
      while (!out.includes(text)) {
        if (Date.now() > deadline) throw new Error(`no "${text}" in ${JSON.stringify(out)}`);
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    };
    await waitFor('30 100');
    exec.resize(50, 132);
    exec.stdin.write('go\n');
    expect(await exec.exit).toBe(3);
    await waitFor('50 132');
    expect(out).toMatch(/^\/dev\/pts\/\d+\r\n30 100\r\n/);
  });

  it('attaches this process stdio (pipes when not a terminal)', async () => {
    const stdin = new PassThrough();
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    const out = collectStream(stdout);
    stdin.end('abc');
    const code = await execAttached(client, { argv: ['sh', '-c', 'cat; echo; [ -t 0 ] || echo not-a-tty >&2; exit 5'], env: ENV }, { stdin, stdout, stderr });
    expect(code).toBe(5);
    stdout.end();
    expect(await out).toBe('abc\n');
  });
});

describe('guest agent: the stream itself', () => {
  async function raw(bytes: Buffer): Promise<{ frames: { type: number; channel: number; payload: Buffer }[]; closed: boolean }> {
    const socket = connect(agent.socket);
    const decoder = new FrameDecoder();
    const frames: { type: number; channel: number; payload: Buffer }[] = [];
    socket.on('data', (d: Buffer) => frames.push(...decoder.push(d)));
    const closed = new Promise<boolean>((resolve) => {
      socket.on('close', () => resolve(true));
      setTimeout(() => resolve(false), 5000);
    });
    socket.on('error', () => undefined);
    socket.on('connect', () => socket.write(bytes));
    const wasClosed = await closed;
    socket.destroy();
    return { frames, closed: wasClosed };
  }

  it('rejects malformed frames with an error and a hang-up, then serves the next connection', async () => {
    // The agent serves one host at a time: let go of the shared client first.
    client.close();
    const oversized = Buffer.alloc(9);
    oversized.writeUInt8(H.exec, 0);
    oversized.writeUInt32BE(1, 1);
    oversized.writeUInt32BE(0x7fffffff, 5);
    const unknownType = frame(0x55, 1, Buffer.from('x'));
    const badExec = frame(H.exec, 1, new Writer().u32(0).u32(0).done());
    for (const bytes of [oversized, unknownType, badExec]) {
      const { frames, closed } = await raw(bytes);
      expect(closed).toBe(true);
      const error = frames.find((f) => f.type === A.error && f.channel === 0);
      expect(error, `an error frame for ${bytes.subarray(0, 9).toString('hex')}`).toBeDefined();
      const r = new Reader(error!.payload);
      r.u32();
      expect(r.str()).toMatch(/^protocol error: /);
    }
    // Reconnect after every disconnect: the agent is still serving.
    client = await agent.connect();
    expect((await run(['sh', '-c', 'exit 9'])).code).toBe(9);
  });

  it('kills the processes of a host that went away, and serves the next', async () => {
    const exec = client.exec({ argv: ['sh', '-c', 'echo $$; exec sleep 300'], env: ENV });
    exec.stderr.resume();
    const pid = Number((await new Promise<Buffer>((resolve) => exec.stdout.once('data', resolve))).toString().trim());
    client.close();
    await expect(exec.exit).rejects.toThrow(/closed/);
    const deadline = Date.now() + 5000;
    const alive = (): boolean => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    while (alive() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(alive()).toBe(false);
    client = await agent.connect();
    expect((await run(['echo', 'back'])).stdout).toBe('back\n');
  });
});
