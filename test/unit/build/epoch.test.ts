import { describe, expect, it } from 'vitest';
import { sourceDateEpoch } from '../../../src/build/executor.js';
import type { ImageRecord } from '../../../src/image/store.js';
import type { BaseStep } from '../../../src/plan/types.js';

const step = (source: BaseStep['source']): BaseStep => ({ kind: 'base', key: 'k', label: 'base', source, arch: 'x86_64' }) as BaseStep;
const image = (created?: string): ImageRecord => ({ key: 'k', source: 's', layers: [], config: { env: [], ...(created ? { created } : {}) }, createdAt: '2026-01-01T00:00:00Z' });

describe('the build epoch (SOURCE_DATE_EPOCH of a build)', () => {
  it('is the snapshot time of a pinned Debian base, and nothing for an unpinned one or the host', () => {
    expect(sourceDateEpoch(step({ kind: 'debian', suite: 'bookworm', snapshot: '20240102T030405Z' }), undefined, {})).toBe(Date.UTC(2024, 0, 2, 3, 4, 5) / 1000);
    expect(sourceDateEpoch(step({ kind: 'debian', suite: 'bookworm' }), undefined, {})).toBeUndefined();
    expect(sourceDateEpoch(step({ kind: 'host' }), image(), {})).toBeUndefined();
  });

  it("is a pulled or imported base's creation time, or 0 when its config has none", () => {
    expect(sourceDateEpoch(step({ kind: 'image', ref: 'x@sha256:' + 'a'.repeat(64) }), image('2025-05-06T07:08:09.5Z'), {})).toBe(Date.UTC(2025, 4, 6, 7, 8, 9) / 1000);
    expect(sourceDateEpoch(step({ kind: 'oci', path: 'img' }), image(), {})).toBe(0);
    // Before the base is in the store (only a snapshot can be known then).
    expect(sourceDateEpoch(step({ kind: 'image', ref: 'x' }), undefined, {})).toBeUndefined();
  });

  it("gives the user's SOURCE_DATE_EPOCH precedence, ignoring a malformed one", () => {
    expect(sourceDateEpoch(step({ kind: 'debian', suite: 'bookworm' }), undefined, { SOURCE_DATE_EPOCH: '1700000000' })).toBe(1_700_000_000);
    expect(sourceDateEpoch(step({ kind: 'oci', path: 'img' }), image(), { SOURCE_DATE_EPOCH: 'yesterday' })).toBe(0);
  });
});
