/**
 * Choosing and running a Reporter. The ink view is loaded only for a real
 * terminal; CI, pipes and --progress=plain get one line per event instead.
 */
import { formatBytes, formatDuration, type ProgressEvent, type Reporter, type StepInfo } from './events.js';

export type ProgressMode = 'auto' | 'tty' | 'plain' | 'quiet';

export interface ReporterOptions {
  mode: ProgressMode;
  stream?: NodeJS.WriteStream;
  env?: NodeJS.ProcessEnv;
}

export function resolveMode(mode: ProgressMode, stream: NodeJS.WriteStream, env: NodeJS.ProcessEnv): Exclude<ProgressMode, 'auto'> {
  if (mode !== 'auto') return mode;
  if (!stream.isTTY || env.CI === 'true' || env.CI === '1' || env.TERM === 'dumb') return 'plain';
  return 'tty';
}

export function colorEnabled(stream: NodeJS.WriteStream, env: NodeJS.ProcessEnv): boolean {
  // https://no-color.org: any non-empty NO_COLOR disables colour.
  return !env.NO_COLOR && stream.isTTY === true;
}

/** One line per event: for CI logs and pipes, where redrawing would be noise. */
export class PlainReporter implements Reporter {
  private readonly steps = new Map<string, StepInfo & { index: number }>();
  private readonly downloads = new Map<string, number>();
  private total = 0;

  constructor(private readonly write: (line: string) => void) {}

  private name(key: string): string {
    const step = this.steps.get(key);
    return step ? `[${step.index}/${this.total}] ${step.label}` : key.slice(0, 12);
  }

  report(event: ProgressEvent): void {
    switch (event.type) {
      case 'plan':
        this.total = event.steps.length;
        event.steps.forEach((s, i) => this.steps.set(s.key, { ...s, index: i + 1 }));
        return;
      case 'step-cached':
        return this.write(`${this.name(event.key)}: cached`);
      case 'step-start':
        return this.write(`${this.name(event.key)}: running`);
      case 'step-output':
        return this.write(`  | ${event.line}`);
      case 'step-done':
        return this.write(`${this.name(event.key)}: done in ${formatDuration(event.ms)}`);
      case 'step-failed':
        return this.write(`${this.name(event.key)}: FAILED after ${formatDuration(event.ms)}: ${event.message}`);
      case 'download': {
        // Plain logs get a line per 25% (and the last), not one per chunk.
        const quarter = event.total ? Math.floor((event.done / event.total) * 4) : -1;
        if (this.downloads.get(event.id) === quarter && event.done !== event.total) return;
        this.downloads.set(event.id, quarter);
        const size = event.total ? `${formatBytes(event.done)} / ${formatBytes(event.total)}` : formatBytes(event.done);
        return this.write(`download ${event.label}: ${size}`);
      }
      case 'message':
        return this.write(event.text);
      case 'warning':
        return this.write(`warning: ${event.text}`);
    }
  }

  async close(): Promise<void> {}
}

/** --quiet: nothing but warnings and failures. */
export class QuietReporter implements Reporter {
  constructor(private readonly write: (line: string) => void) {}

  report(event: ProgressEvent): void {
    if (event.type === 'warning') this.write(`warning: ${event.text}`);
    if (event.type === 'step-failed') this.write(`step failed: ${event.message}`);
  }

  async close(): Promise<void> {}
}

export async function createReporter(options: ReporterOptions): Promise<Reporter> {
  const stream = options.stream ?? process.stderr;
  const env = options.env ?? process.env;
  const mode = resolveMode(options.mode, stream, env);
  const write = (line: string): void => void stream.write(`${line}\n`);
  if (mode === 'quiet') return new QuietReporter(write);
  if (mode === 'plain') return new PlainReporter(write);
  const { InkReporter } = await import('./ink-reporter.js');
  return new InkReporter(stream, colorEnabled(stream, env));
}
