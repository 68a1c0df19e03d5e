// The wire format on the host side: frames split at any byte boundary reassemble, limits hold.
import { describe, expect, it } from 'vitest';
import { FrameDecoder, HEADER_BYTES, MAX_PAYLOAD, MalformedPayload, Reader, Writer, frame } from '../../../src/runtime/vm/agent-protocol.js';

describe('agent protocol framing', () => {
  it('reassembles frames delivered one byte at a time and several per chunk', () => {
    const frames = [frame(0x83, 7, Buffer.from('hello')), frame(0x85, 7, new Writer().u32(130).done()), frame(0x81, 0)];
    const all = Buffer.concat(frames);
    const bytewise = new FrameDecoder();
    const seen = [];
    for (let i = 0; i < all.length; i++) seen.push(...bytewise.push(all.subarray(i, i + 1)));
    expect(seen.map((f) => [f.type, f.channel, f.payload.toString('hex')])).toEqual([
      [0x83, 7, Buffer.from('hello').toString('hex')],
      [0x85, 7, '00000082'],
      [0x81, 0, ''],
    ]);
    expect(new FrameDecoder().push(all)).toHaveLength(3);
  });

  it('refuses a frame over the size limit as soon as its header arrives', () => {
    const header = Buffer.alloc(HEADER_BYTES);
    header.writeUInt8(0x83, 0);
    header.writeUInt32BE(MAX_PAYLOAD + 1, 5);
    expect(() => new FrameDecoder().push(header)).toThrow(MalformedPayload);
  });

  it('reads back what it writes, and an overrun is malformed', () => {
    const payload = new Writer().u8(1).u16(513).u32(0xfffffffe).u64(-1n).str('päth').done();
    const r = new Reader(payload);
    expect([r.u8(), r.u16(), r.u32(), r.u64(), r.str()]).toEqual([1, 513, 0xfffffffe, 0xffffffffffffffffn, 'päth']);
    expect(r.remaining).toBe(0);
    expect(() => r.u32()).toThrow(MalformedPayload);
    expect(() => new Reader(new Writer().u32(10).done()).str()).toThrow(MalformedPayload);
  });
});
