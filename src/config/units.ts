/** Durations and byte sizes as written in env.yaml ("500ms", "2g"), converted to numbers. */

const DURATION = /^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$/;
const MS_PER_UNIT = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 } as const;

/** Milliseconds for a duration string, or undefined when it is not one. */
export function parseDuration(text: string): number | undefined {
  const match = DURATION.exec(text);
  if (!match) return undefined;
  const ms = Number(match[1]) * MS_PER_UNIT[match[2] as keyof typeof MS_PER_UNIT];
  return Number.isSafeInteger(Math.round(ms)) ? Math.round(ms) : undefined;
}

const SIZE = /^([0-9]+(?:\.[0-9]+)?) ?([bB]|[kKmMgGtT](?:i?[bB])?)?$/;
// Powers of 1024 whatever the spelling, as docker and podman read "2g": people mean GiB.
const BYTES_PER_UNIT: Record<string, number> = { '': 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/** Bytes for a size (a byte count or "512m", "2g", "1.5GiB"), or undefined when it is not one. */
export function parseSize(value: number | string): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) ? value : undefined;
  const match = SIZE.exec(value);
  if (!match) return undefined;
  const unit = (match[2] ?? '').charAt(0).toLowerCase();
  const bytes = Math.floor(Number(match[1]) * BYTES_PER_UNIT[unit]!);
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}
