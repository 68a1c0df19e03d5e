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
  return Buffer.concat(encodeFrameParts(type, id, payload));
}

/** A frame as its header and its payload, for a writer that sends both without copying the payload. */
export function encodeFrameParts(type: FrameType, id: number, payload: Buffer): [Buffer, Buffer] {
  const header = Buffer.alloc(HEADER);
  header.writeUInt8(type, 0);
  header.writeUInt32BE(id, 1);
  header.writeUInt32BE(payload.length, 5);
  return [header, payload];
}

/** Frames as they complete; a stream that ends mid-frame is an error. */
export async function* readFrames(input: AsyncIterable<Buffer | string>): AsyncGenerator<Frame> {
  // Reads are kept as they come (a chunk read from a pipe is a fresh buffer) and joined only once the
  // frame they belong to is complete: each byte is copied at most once, however the pipe splits them.
  let parts: Buffer[] = [];
  let buffered = 0;
  let need = HEADER;
  for await (const chunk of input) {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    parts.push(bytes);
    buffered += bytes.length;
    if (buffered < need) continue;
    const pending = parts.length === 1 ? parts[0]! : Buffer.concat(parts, buffered);
    let offset = 0;
    while (pending.length - offset >= HEADER) {
      const length = pending.readUInt32BE(offset + 5);
      if (pending.length - offset < HEADER + length) break;
      yield { type: pending.readUInt8(offset) as FrameType, id: pending.readUInt32BE(offset + 1), payload: pending.subarray(offset + HEADER, offset + HEADER + length) };
      offset += HEADER + length;
    }
    const rest = pending.subarray(offset);
    parts = rest.length > 0 ? [rest] : [];
    buffered = rest.length;
    need = rest.length >= HEADER ? HEADER + rest.readUInt32BE(5) : HEADER;
  }
  if (buffered > 0) throw new Error(`unpack session: the input ended inside a frame (${buffered} bytes left)`);
}

/** One answer of a layer worker: the request it settles, with its result or what went wrong. */
export interface WorkerAnswer {
  id: number;
  result?: unknown;
  error?: string;
}

/** A layer worker's answers on its stdout (one JSON object per line), in order, until it closes. */
export async function readWorkerAnswers(output: AsyncIterable<Buffer | string>, onAnswer: (answer: WorkerAnswer) => void): Promise<void> {
  let pending = '';
  for await (const chunk of output) {
    pending += chunk.toString();
    const lines = pending.split('\n');
    pending = lines.pop() ?? '';
    for (const line of lines) if (line.trim()) onAnswer(JSON.parse(line) as WorkerAnswer);
  }
}
