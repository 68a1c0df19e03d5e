/**
 * ENVY_TRACE=1: host-clock marks (ms since the process started) on stderr, for profiling a build phase by
 * phase. Off, a mark costs one property read.
 */
import { performance } from 'node:perf_hooks';

const enabled = process.env.ENVY_TRACE === '1';

export function mark(label: string): void {
  if (enabled) process.stderr.write(`[trace ${performance.now().toFixed(1)} ms] ${label}\n`);
}
