import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { encodeFrame, FrameType, readFrames, type Frame } from '../../../src/build/unpack-protocol.js';

async function collect(chunks: Buffer[]): Promise<Frame[]> {
  const frames: Frame[] = [];
  for await (const frame of readFrames(Readable.from(chunks))) frames.push({ ...frame, payload: Buffer.from(frame.payload) });
  return frames;
}

describe('unpack session frames', () => {
  const sent = [
    encodeFrame(FrameType.Start, 1, Buffer.from('{"dest":"/d","label":"l"}')),
    encodeFrame(FrameType.Data, 1, Buffer.alloc(70_000, 7)),
    encodeFrame(FrameType.Start, 2, Buffer.from('{"path":"/p","dest":"/e","label":"m"}')),
    encodeFrame(FrameType.Data, 1, Buffer.from('tail')),
    encodeFrame(FrameType.End, 1),
    encodeFrame(FrameType.Abort, 2, Buffer.from('digest mismatch')),
  ];
  const whole = Buffer.concat(sent);

  // One-byte reads are 70,000 async iterations: seconds on a loaded machine.
  it('decodes interleaved jobs however the pipe splits the bytes', { timeout: 60_000 }, async () => {
    for (const size of [1, 5, 9, 10, 4096, whole.length]) {
      const chunks: Buffer[] = [];
      for (let at = 0; at < whole.length; at += size) chunks.push(whole.subarray(at, at + size));
      const frames = await collect(chunks);
      expect(frames.map((f) => [f.type, f.id, f.payload.length])).toEqual([
        [FrameType.Start, 1, 25],
        [FrameType.Data, 1, 70_000],
        [FrameType.Start, 2, 37],
        [FrameType.Data, 1, 4],
        [FrameType.End, 1, 0],
        [FrameType.Abort, 2, 15],
      ]);
      expect(frames[1]!.payload.every((b) => b === 7)).toBe(true);
      expect(frames[5]!.payload.toString()).toBe('digest mismatch');
    }
  });

  it('refuses input that ends inside a frame', async () => {
    await expect(collect([whole.subarray(0, whole.length - 3)])).rejects.toThrow(/ended inside a frame/);
  });
});
