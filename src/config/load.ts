/**
 * Finding and loading env.yaml: read defensively, parse with positions,
 * validate against schemas/env.schema.json, normalize to EnvSpec. Every
 * problem in the file is reported at once, each as `file:line:col: field: ...`.
 */
import { basename, dirname, isAbsolute, relative, resolve } from 'node:path';
import { EnvyError } from '../errors.js';
import { diagnosticsError, toPointer } from './diagnostics.js';
import { parseSpec } from './document.js';
import type { HostEnv } from './interpolate.js';
import { normalizeSpec } from './normalize.js';
import { readSpecText, SpecTextError, type SpecText } from './source.js';
import type { LoadedSpec } from './types.js';
import { validateSpec } from './validate.js';

export { SPEC_FILE_NAMES, findSpecFile } from './find.js';

export interface LoadOptions {
  /** Variables for `${VAR}` interpolation; defaults to process.env. */
  env?: HostEnv;
  /** Directory that relative paths and error labels are relative to; defaults to process.cwd(). */
  cwd?: string;
}

/** How a file is named in messages: relative to cwd when it is below it, otherwise as given. */
export function displayName(file: string, cwd: string = process.cwd()): string {
  const absolute = resolve(cwd, file);
  const fromCwd = relative(cwd, absolute);
  if (fromCwd !== '' && !fromCwd.startsWith('..') && !isAbsolute(fromCwd)) return fromCwd;
  return file === '' ? basename(absolute) : file;
}

export async function loadSpec(file: string, options: LoadOptions = {}): Promise<LoadedSpec> {
  const cwd = options.cwd ?? process.cwd();
  const absolute = resolve(cwd, file);
  const label = displayName(file, cwd);
  const read = readLabelled(absolute, label);

  const parsed = parseSpec(read.text, options.env ?? process.env);
  if (parsed.value === undefined) {
    throw diagnosticsError(parsed.diagnostics, label, parsed.lines);
  }
  if (parsed.value === null || typeof parsed.value !== 'object' || Array.isArray(parsed.value)) {
    const what = Array.isArray(parsed.value) ? 'a list' : parsed.value === null ? 'nothing' : `the scalar ${JSON.stringify(parsed.value)}`;
    throw diagnosticsError(
      [...parsed.diagnostics, { offset: parsed.index.get('')?.valueOffset ?? 0, path: [], message: `expected a mapping of fields (name, base, ...), got ${what}`, hint: 'start from a template: `envy init`' }],
      label,
      parsed.lines,
    );
  }

  // A value that failed interpolation is null by now; the schema's complaint about that null would be noise.
  const alreadyReported = new Set(parsed.diagnostics.map((diagnostic) => toPointer(diagnostic.path ?? [])));
  const schemaProblems = (await validateSpec(parsed.value, parsed.index)).filter((problem) => !alreadyReported.has(toPointer(problem.path ?? [])));
  const problems = [...parsed.diagnostics, ...schemaProblems];
  if (problems.length > 0) throw diagnosticsError(problems, label, parsed.lines);

  const { spec, diagnostics } = normalizeSpec(parsed.value as Record<string, unknown>, parsed.index, undefined, dirname(absolute));
  if (diagnostics.length > 0) throw diagnosticsError(diagnostics, label, parsed.lines);
  return { spec, source: { file: absolute, dir: dirname(absolute), digest: read.digest } };
}

/** sha256 of env.yaml's bytes, without parsing: enough to tell whether a cached plan is stale. */
export function specDigest(file: string, cwd: string = process.cwd()): string {
  return readLabelled(resolve(cwd, file), displayName(file, cwd)).digest;
}

function readLabelled(absolute: string, label: string): SpecText {
  try {
    return readSpecText(absolute, label);
  } catch (error) {
    if (!(error instanceof SpecTextError)) throw error;
    const { line, col, message, hint } = error.problem;
    throw new EnvyError('CONFIG_READ', `${label}:${line}:${col}: ${message}`, { hint });
  }
}
