/**
 * The live terminal view: one line per step (cached / running with elapsed
 * time and its last output line / done / failed) and a line per download with
 * bytes and rate. Loaded only when stderr is a terminal.
 */
import { Box, Static, Text, render, type Instance } from 'ink';
import { useEffect, useState } from 'react';
import { formatBytes, formatDuration, type ProgressEvent, type Reporter, type StepInfo } from './events.js';

type StepState =
  | { status: 'pending' }
  | { status: 'cached' }
  | { status: 'running'; startedAt: number; lastLine?: string }
  | { status: 'done'; ms: number }
  | { status: 'failed'; ms: number; message: string };

interface Download {
  id: string;
  label: string;
  done: number;
  total?: number;
  startedAt: number;
}

export interface ViewState {
  steps: StepInfo[];
  states: Record<string, StepState>;
  downloads: Download[];
  /** Lines printed above the live area (messages, warnings), never redrawn. */
  log: { id: number; text: string; warning: boolean }[];
}

export function emptyViewState(): ViewState {
  return { steps: [], states: {}, downloads: [], log: [] };
}

/** Pure state transition, so the view logic is testable without a terminal. */
export function applyEvent(state: ViewState, event: ProgressEvent, now: number): ViewState {
  switch (event.type) {
    case 'plan':
      return { ...state, steps: event.steps, states: Object.fromEntries(event.steps.map((s) => [s.key, { status: 'pending' } as StepState])) };
    case 'step-cached':
      return { ...state, states: { ...state.states, [event.key]: { status: 'cached' } } };
    case 'step-start':
      return { ...state, states: { ...state.states, [event.key]: { status: 'running', startedAt: now } } };
    case 'step-output': {
      const current = state.states[event.key];
      if (current?.status !== 'running') return state;
      return { ...state, states: { ...state.states, [event.key]: { ...current, lastLine: event.line } } };
    }
    case 'step-done':
      return { ...state, states: { ...state.states, [event.key]: { status: 'done', ms: event.ms } } };
    case 'step-failed':
      return { ...state, states: { ...state.states, [event.key]: { status: 'failed', ms: event.ms, message: event.message } } };
    case 'download': {
      const existing = state.downloads.find((d) => d.id === event.id);
      const updated: Download = { id: event.id, label: event.label, done: event.done, total: event.total, startedAt: existing?.startedAt ?? now };
      const downloads = existing ? state.downloads.map((d) => (d.id === event.id ? updated : d)) : [...state.downloads, updated];
      // Finished downloads leave the live area.
      return { ...state, downloads: downloads.filter((d) => d.total === undefined || d.done < d.total) };
    }
    case 'message':
    case 'warning':
      return { ...state, log: [...state.log, { id: state.log.length, text: event.text, warning: event.type === 'warning' }] };
  }
}

function StepLine({ step, state, now, color }: { step: StepInfo; state: StepState; now: number; color: boolean }): React.JSX.Element {
  const c = (value: string): string | undefined => (color ? value : undefined);
  switch (state.status) {
    case 'pending':
      return <Text dimColor={color}>  · {step.label}</Text>;
    case 'cached':
      return <Text color={c('gray')}>  ✓ {step.label} <Text dimColor={color}>(cached)</Text></Text>;
    case 'running':
      return (
        <Box flexDirection="column">
          <Text color={c('cyan')}>  ▸ {step.label} <Text dimColor={color}>{formatDuration(now - state.startedAt)}</Text></Text>
          {state.lastLine ? <Text dimColor={color} wrap="truncate-end">    {state.lastLine}</Text> : null}
        </Box>
      );
    case 'done':
      return <Text color={c('green')}>  ✓ {step.label} <Text dimColor={color}>{formatDuration(state.ms)}</Text></Text>;
    case 'failed':
      return <Text color={c('red')}>  ✗ {step.label} <Text dimColor={color}>{formatDuration(state.ms)}: {state.message}</Text></Text>;
  }
}

function DownloadLine({ download, now }: { download: Download; now: number }): React.JSX.Element {
  const seconds = Math.max((now - download.startedAt) / 1000, 0.001);
  const rate = `${formatBytes(download.done / seconds)}/s`;
  const size = download.total ? `${formatBytes(download.done)} / ${formatBytes(download.total)}` : formatBytes(download.done);
  return <Text>    ↓ {download.label} {size} {rate}</Text>;
}

export function ProgressView({ state, now, color }: { state: ViewState; now: number; color: boolean }): React.JSX.Element {
  return (
    <>
      <Static items={state.log}>{(entry) => <Text key={entry.id} color={entry.warning && color ? 'yellow' : undefined}>{entry.warning ? `warning: ${entry.text}` : entry.text}</Text>}</Static>
      <Box flexDirection="column">
        {state.steps.map((step) => (
          <StepLine key={step.key} step={step} state={state.states[step.key] ?? { status: 'pending' }} now={now} color={color} />
        ))}
        {state.downloads.map((d) => (
          <DownloadLine key={d.id} download={d} now={now} />
        ))}
      </Box>
    </>
  );
}

function LiveView({ subscribe, color }: { subscribe: (listener: (state: ViewState) => void) => void; color: boolean }): React.JSX.Element {
  const [state, setState] = useState(emptyViewState);
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    subscribe(setState);
    // Elapsed times and rates tick even when a step prints nothing.
    const timer = setInterval(() => setNow(Date.now()), 250);
    return () => clearInterval(timer);
  }, [subscribe]);
  return <ProgressView state={state} now={now} color={color} />;
}

export class InkReporter implements Reporter {
  private state = emptyViewState();
  private listener: ((state: ViewState) => void) | undefined;
  private readonly instance: Instance;
  private closed = false;

  constructor(stream: NodeJS.WriteStream, color: boolean) {
    const subscribe = (listener: (state: ViewState) => void): void => {
      this.listener = listener;
      listener(this.state);
    };
    this.instance = render(<LiveView subscribe={subscribe} color={color} />, { stdout: stream, patchConsole: false, exitOnCtrlC: false });
  }

  report(event: ProgressEvent): void {
    this.state = applyEvent(this.state, event, Date.now());
    this.listener?.(this.state);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Let the final state paint before unmounting so the finished table stays on screen.
    await new Promise((resolve) => setTimeout(resolve, 20));
    this.instance.unmount();
    await this.instance.waitUntilExit();
  }
}
