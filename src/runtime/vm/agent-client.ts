/**
 * The host side of the guest agent channel (docs/vm-agent.md): one connection to the agent (qemu's
 * virtio-serial chardev socket, or a socket the agent listens on itself in tests) carrying many
 * concurrent execs, file operations and watches, each on its own channel.
 *
 * Flow control is per channel and credit-based in both directions: the agent sends at most WINDOW
 * bytes of output before we grant more, and we grant only as the consumer (a pipe to our stdout, a
 * file being written) takes the bytes, so a command printing gigabytes never grows a buffer here.
 */
import { connect, type Socket } from 'node:net';
import { constants as osConstants } from 'node:os';
import { Readable, Writable } from 'node:stream';
import { EnvyError } from '../../errors.js';
import { A, CHUNK, FrameDecoder, H, MalformedPayload, PROTOCOL_VERSION, Reader, WINDOW, Writer, frame, type DecodedFrame } from './agent-protocol.js';

const errnoNames = new Map<number, string>(Object.entries(osConstants.errno).map(([name, value]) => [value, name]));

/** An errno from the guest as a Node-style error, so callers test `code === 'ENOENT'` as with fs. */
export class AgentErrnoError extends Error {
  readonly errno: number;
  readonly code: string;

  constructor(errno: number, message: string) {
    const code = errnoNames.get(errno) ?? `E${errno}`;
    super(`${message} (${code})`);
    this.name = 'AgentErrnoError';
    this.errno = errno;
    this.code = code;
  }
}

export interface AgentHello {
  version: number;
  arch: string;
  /** The agent's pid in the guest: 1 when it runs as the guest's init. */
  pid: number;
}

export interface ConnectOptions {
  /** Give up after this long without a hello from the agent (a guest boot takes seconds). */
  timeoutMs?: number;
  /** How often to knock again while nobody answers. */
  retryMs?: number;
}

export interface ExecOptions {
  argv: string[];
  /** The complete environment of the process (nothing is inherited from the agent). */
  env?: Record<string, string>;
  /** Working directory; empty or absent keeps the agent's. */
  cwd?: string;
  /** Run as this uid/gid; absent keeps the agent's (root in a guest). */
  uid?: number;
  gid?: number;
  /** Allocate a pty; stdout then carries the terminal's output and stderr stays empty. */
  tty?: boolean;
  rows?: number;
  cols?: number;
}

type ChannelHandler = (f: DecodedFrame) => void;
type ChannelCloser = (error: Error) => void;

interface Channel {
  onFrame: ChannelHandler;
  onClose: ChannelCloser;
  /** Bytes we may still send on this channel, and who waits for more. */
  credit: number;
  creditWaiters: (() => void)[];
}

/** A readable stream of one channel's output whose consumption grants the agent more credit. */
class CreditedReadable extends Readable {
  private held = 0;

  constructor(private readonly grant: (bytes: number) => void) {
    super({ highWaterMark: CHUNK });
  }

  override _read(): void {
    if (this.held > 0) {
      const n = this.held;
      this.held = 0;
      this.grant(n);
    }
  }

  deliver(chunk: Buffer): void {
    if (this.push(chunk)) this.grant(chunk.length);
    else this.held += chunk.length;
  }
}

export class AgentExec {
  readonly stdout: Readable;
  readonly stderr: Readable;
  readonly stdin: Writable;
  /** The process's pid in the guest, once it runs; rejects when it could not be started. */
  readonly started: Promise<number>;
  /** Exit status: the code, or 128+n after signal n. Rejects if the connection is lost. */
  readonly exit: Promise<number>;
  private finished = false;

  constructor(
    private readonly client: AgentClient,
    readonly channel: number,
    parts: {
      stdout: CreditedReadable;
      stderr: CreditedReadable;
      stdin: Writable;
      started: Promise<number>;
      exit: Promise<number>;
    },
  ) {
    this.stdout = parts.stdout;
    this.stderr = parts.stderr;
    this.stdin = parts.stdin;
    this.started = parts.started;
    this.exit = parts.exit;
    this.exit.then(
      () => (this.finished = true),
      () => (this.finished = true),
    );
  }

  /** Send a signal to the process's group (a number or a name like 'SIGINT'). */
  signal(signal: number | NodeJS.Signals): void {
    if (this.finished) return;
    const n = typeof signal === 'number' ? signal : osConstants.signals[signal];
    // The agent treats a bad signal number as a broken stream, which would end every channel.
    if (!Number.isInteger(n) || n < 1 || n > 64) throw new EnvyError('USAGE', `no such signal: ${String(signal)}`);
    this.client.sendFrame(H.signal, this.channel, new Writer().u32(n).done());
  }

  resize(rows: number, cols: number): void {
    if (this.finished) return;
    this.client.sendFrame(H.resize, this.channel, new Writer().u16(rows).u16(cols).done());
  }
}

export interface FileResult {
  /** Payload of the RESULT frame after its errno. */
  result: Reader;
  data: Buffer[];
}

/** A connection that has exchanged hellos, before anyone reads frames from it. */
export interface AgentLink {
  socket: Socket;
  hello: AgentHello;
  decoder: FrameDecoder;
  /** Frames that arrived with the hello. */
  leftover: DecodedFrame[];
}

/** Connect and exchange hellos, retrying until the agent answers (see AgentClient.connect). */
export async function handshake(path: string, options: ConnectOptions = {}): Promise<AgentLink> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  const retryMs = options.retryMs ?? 100;
  const deadline = Date.now() + timeoutMs;
  let lastProblem = 'no answer';
  for (;;) {
    const remaining = deadline - Date.now();
    if (remaining <= 0) break;
    try {
      return await attempt(path, remaining, retryMs);
    } catch (error) {
      if (error instanceof EnvyError) throw error; // a version mismatch does not get better by waiting
      lastProblem = (error as Error).message;
    }
    await new Promise((resolve) => setTimeout(resolve, Math.min(retryMs, Math.max(0, deadline - Date.now()))));
  }
  throw new EnvyError('RUNTIME', `the guest agent did not answer on ${path} within ${Math.round(timeoutMs / 1000)} s (${lastProblem})`, {
    hint: 'see the VM console log (`envy logs --vm`) for how far the guest booted',
  });
}

function attempt(path: string, budgetMs: number, retryMs: number): Promise<AgentLink> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    const decoder = new FrameDecoder();
    const nonce = Math.floor(Math.random() * 0xffffffff);
    let knock: NodeJS.Timeout | undefined;
    const finish = (error: Error | null, link?: AgentLink): void => {
      clearTimeout(timer);
      clearInterval(knock);
      socket.removeListener('data', onData);
      socket.removeListener('error', onError);
      socket.removeListener('close', onClose);
      if (error) {
        socket.destroy();
        reject(error);
      } else resolve(link!);
    };
    const timer = setTimeout(() => finish(new Error('no hello from the agent')), budgetMs);
    const onError = (error: Error): void => finish(error);
    const onClose = (): void => finish(new Error('the connection closed before the agent answered'));
    const onData = (chunk: Buffer): void => {
      let frames: DecodedFrame[];
      try {
        frames = decoder.push(chunk);
      } catch (error) {
        finish(error as Error);
        return;
      }
      const index = frames.findIndex((f) => f.type === A.hello && f.channel === 0 && f.payload.length >= 8 && f.payload.readUInt32BE(4) === nonce);
      if (index === -1) return; // an answer to an earlier knock, or stale output: keep waiting
      const r = new Reader(frames[index]!.payload);
      const version = r.u32();
      r.u32();
      const arch = r.str();
      const pid = r.u32();
      if (version !== PROTOCOL_VERSION) {
        finish(
          new EnvyError('RUNTIME', `the guest agent speaks protocol ${version}, this envy ${PROTOCOL_VERSION}`, {
            hint: 'restart the environment (`envy down`, then `envy up`) so the guest gets the agent of this envy',
          }),
        );
        return;
      }
      finish(null, { socket, hello: { version, arch, pid }, decoder, leftover: frames.slice(index + 1) });
    };
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onClose);
    socket.on('connect', () => {
      const hello = frame(H.hello, 0, new Writer().u32(PROTOCOL_VERSION).u32(nonce).done());
      socket.write(hello);
      // The guest may open its end of the port after our first knock was dropped: knock again.
      knock = setInterval(() => socket.write(hello), Math.max(retryMs, 50));
    });
  });
}

export class AgentClient {
  private readonly channels = new Map<number, Channel>();
  private nextChannel = 1;
  private closedError: Error | null = null;
  private drainWaiters: (() => void)[] = [];
  private readonly closeListeners: ((error: Error) => void)[] = [];

  private constructor(
    private readonly socket: Socket,
    readonly hello: AgentHello,
    decoder: FrameDecoder,
    leftover: DecodedFrame[],
  ) {
    socket.on('data', (chunk: Buffer) => {
      let frames: DecodedFrame[];
      try {
        frames = decoder.push(chunk);
      } catch (error) {
        this.fail(new EnvyError('RUNTIME', `the guest agent sent a malformed frame: ${(error as Error).message}`));
        return;
      }
      for (const f of frames) this.dispatch(f);
    });
    socket.on('drain', () => {
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of waiters) w();
    });
    socket.on('error', (error) => this.fail(new EnvyError('RUNTIME', `the guest agent connection failed: ${error.message}`)));
    socket.on('close', () => this.fail(new EnvyError('RUNTIME', 'the guest agent connection closed')));
    for (const f of leftover) this.dispatch(f);
  }

  /**
   * Connect to the agent's socket and wait for its hello. The socket may not exist yet, refuse, or
   * accept while the guest is still booting (qemu listens before the guest opens its port): keep
   * knocking until the agent answers or the time is up.
   */
  static async connect(path: string, options: ConnectOptions = {}): Promise<AgentClient> {
    const link = await handshake(path, options);
    return new AgentClient(link.socket, link.hello, link.decoder, link.leftover);
  }

  get closed(): boolean {
    return this.closedError !== null;
  }

  onClose(listener: (error: Error) => void): void {
    this.closeListeners.push(listener);
  }

  close(): void {
    if (this.closedError) return;
    this.socket.end();
    this.fail(new EnvyError('RUNTIME', 'the guest agent connection was closed'));
  }

  /**
   * Have the agent run a second agent as `uid`:`gid` on the virtio-serial port named `port`, in a
   * session of its own, after making `dir` (if given) and handing it and the port to that user.
   * Resolves to its pid in the guest (the running one's, when it was started before and lives).
   */
  serve(options: { uid: number; gid: number; port: string; dirs?: string[] }): Promise<number> {
    const id = this.allocate();
    return new Promise<number>((resolve, reject) => {
      this.open(
        id,
        (f) => {
          if (f.type !== A.result) return;
          this.release(id);
          const r = new Reader(f.payload);
          const errno = r.u32();
          if (errno !== 0) reject(new AgentErrnoError(errno, `guest: serve ${options.port} as ${options.uid}:${options.gid}`));
          else resolve(r.u32());
        },
        reject,
      );
      this.sendFrame(H.serve, id, new Writer().u32(options.uid).u32(options.gid).str(options.port).str((options.dirs ?? []).join('\n')).done());
    });
  }

  /** Ask the guest to shut down (processes get SIGTERM, then the VM powers off). */
  async shutdown(): Promise<void> {
    const channel = this.allocate();
    await new Promise<void>((resolve) => {
      this.channels.set(channel, {
        onFrame: () => resolve(),
        onClose: () => resolve(),
        credit: 0,
        creditWaiters: [],
      });
      this.sendFrame(H.shutdown, channel);
    });
  }

  private fail(error: Error): void {
    if (this.closedError) return;
    this.closedError = error;
    this.socket.destroy();
    const channels = [...this.channels.values()];
    this.channels.clear();
    for (const c of channels) c.onClose(error);
    for (const w of this.drainWaiters) w();
    this.drainWaiters = [];
    for (const l of this.closeListeners) l(error);
  }

  private dispatch(f: DecodedFrame): void {
    if (f.channel === 0) {
      if (f.type === A.error) {
        const r = new Reader(f.payload);
        const errno = r.u32();
        this.fail(new EnvyError('RUNTIME', `the guest agent rejected the stream: ${r.str()} (errno ${errno})`));
      }
      return; // late hellos
    }
    const channel = this.channels.get(f.channel);
    if (!channel) return;
    if (f.type === A.credit) {
      channel.credit += f.payload.readUInt32BE(0);
      const waiters = channel.creditWaiters;
      channel.creditWaiters = [];
      for (const w of waiters) w();
      return;
    }
    try {
      channel.onFrame(f);
    } catch (error) {
      if (!(error instanceof MalformedPayload)) throw error;
      this.fail(new EnvyError('RUNTIME', `the guest agent sent a malformed frame on channel ${f.channel}: ${error.message}`));
    }
  }

  /** @internal */
  sendFrame(type: number, channel: number, payload?: Buffer): boolean {
    if (this.closedError) return false;
    return this.socket.write(frame(type, channel, payload));
  }

  private allocate(): number {
    if (this.closedError) throw this.closedError;
    const id = this.nextChannel;
    this.nextChannel = this.nextChannel >= 0xfffffff0 ? 1 : this.nextChannel + 1;
    return id;
  }

  private open(id: number, onFrame: ChannelHandler, onClose: ChannelCloser): Channel {
    const channel: Channel = { onFrame, onClose, credit: WINDOW, creditWaiters: [] };
    this.channels.set(id, channel);
    return channel;
  }

  private release(id: number): void {
    const channel = this.channels.get(id);
    this.channels.delete(id);
    if (channel) for (const w of channel.creditWaiters) w();
  }

  /** Send a byte stream on a channel within its credit and the socket's own backpressure. */
  private async sendData(id: number, data: Buffer): Promise<void> {
    let offset = 0;
    while (offset < data.length) {
      const channel = this.channels.get(id);
      if (!channel || this.closedError) return; // the receiver is gone: what it would not read is dropped
      if (channel.credit === 0) {
        await new Promise<void>((resolve) => channel.creditWaiters.push(resolve));
        continue;
      }
      const n = Math.min(channel.credit, CHUNK, data.length - offset);
      channel.credit -= n;
      const flushed = this.sendFrame(H.stdin, id, data.subarray(offset, offset + n));
      offset += n;
      if (!flushed && !this.closedError) await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
    }
  }

  private dataWritable(id: number, onEnd: () => void): Writable {
    return new Writable({
      highWaterMark: CHUNK,
      write: (chunk: Buffer, _encoding, callback) => {
        this.sendData(id, chunk).then(() => callback(), callback);
      },
      final: (callback) => {
        if (this.channels.has(id)) this.sendFrame(H.stdinEof, id);
        onEnd();
        callback();
      },
    });
  }

  /** Start a process in the guest. Its streams must be consumed (or resumed) for it to make progress. */
  exec(options: ExecOptions): AgentExec {
    const id = this.allocate();
    const grant = (bytes: number): void => {
      if (this.channels.has(id)) this.sendFrame(H.credit, id, new Writer().u32(bytes).done());
    };
    const stdout = new CreditedReadable(grant);
    const stderr = new CreditedReadable(grant);
    let resolveStarted!: (pid: number) => void;
    let rejectStarted!: (error: Error) => void;
    const started = new Promise<number>((resolve, reject) => ((resolveStarted = resolve), (rejectStarted = reject)));
    let resolveExit!: (code: number) => void;
    let rejectExit!: (error: Error) => void;
    const exit = new Promise<number>((resolve, reject) => ((resolveExit = resolve), (rejectExit = reject)));
    // Callers that only await `exit` must not see an unhandled rejection from `started`.
    started.catch(() => undefined);
    const end = (error: Error | null, code?: number): void => {
      this.release(id);
      stdout.push(null);
      stderr.push(null);
      if (error) {
        rejectStarted(error);
        rejectExit(error);
      } else resolveExit(code!);
    };
    this.open(
      id,
      (f) => {
        const r = new Reader(f.payload);
        switch (f.type) {
          case A.started:
            resolveStarted(r.u32());
            break;
          case A.stdout:
            stdout.deliver(f.payload);
            break;
          case A.stderr:
            stderr.deliver(f.payload);
            break;
          case A.exit:
            end(null, r.u32());
            break;
          case A.error: {
            const errno = r.u32();
            end(new AgentErrnoError(errno, r.str()));
            break;
          }
        }
      },
      (error) => end(error),
    );
    const stdin = this.dataWritable(id, () => undefined);
    const env = Object.entries(options.env ?? {}).map(([k, v]) => `${k}=${v}`);
    const w = new Writer()
      .u32(options.tty ? 1 : 0)
      .u32(options.uid ?? 0xffffffff)
      .u32(options.gid ?? 0xffffffff)
      .u16(options.rows ?? 0)
      .u16(options.cols ?? 0)
      .str(options.cwd ?? '')
      .u32(options.argv.length);
    for (const arg of options.argv) w.str(arg);
    w.u32(env.length);
    for (const e of env) w.str(e);
    const payload = w.done();
    if (payload.length > 1 << 20) {
      this.release(id);
      throw new EnvyError('USAGE', `the command line and environment are too large for the guest agent (${payload.length} bytes, limit 1 MiB)`);
    }
    this.sendFrame(H.exec, id, payload);
    return new AgentExec(this, id, { stdout, stderr, stdin, started, exit });
  }

  /**
   * One file operation: zero or more DATA frames, then a RESULT with an errno. A non-zero errno
   * rejects with an AgentErrnoError carrying the code.
   */
  fileOp(payload: Buffer, what: string): Promise<FileResult> {
    const id = this.allocate();
    return new Promise<FileResult>((resolve, reject) => {
      const data: Buffer[] = [];
      this.open(
        id,
        (f) => {
          if (f.type === A.data) data.push(f.payload);
          else if (f.type === A.result) {
            this.release(id);
            const r = new Reader(f.payload);
            const errno = r.u32();
            if (errno !== 0) reject(new AgentErrnoError(errno, `guest: ${what}`));
            else resolve({ result: r, data });
          }
        },
        reject,
      );
      this.sendFrame(H.file, id, payload);
    });
  }

  /** A file's bytes as a stream with credit-based flow; rejects if the file cannot be opened. */
  openRead(payload: Buffer, what: string): Promise<Readable> {
    const id = this.allocate();
    return new Promise<Readable>((resolve, reject) => {
      const stream = new CreditedReadable((bytes) => {
        if (this.channels.has(id)) this.sendFrame(H.credit, id, new Writer().u32(bytes).done());
      });
      stream.on('close', () => {
        if (this.channels.has(id)) {
          this.release(id);
          this.sendFrame(H.close, id);
        }
      });
      let opened = false;
      this.open(
        id,
        (f) => {
          if (f.type === A.started) {
            opened = true;
            resolve(stream);
          } else if (f.type === A.data) stream.deliver(f.payload);
          else if (f.type === A.result) {
            this.release(id);
            const errno = f.payload.readUInt32BE(0);
            const error = errno === 0 ? null : new AgentErrnoError(errno, `guest: ${what}`);
            if (!opened) reject(error ?? new Error('guest: read ended before it began'));
            else if (error) stream.destroy(error);
            else stream.push(null);
          }
        },
        (error) => {
          if (!opened) reject(error);
          else stream.destroy(error);
        },
      );
      this.sendFrame(H.file, id, payload);
    });
  }

  /** A write: the request, then the bytes as a credited stream, then the RESULT. */
  async writeStream(payload: Buffer, data: Buffer | Readable, what: string): Promise<Reader> {
    const id = this.allocate();
    const done = new Promise<Reader>((resolve, reject) => {
      this.open(
        id,
        (f) => {
          if (f.type !== A.result) return;
          this.release(id);
          const r = new Reader(f.payload);
          const errno = r.u32();
          if (errno !== 0) reject(new AgentErrnoError(errno, `guest: ${what}`));
          else resolve(r);
        },
        reject,
      );
    });
    done.catch(() => undefined);
    this.sendFrame(H.file, id, payload);
    try {
      if (Buffer.isBuffer(data)) {
        await this.sendData(id, data);
      } else {
        for await (const chunk of data) {
          if (!this.channels.has(id)) break;
          await this.sendData(id, chunk as Buffer);
        }
      }
    } catch (error) {
      // The source failed: abandon the write, and the agent removes its temp file.
      if (this.channels.has(id)) {
        this.release(id);
        this.sendFrame(H.close, id);
      }
      if (!Buffer.isBuffer(data)) data.destroy();
      throw error;
    }
    if (this.channels.has(id)) this.sendFrame(H.stdinEof, id);
    return done;
  }

  /** Watch a tree in the guest; events arrive as DATA payloads until close. */
  async watch(root: string, onData: (payload: Buffer) => void, onClose: (error: Error) => void): Promise<{ prune(rel: string): void; close(): void }> {
    const id = this.allocate();
    await new Promise<void>((resolve, reject) => {
      let ready = false;
      this.open(
        id,
        (f) => {
          if (f.type === A.result && !ready) {
            const errno = f.payload.readUInt32BE(0);
            if (errno !== 0) {
              this.release(id);
              reject(new AgentErrnoError(errno, `guest: watch ${root}`));
            } else {
              ready = true;
              resolve();
            }
          } else if (f.type === A.data) onData(f.payload);
        },
        (error) => (ready ? onClose(error) : reject(error)),
      );
      this.sendFrame(H.watch, id, new Writer().str(root).done());
    });
    return {
      prune: (rel: string) => {
        if (this.channels.has(id)) this.sendFrame(H.prune, id, new Writer().str(rel).done());
      },
      close: () => {
        if (!this.channels.has(id)) return;
        this.release(id);
        this.sendFrame(H.close, id);
      },
    };
  }
}

export interface AttachStdio {
  stdin: NodeJS.ReadStream | Readable;
  stdout: NodeJS.WriteStream | Writable;
  stderr: NodeJS.WriteStream | Writable;
}

/**
 * Run a command with this process's stdio attached: a pty when both ends are terminals (raw mode,
 * window size following SIGWINCH), otherwise pipes with SIGINT/SIGTERM/SIGHUP/SIGQUIT forwarded to
 * the remote process. Resolves to the exit status (128+n after signal n).
 */
export async function execAttached(client: AgentClient, options: Omit<ExecOptions, 'rows' | 'cols'>, stdio: AttachStdio = process): Promise<number> {
  const input = stdio.stdin as NodeJS.ReadStream;
  const output = stdio.stdout as NodeJS.WriteStream;
  const tty = options.tty ?? (Boolean(input.isTTY) && Boolean(output.isTTY));
  const exec = client.exec({ ...options, tty, rows: output.rows, cols: output.columns });
  const cleanups: (() => void)[] = [];
  if (tty && input.isTTY) {
    input.setRawMode(true);
    cleanups.push(() => input.setRawMode(false));
    const onWinch = (): void => exec.resize(output.rows, output.columns);
    process.on('SIGWINCH', onWinch);
    cleanups.push(() => process.removeListener('SIGWINCH', onWinch));
  } else {
    for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'] as const) {
      const forward = (): void => exec.signal(signal);
      process.on(signal, forward);
      cleanups.push(() => process.removeListener(signal, forward));
    }
  }
  const outputsDone = Promise.all([
    new Promise<void>((resolve) => exec.stdout.on('end', resolve).pipe(stdio.stdout, { end: false })),
    new Promise<void>((resolve) => exec.stderr.on('end', resolve).pipe(stdio.stderr, { end: false })),
  ]);
  stdio.stdin.pipe(exec.stdin);
  try {
    const code = await exec.exit;
    await outputsDone;
    return code;
  } finally {
    stdio.stdin.unpipe(exec.stdin);
    // Leave our stdin as we found it, so Node can exit without waiting on a terminal read.
    if (stdio.stdin === process.stdin) process.stdin.pause();
    for (const cleanup of cleanups) cleanup();
  }
}
