/**
 * What a build (and `envy up`) reports while it works. The executor emits these;
 * a Reporter renders them. Keeping the stream of events apart from rendering lets
 * the same build drive the ink view, plain CI logs, or nothing (--quiet).
 */
export interface StepInfo {
  key: string;
  label: string;
  kind: string;
}

export type ProgressEvent =
  | { type: 'plan'; steps: StepInfo[] }
  | { type: 'step-cached'; key: string }
  | { type: 'step-start'; key: string }
  | { type: 'step-output'; key: string; line: string }
  | { type: 'step-done'; key: string; ms: number }
  | { type: 'step-failed'; key: string; ms: number; message: string }
  | { type: 'download'; id: string; label: string; done: number; total?: number }
  | { type: 'message'; text: string }
  | { type: 'warning'; text: string };

export interface Reporter {
  report(event: ProgressEvent): void;
  /** Flush and release the terminal; safe to call twice. */
  close(): Promise<void>;
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)}s`;
  return `${Math.floor(ms / 60_000)}m${Math.round((ms % 60_000) / 1000)
    .toString()
    .padStart(2, '0')}s`;
}
