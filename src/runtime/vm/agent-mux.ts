/**
 * Many envy processes, one guest agent. qemu's chardev socket takes a single connection and the agent
 * serves one host at a time, yet `envy shell` in one terminal must not block `envy exec` in another.
 * The mux holds the one connection to the agent and listens on its own unix socket; every client
 * speaks the same protocol to it (AgentClient.connect works unchanged) and the mux renumbers channels
 * between them. Frames are forwarded as they are, credits included, so flow control stays end to end.
 *
 * When a client goes away, its open channels are closed at the agent (its processes are killed, as
 * they would be if it had been the agent's only host). When the agent's connection is lost, every
 * client is disconnected and `closed` resolves: the owner decides whether the VM is gone.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { rmSync } from 'node:fs';
import { handshake, type ConnectOptions } from './agent-client.js';
import { A, FrameDecoder, H, Writer, frame, type DecodedFrame } from './agent-protocol.js';

type Kind = 'exec' | 'file' | 'watch' | 'shutdown';

interface Route {
  client: Downstream;
  /** The client's own number for the channel. */
  channel: number;
  kind: Kind;
}

interface Downstream {
  socket: Socket;
  /** client channel → agent channel */
  channels: Map<number, number>;
}

const OPENING: Partial<Record<number, Kind>> = { [H.exec]: 'exec', [H.file]: 'file', [H.watch]: 'watch', [H.shutdown]: 'shutdown' };

/** Whether this agent frame is the last one of its channel. */
function ends(kind: Kind, f: DecodedFrame): boolean {
  if (f.type === A.error) return true;
  if (kind === 'exec') return f.type === A.exit;
  if (kind === 'watch') return f.type === A.result && f.payload.length >= 4 && f.payload.readUInt32BE(0) !== 0;
  return f.type === A.result;
}

export class AgentMux {
  private readonly routes = new Map<number, Route>();
  private readonly clients = new Set<Downstream>();
  private nextChannel = 1;
  private done = false;
  private resolveClosed!: (reason: Error) => void;
  /** Resolves with the reason when the agent connection is lost or close() was called. */
  readonly closed = new Promise<Error>((resolve) => (this.resolveClosed = resolve));

  private constructor(
    private readonly upstream: Socket,
    private readonly helloInfo: { version: number; arch: string; pid: number },
    private readonly server: Server,
    readonly path: string,
  ) {}

  /** Connect to the agent at `agentPath` (waiting for it as AgentClient.connect does) and listen on `listenPath`. */
  static async start(agentPath: string, listenPath: string, options: ConnectOptions = {}): Promise<AgentMux> {
    const link = await handshake(agentPath, options);
    rmSync(listenPath, { force: true });
    const server = createServer();
    const mux = new AgentMux(link.socket, link.hello, server, listenPath);
    server.on('connection', (socket) => mux.accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(listenPath, () => {
        server.removeListener('error', reject);
        resolve();
      });
    });
    link.socket.on('data', (chunk: Buffer) => {
      let frames: DecodedFrame[];
      try {
        frames = link.decoder.push(chunk);
      } catch (error) {
        mux.shutdown(error as Error);
        return;
      }
      for (const f of frames) mux.fromAgent(f);
    });
    link.socket.on('error', (error) => mux.shutdown(error));
    link.socket.on('close', () => mux.shutdown(new Error('the guest agent connection closed')));
    for (const f of link.leftover) mux.fromAgent(f);
    return mux;
  }

  get clientCount(): number {
    return this.clients.size;
  }

  close(): void {
    this.shutdown(new Error('the agent multiplexer was closed'));
  }

  private shutdown(reason: Error): void {
    if (this.done) return;
    this.done = true;
    this.upstream.destroy();
    this.server.close();
    for (const client of this.clients) client.socket.destroy();
    this.clients.clear();
    this.routes.clear();
    rmSync(this.path, { force: true });
    this.resolveClosed(reason);
  }

  private fromAgent(f: DecodedFrame): void {
    if (f.channel === 0) {
      // A protocol error from the agent ends its connection; hellos answer our own handshake.
      if (f.type === A.error) this.shutdown(new Error(`the guest agent rejected the stream: ${f.payload.subarray(8).toString()}`));
      return;
    }
    const route = this.routes.get(f.channel);
    if (!route) return;
    if (ends(route.kind, f)) {
      this.routes.delete(f.channel);
      route.client.channels.delete(route.channel);
    }
    if (!route.client.socket.destroyed) route.client.socket.write(frame(f.type, route.channel, f.payload));
  }

  private accept(socket: Socket): void {
    if (this.done) {
      socket.destroy();
      return;
    }
    const client: Downstream = { socket, channels: new Map() };
    this.clients.add(client);
    const decoder = new FrameDecoder();
    socket.on('data', (chunk: Buffer) => {
      let frames: DecodedFrame[];
      try {
        frames = decoder.push(chunk);
      } catch {
        socket.destroy(); // a broken client must not desynchronise the stream every other client shares
        return;
      }
      for (const f of frames) this.fromClient(client, f);
    });
    socket.on('error', () => undefined);
    socket.on('close', () => this.drop(client));
  }

  private drop(client: Downstream): void {
    if (!this.clients.delete(client)) return;
    for (const upstreamChannel of client.channels.values()) {
      this.routes.delete(upstreamChannel);
      this.upstream.write(frame(H.close, upstreamChannel));
    }
    client.channels.clear();
  }

  private fromClient(client: Downstream, f: DecodedFrame): void {
    if (f.channel === 0) {
      if (f.type === H.hello && f.payload.length >= 8) {
        const nonce = f.payload.readUInt32BE(4);
        const hello = new Writer().u32(this.helloInfo.version).u32(nonce).str(this.helloInfo.arch).u32(this.helloInfo.pid).done();
        client.socket.write(frame(A.hello, 0, hello));
      }
      return;
    }
    let upstreamChannel = client.channels.get(f.channel);
    const kind = OPENING[f.type];
    if (kind) {
      if (upstreamChannel !== undefined) {
        client.socket.destroy(); // a reused channel: the same protocol error the agent would raise
        return;
      }
      upstreamChannel = this.allocate();
      client.channels.set(f.channel, upstreamChannel);
      this.routes.set(upstreamChannel, { client, channel: f.channel, kind });
    } else if (upstreamChannel === undefined) {
      return; // late frames for a finished channel, as the agent would ignore them
    }
    if (f.type === H.close) {
      client.channels.delete(f.channel);
      this.routes.delete(upstreamChannel);
    }
    this.upstream.write(frame(f.type, upstreamChannel, f.payload));
  }

  private allocate(): number {
    for (;;) {
      const id = this.nextChannel;
      this.nextChannel = this.nextChannel >= 0xfffffff0 ? 1 : this.nextChannel + 1;
      if (!this.routes.has(id)) return id;
    }
  }
}
