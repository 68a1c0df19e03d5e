/**
 * Canonical JSON: the byte form that step keys and spec digests are hashed
 * over. Object keys are sorted and undefined members dropped, so the same
 * value always hashes the same however it was built.
 */
import { createHash } from 'node:crypto';

export type Canonical = string | number | boolean | null | undefined | Canonical[] | { [key: string]: Canonical };

export function canonicalJson(value: Canonical): string {
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return JSON.stringify(value);
  if (typeof value === 'number') {
    // NaN and Infinity would silently become null in JSON and collide with it.
    if (!Number.isFinite(value)) throw new TypeError(`cannot encode ${value} canonically`);
    return JSON.stringify(value);
  }
  if (value === undefined) throw new TypeError('undefined has no canonical encoding outside an object');
  if (Array.isArray(value)) return `[${value.map((item) => canonicalJson(item)).join(',')}]`;
  const members = Object.keys(value)
    .filter((key) => value[key] !== undefined)
    .sort()
    .map((key) => `${JSON.stringify(key)}:${canonicalJson(value[key])}`);
  return `{${members.join(',')}}`;
}

export function sha256Hex(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** sha256 hex of the canonical encoding. */
export function canonicalDigest(value: Canonical): string {
  return sha256Hex(canonicalJson(value));
}
