/**
 * Problems found in env.yaml, each tied to a source position and a field path,
 * and their rendering as `env.yaml:LINE:COL: field.path: what was wrong`.
 */
import type { LineCounter } from 'yaml';
import { EnvyError } from '../errors.js';

export type PathSegment = string | number;

export interface Diagnostic {
  /** Character offset into the text (0-based). */
  offset: number;
  /** Field path; undefined for problems that are not about one field (YAML syntax). */
  path: PathSegment[] | undefined;
  message: string;
  hint?: string;
}

/** Where a value sits in the source, keyed by its JSON pointer (the form ajv reports). */
export interface NodeInfo {
  path: PathSegment[];
  /** Offset of the key that introduces this value, when it is a mapping value. */
  keyOffset?: number;
  valueOffset: number;
  /** The value was empty in the source (`key:` with nothing after it). */
  empty: boolean;
  /** For scalars: the text after interpolation, before YAML resolved it to a number or boolean. */
  text?: string;
}

export type NodeIndex = Map<string, NodeInfo>;

export function toPointer(path: readonly PathSegment[]): string {
  return path.map((segment) => '/' + String(segment).replace(/~/g, '~0').replace(/\//g, '~1')).join('');
}

export function fromPointer(pointer: string): string[] {
  if (pointer === '') return [];
  return pointer
    .slice(1)
    .split('/')
    .map((segment) => segment.replace(/~1/g, '/').replace(/~0/g, '~'));
}

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_-]*$/;

/** `services.web.ready`, `setup[2].run`, `env["my.var"]`. */
export function formatPath(path: readonly PathSegment[]): string {
  let out = '';
  for (const segment of path) {
    if (typeof segment === 'number') out += `[${segment}]`;
    else if (IDENTIFIER.test(segment)) out += out === '' ? segment : `.${segment}`;
    else out += `[${JSON.stringify(segment)}]`;
  }
  return out;
}

export interface Located {
  line: number;
  col: number;
  text: string;
}

export function renderDiagnostic(diagnostic: Diagnostic, label: string, lines: LineCounter): Located {
  const { line, col } = lines.linePos(diagnostic.offset);
  const field = diagnostic.path === undefined ? '' : `${diagnostic.path.length === 0 ? '(top level)' : formatPath(diagnostic.path)}: `;
  return { line, col, text: `${label}:${line}:${col}: ${field}${diagnostic.message}` };
}

/** One error for all problems: the first (by position) in the message, every other one in `details`. */
export function diagnosticsError(diagnostics: readonly Diagnostic[], label: string, lines: LineCounter): EnvyError {
  const sorted = [...diagnostics].sort((a, b) => a.offset - b.offset);
  const seen = new Set<string>();
  const rendered: { text: string; hint?: string }[] = [];
  for (const diagnostic of sorted) {
    const { text } = renderDiagnostic(diagnostic, label, lines);
    if (seen.has(text)) continue;
    seen.add(text);
    rendered.push({ text, hint: diagnostic.hint });
  }
  const [first, ...rest] = rendered;
  const more = rest.length === 0 ? '' : ` (and ${rest.length} more problem${rest.length === 1 ? '' : 's'})`;
  return new EnvyError('CONFIG_INVALID', first!.text + more, {
    hint: first!.hint,
    details: rest.map((entry) => (entry.hint ? `${entry.text} (${entry.hint})` : entry.text)),
  });
}
