/**
 * The frames an unpack session (userns.ts UnpackSession → `layer-worker unpack-session`) sends over the
 * worker's stdin, so that one worker unpacks all layers of a pull or import while they stream in:
 *   [type: u8][job id: u32 BE][length: u32 BE][payload]
 * Start carries the job as JSON, Data a piece of the layer blob, End closes it, Abort fails it (the
 * payload is the reason: the download broke, the digest did not match).
 */
export enum FrameType {
  Start = 1,
  Data = 2,
  End = 3,
  Abort = 4,
}

export interface UnpackJob {
  /** Read the blob from this file instead of from Data frames. */
  path?: string;
  /** With path: read only these bytes of it (first and last, inclusive), an archive member. */
  range?: { start: number; end: number };
  dest: string;
  label: string;
  expectedDiffId?: string;
}

export interface Frame {
  type: FrameType;
  id: number;
  payload: Buffer;
}

const HEADER = 9;

export function encodeFrame(type: FrameType, id: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(HEADER);
  header.writeUInt8(type, 0);
  header.writeUInt32BE(id, 1);
  header.writeUInt32BE(payload.length, 5);
  return Buffer.concat([header, payload]);
}

/** Frames as they complete; a stream that ends mid-frame is an error. */
export async function* readFrames(input: AsyncIterable<Buffer | string>): AsyncGenerator<Frame> {
  let pending = Buffer.alloc(0);
  for await (const chunk of input) {
    pending = pending.length === 0 ? Buffer.from(chunk) : Buffer.concat([pending, Buffer.from(chunk)]);
    let offset = 0;
    while (pending.length - offset >= HEADER) {
      const length = pending.readUInt32BE(offset + 5);
      if (pending.length - offset < HEADER + length) break;
      yield { type: pending.readUInt8(offset) as FrameType, id: pending.readUInt32BE(offset + 1), payload: pending.subarray(offset + HEADER, offset + HEADER + length) };
      offset += HEADER + length;
    }
    pending = pending.subarray(offset);
  }
  if (pending.length > 0) throw new Error(`unpack session: the input ended inside a frame (${pending.length} bytes left)`);
}
