/**
 * env.yaml text -> plain data plus a position index. The YAML layer rejects
 * what a config file has no business containing (tags, aliases, several
 * documents) and interpolates `${VAR}` per string scalar, so every later error
 * can still name the line and column it came from.
 */
import { isAlias, isMap, isPair, isScalar, isSeq, LineCounter, parseDocument, type Node, type YAMLError } from 'yaml';
import type { Diagnostic, NodeIndex, PathSegment } from './diagnostics.js';
import { toPointer } from './diagnostics.js';
import { interpolate, InterpolationError, needsInterpolation, type HostEnv } from './interpolate.js';

export interface ParsedSpec {
  /** The document as plain data; undefined when YAML-level problems stop processing. */
  value: unknown;
  index: NodeIndex;
  diagnostics: Diagnostic[];
  lines: LineCounter;
}

// The YAML 1.2 core tags are harmless spellings of what plain scalars resolve to anyway.
const ALLOWED_TAGS = new Set(['str', 'int', 'float', 'bool', 'null', 'map', 'seq'].map((name) => `tag:yaml.org,2002:${name}`));
// The schema nests five levels at most; this only stops pathological input early.
const MAX_DEPTH = 32;
const INT = /^[-+]?[0-9]+$/;
const FLOAT = /^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$/;

export function parseSpec(text: string, env: HostEnv): ParsedSpec {
  const lines = new LineCounter();
  const doc = parseDocument(text, {
    lineCounter: lines,
    prettyErrors: false,
    uniqueKeys: true,
    strict: true,
    merge: false,
    version: '1.2',
  });
  const index: NodeIndex = new Map();
  const yamlProblems = [...doc.errors, ...doc.warnings.filter((warning) => warning.code !== 'TAG_RESOLVE_FAILED')];
  if (yamlProblems.length > 0) {
    return { value: undefined, index, lines, diagnostics: yamlProblems.map((problem) => yamlDiagnostic(problem, text)) };
  }
  if (doc.contents === null) {
    return {
      value: undefined,
      index,
      lines,
      diagnostics: [{ offset: 0, path: undefined, message: 'the file is empty (no YAML content, at most comments)', hint: 'start from a template: `envy init`; at least `name` and `base` are required' }],
    };
  }
  const diagnostics: Diagnostic[] = [];
  // Built by walking the nodes, never with doc.toJS(): aliases are rejected on the way, so none is ever expanded.
  const value = toValue(doc.contents, [], undefined, { env, index, diagnostics }, 0);
  return { value, index, lines, diagnostics };
}

function yamlDiagnostic(problem: YAMLError, text: string): Diagnostic {
  const offset = problem.pos[0];
  switch (problem.code) {
    case 'DUPLICATE_KEY':
      return { offset, path: undefined, message: `duplicate key "${keyAt(text, offset)}"`, hint: 'each key may appear only once in a mapping; merge the two entries' };
    case 'TAB_AS_INDENT':
      return { offset, path: undefined, message: 'tab character used for indentation', hint: 'YAML indents with spaces only; replace the tabs with spaces' };
    case 'MULTIPLE_DOCS':
      return { offset, path: undefined, message: 'a second YAML document starts here; env.yaml must hold exactly one', hint: 'remove the `---` separator and merge the documents' };
    case 'RESOURCE_EXHAUSTION':
      return { offset, path: undefined, message: 'the document nests too deeply or expands too much', hint: 'env.yaml needs only a few levels of nesting' };
    default:
      return { offset, path: undefined, message: `YAML syntax error: ${problem.message.split('\n')[0]!.replace(/ at line \d+, column \d+.*$/, '')}`, hint: 'check the indentation and the quoting around this point' };
  }
}

/** The key written at `offset` (yaml points at a duplicate key's first character only). */
function keyAt(text: string, offset: number): string {
  const match = /^(?:"((?:[^"\\\n]|\\.)*)"|'((?:[^'\n]|'')*)'|([^\n]*?))\s*:(?:\s|$)/.exec(text.slice(offset));
  return match ? (match[1] ?? match[2] ?? match[3] ?? '').trim() : text.slice(offset).split(/[:\n]/)[0]!.trim();
}

interface Walk {
  env: HostEnv;
  index: NodeIndex;
  diagnostics: Diagnostic[];
}

function toValue(node: unknown, path: PathSegment[], keyOffset: number | undefined, walk: Walk, depth: number): unknown {
  const offset = (node as Node | null)?.range?.[0] ?? keyOffset ?? 0;
  if (depth > MAX_DEPTH) {
    walk.diagnostics.push({ offset, path, message: `nested more than ${MAX_DEPTH} levels deep`, hint: 'env.yaml needs only a few levels of nesting' });
    return null;
  }
  if (node === null || node === undefined) {
    walk.index.set(toPointer(path), { path, keyOffset, valueOffset: keyOffset ?? 0, empty: true });
    return null;
  }
  if (isAlias(node)) {
    walk.diagnostics.push({ offset, path, message: `alias *${node.source} is not supported`, hint: 'write the value out; env.yaml rejects anchors and aliases so no file can expand into gigabytes' });
    return null;
  }
  const tag = (node as Node).tag;
  if (tag !== undefined && !ALLOWED_TAGS.has(tag)) {
    walk.diagnostics.push({ offset, path, message: `YAML tag ${tag.replace(/^tag:yaml\.org,2002:/, '!!')} is not allowed`, hint: 'remove the tag: env.yaml holds plain strings, numbers, booleans, lists and mappings' });
    return null;
  }
  if (isMap(node)) {
    walk.index.set(toPointer(path), { path, keyOffset, valueOffset: offset, empty: false });
    const out: Record<string, unknown> = {};
    for (const pair of node.items) {
      if (!isPair(pair)) continue;
      const key = pair.key;
      const keyStart = (key as Node | null)?.range?.[0] ?? offset;
      if (!isScalar(key) || key.value === null || typeof key.value === 'object') {
        walk.diagnostics.push({ offset: keyStart, path, message: 'mapping keys must be plain strings', hint: 'write the key as a simple word followed by ":"' });
        continue;
      }
      // Keys are never interpolated: the shape of the file must not depend on the host environment.
      const name = typeof key.value === 'string' ? key.value : (key.source ?? String(key.value));
      if (name === '<<') {
        walk.diagnostics.push({ offset: keyStart, path: [...path, name], message: 'merge keys (<<) are not supported', hint: 'write the merged fields out' });
        continue;
      }
      const valueNode = pair.value as Node | null;
      const emptyValue = valueNode === null || (isScalar(valueNode) && valueNode.value === null && valueNode.source === '');
      const childPath = [...path, name];
      // An empty value (`key:`) has no position of its own; its key is what the user should look at.
      const child = toValue(emptyValue ? null : valueNode, childPath, keyStart, walk, depth + 1);
      Object.defineProperty(out, name, { value: child, enumerable: true, writable: true, configurable: true });
    }
    return out;
  }
  if (isSeq(node)) {
    walk.index.set(toPointer(path), { path, keyOffset, valueOffset: offset, empty: false });
    return node.items.map((item, i) => toValue(item, [...path, i], undefined, walk, depth + 1));
  }
  if (isScalar(node)) {
    return scalarValue(node, path, keyOffset, offset, walk);
  }
  walk.diagnostics.push({ offset, path, message: 'unsupported YAML node', hint: 'use plain strings, numbers, booleans, lists and mappings' });
  return null;
}

function scalarValue(node: Node & { value: unknown; source?: string; type?: string }, path: PathSegment[], keyOffset: number | undefined, offset: number, walk: Walk): unknown {
  const info = { path, keyOffset, valueOffset: offset, empty: false, text: node.source ?? String(node.value) };
  walk.index.set(toPointer(path), info);
  const value = node.value;
  if (typeof value === 'number' && !Number.isFinite(value)) {
    walk.diagnostics.push({ offset, path, message: `${node.source ?? String(value)} is not a finite number`, hint: 'write a plain number' });
    return null;
  }
  if (typeof value !== 'string') return value;
  if (!needsInterpolation(value)) {
    info.text = value;
    return value;
  }
  let expanded: string;
  try {
    expanded = interpolate(value, walk.env);
  } catch (error) {
    if (!(error instanceof InterpolationError)) throw error;
    walk.diagnostics.push({ offset, path, message: error.message, hint: error.hint });
    return null;
  }
  info.text = expanded;
  // An unquoted `${PORT}` should act as if the number had been written there; a quoted one stays a string.
  if (node.type === 'PLAIN' && node.tag === undefined) {
    if (INT.test(expanded) || FLOAT.test(expanded)) return Number(expanded);
    if (expanded === 'true' || expanded === 'false') return expanded === 'true';
  }
  return expanded;
}
