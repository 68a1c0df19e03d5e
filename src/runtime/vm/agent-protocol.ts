/**
 * The wire format shared with native/envy-agent.c (docs/vm-agent.md): frames of
 * [type u8][channel u32][length u32][payload], big-endian, multiplexed by channel.
 */

export const PROTOCOL_VERSION = 1;
export const HEADER_BYTES = 9;
export const MAX_PAYLOAD = 1 << 20;
/** Bytes either side may send on one channel before the other grants more (both sides assume it). */
export const WINDOW = 256 * 1024;
/** Largest data payload the client sends in one frame. */
export const CHUNK = 64 * 1024;

/** Frames from the host to the agent. */
export const H = {
  hello: 0x01,
  exec: 0x02,
  stdin: 0x03,
  stdinEof: 0x04,
  resize: 0x05,
  signal: 0x06,
  credit: 0x07,
  file: 0x08,
  watch: 0x09,
  close: 0x0a,
  prune: 0x0b,
  shutdown: 0x0c,
  serve: 0x0d,
} as const;

/** Frames from the agent to the host. */
export const A = {
  hello: 0x81,
  started: 0x82,
  stdout: 0x83,
  stderr: 0x84,
  exit: 0x85,
  data: 0x86,
  credit: 0x87,
  result: 0x88,
  error: 0x8f,
} as const;

export const Op = {
  stat: 1,
  readDir: 2,
  read: 3,
  write: 4,
  mkdir: 5,
  symlink: 6,
  remove: 7,
  rename: 8,
  chmod: 9,
  setMtime: 10,
  hash: 11,
} as const;

export const EventKind = { 1: 'add', 2: 'change', 3: 'unlink', 4: 'addDir', 5: 'unlinkDir' } as const;

export function frame(type: number, channel: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const out = Buffer.allocUnsafe(HEADER_BYTES + payload.length);
  out.writeUInt8(type, 0);
  out.writeUInt32BE(channel, 1);
  out.writeUInt32BE(payload.length, 5);
  payload.copy(out, HEADER_BYTES);
  return out;
}

/** Builds a payload from fields in order. */
export class Writer {
  private readonly parts: Buffer[] = [];

  u8(v: number): this {
    const b = Buffer.allocUnsafe(1);
    b.writeUInt8(v);
    this.parts.push(b);
    return this;
  }

  u16(v: number): this {
    const b = Buffer.allocUnsafe(2);
    b.writeUInt16BE(v);
    this.parts.push(b);
    return this;
  }

  u32(v: number): this {
    const b = Buffer.allocUnsafe(4);
    b.writeUInt32BE(v >>> 0);
    this.parts.push(b);
    return this;
  }

  u64(v: bigint): this {
    const b = Buffer.allocUnsafe(8);
    b.writeBigUInt64BE(BigInt.asUintN(64, v));
    this.parts.push(b);
    return this;
  }

  str(s: string | Buffer): this {
    const bytes = typeof s === 'string' ? Buffer.from(s, 'utf8') : s;
    this.u32(bytes.length);
    this.parts.push(bytes);
    return this;
  }

  done(): Buffer {
    return Buffer.concat(this.parts);
  }
}

export class MalformedPayload extends Error {}

/** Reads fields in order; an overrun throws MalformedPayload. */
export class Reader {
  private offset = 0;

  constructor(private readonly buf: Buffer) {}

  get remaining(): number {
    return this.buf.length - this.offset;
  }

  private need(n: number): void {
    if (this.offset + n > this.buf.length) throw new MalformedPayload(`payload ends early (needs ${n} more bytes)`);
  }

  u8(): number {
    this.need(1);
    return this.buf.readUInt8(this.offset++);
  }

  u16(): number {
    this.need(2);
    const v = this.buf.readUInt16BE(this.offset);
    this.offset += 2;
    return v;
  }

  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.offset);
    this.offset += 4;
    return v;
  }

  u64(): bigint {
    this.need(8);
    const v = this.buf.readBigUInt64BE(this.offset);
    this.offset += 8;
    return v;
  }

  bytes(): Buffer {
    const n = this.u32();
    this.need(n);
    const v = this.buf.subarray(this.offset, this.offset + n);
    this.offset += n;
    return v;
  }

  str(): string {
    return this.bytes().toString('utf8');
  }
}

export interface DecodedFrame {
  type: number;
  channel: number;
  payload: Buffer;
}

/** Splits a byte stream into frames; a frame over the size limit is a protocol error. */
export class FrameDecoder {
  private pending: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): DecodedFrame[] {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const frames: DecodedFrame[] = [];
    let offset = 0;
    while (this.pending.length - offset >= HEADER_BYTES) {
      const length = this.pending.readUInt32BE(offset + 5);
      if (length > MAX_PAYLOAD) throw new MalformedPayload(`a frame of ${length} bytes exceeds the ${MAX_PAYLOAD}-byte limit`);
      if (this.pending.length - offset < HEADER_BYTES + length) break;
      frames.push({
        type: this.pending.readUInt8(offset),
        channel: this.pending.readUInt32BE(offset + 1),
        // A copy: the consumer may keep it (stream chunks) after the pending buffer is reused.
        payload: Buffer.from(this.pending.subarray(offset + HEADER_BYTES, offset + HEADER_BYTES + length)),
      });
      offset += HEADER_BYTES + length;
    }
    this.pending = this.pending.subarray(offset);
    return frames;
  }
}
