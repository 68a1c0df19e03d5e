/**
 * A stream of a byte range of a file (an archive member) that remembers where its bytes are, so an
 * unpacker running in another process (the layer worker) can read the file itself instead of having the
 * bytes streamed to it. In-process, it is an ordinary read stream.
 */
import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';

export interface FileRange {
  path: string;
  /** First byte. */
  start: number;
  /** Last byte, inclusive (as createReadStream's `end`). */
  end: number;
}

const ranges = new WeakMap<Readable, FileRange>();

export function fileRangeStream(range: FileRange): Readable {
  const stream = createReadStream(range.path, { start: range.start, end: range.end });
  ranges.set(stream, { ...range });
  return stream;
}

/** Where a stream made by fileRangeStream reads from; undefined for any other stream. */
export function fileRangeOf(stream: unknown): FileRange | undefined {
  return typeof stream === 'object' && stream !== null ? ranges.get(stream as Readable) : undefined;
}
