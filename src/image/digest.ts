/** Content digests as OCI writes them (`sha256:<64 hex>`), validated before they ever become a path. */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { Transform, type TransformCallback } from 'node:stream';
import { EnvyError } from '../errors.js';

const DIGEST = /^sha256:([a-f0-9]{64})$/;

export function isDigest(value: unknown): value is string {
  return typeof value === 'string' && DIGEST.test(value);
}

/** The hex part of a digest; rejects anything else, since digests from registries and archives name files on disk. */
export function digestHex(digest: string, what = 'digest'): string {
  const match = DIGEST.exec(digest);
  if (!match) {
    throw new EnvyError('IMAGE', `${what} "${digest.slice(0, 100)}" is not a sha256 digest`, {
      hint: 'envy accepts sha256:<64 lowercase hex> digests only',
    });
  }
  return match[1]!;
}

export function sha256(data: string | Uint8Array): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

export function hashToDigest(hash: Hash): string {
  return `sha256:${hash.digest('hex')}`;
}

export async function sha256File(path: string): Promise<{ digest: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of createReadStream(path)) {
    hash.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { digest: hashToDigest(hash), size };
}

/** A pass-through stream that counts and hashes what flows through it (diff_ids, blob digests). */
export class HashingStream extends Transform {
  readonly hash = createHash('sha256');
  size = 0;
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.hash.update(chunk);
    this.size += chunk.length;
    callback(null, chunk);
  }
  digest(): string {
    return `sha256:${this.hash.digest('hex')}`;
  }
}

/**
 * A pass-through that checks the bytes against `expected` and holds the last chunk back until they match:
 * a reader (an unpacker) never sees the end of content that fails its digest; it gets `mismatch(actual)`
 * as the stream's error instead.
 */
export class VerifyingStream extends Transform {
  private readonly hash = createHash('sha256');
  private held: Buffer | undefined;
  constructor(
    private readonly expected: string,
    private readonly mismatch: (actual: string) => Error,
  ) {
    super();
  }
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.hash.update(chunk);
    const previous = this.held;
    this.held = chunk;
    callback(null, previous);
  }
  override _flush(callback: TransformCallback): void {
    const actual = hashToDigest(this.hash);
    if (actual !== this.expected) return callback(this.mismatch(actual));
    callback(null, this.held);
  }
}
