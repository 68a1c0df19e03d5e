/**
 * Globs for `setup[].inputs`, matched against the project tree. Node 20 has no
 * stable fs.glob, so this is a small matcher walked segment by segment: a
 * literal segment is looked up directly, so `package.json` or `src/**` never
 * reads the rest of the project.
 *
 * Syntax: `*` any run of characters within one path segment (dotfiles
 * included: a cache key should not miss `.npmrc`), `?` one character,
 * `[abc]` / `[a-z]` / `[!abc]` a class, `{a,b}` alternatives, `**` as a whole
 * segment any number of directories (zero included), `\` escapes the next character.
 * `**` does not descend into symlinked directories, so a link cycle cannot loop it.
 */
import { readdirSync, statSync, type Dirent } from 'node:fs';
import { posix } from 'node:path';

const MAGIC = /[*?[{\\]/;

export function hasMagic(pattern: string): boolean {
  return MAGIC.test(pattern);
}

/** The regular expression for one path segment (no `/` inside). */
export function segmentRegExp(segment: string): RegExp {
  return new RegExp(`^${segmentSource(segment)}$`, 'u');
}

function segmentSource(segment: string): string {
  let out = '';
  for (let i = 0; i < segment.length; i++) {
    const char = segment[i]!;
    if (char === '\\' && i + 1 < segment.length) {
      out += escapeRegExp(segment[++i]!);
    } else if (char === '*') {
      while (segment[i + 1] === '*') i++;
      out += '[^/]*';
    } else if (char === '?') {
      out += '[^/]';
    } else if (char === '[') {
      const end = classEnd(segment, i);
      if (end === -1) {
        out += '\\[';
      } else {
        let body = segment.slice(i + 1, end);
        const negated = body.startsWith('!') || body.startsWith('^');
        if (negated) body = body.slice(1);
        // Inside a class only `\`, `]` and `^` are special to RegExp; `-` keeps its range meaning.
        const escaped = body.replace(/[\\\]^]/g, (c) => `\\${c}`);
        out += negated ? `[^/${escaped}]` : `[${escaped}]`;
        i = end;
      }
    } else if (char === '{') {
      const end = braceEnd(segment, i);
      if (end === -1) {
        out += '\\{';
      } else {
        const alternatives = splitTopLevel(segment.slice(i + 1, end));
        out += `(?:${alternatives.map(segmentSource).join('|')})`;
        i = end;
      }
    } else {
      out += escapeRegExp(char);
    }
  }
  return out;
}

function classEnd(segment: string, open: number): number {
  // A `]` right after `[` or `[!` is a member, not the end.
  let i = open + 1;
  if (segment[i] === '!' || segment[i] === '^') i++;
  if (segment[i] === ']') i++;
  for (; i < segment.length; i++) if (segment[i] === ']') return i;
  return -1;
}

function braceEnd(segment: string, open: number): number {
  let depth = 0;
  for (let i = open; i < segment.length; i++) {
    const char = segment[i];
    if (char === '\\') i++;
    else if (char === '{') depth++;
    else if (char === '}' && --depth === 0) return i;
  }
  return -1;
}

function splitTopLevel(body: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < body.length; i++) {
    const char = body[i];
    if (char === '\\') i++;
    else if (char === '{') depth++;
    else if (char === '}') depth--;
    else if (char === ',' && depth === 0) {
      parts.push(body.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(body.slice(start));
  return parts;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}

function unescapeLiteral(segment: string): string {
  return segment.replace(/\\(.)/g, '$1');
}

/**
 * The project-relative paths (posix, sorted, no duplicates) that `pattern`
 * matches under `root`: files, directories and symlinks alike. `pattern` must
 * already be relative and normalized; the caller confines what it gets back.
 */
export function expandGlob(root: string, pattern: string): string[] {
  const segments = pattern.split('/').filter((segment) => segment !== '' && segment !== '.');
  const found = new Set<string>();
  walk(root, '', segments, found);
  return [...found].sort();
}

function walk(root: string, dir: string, segments: string[], found: Set<string>): void {
  if (segments.length === 0) {
    if (dir !== '') found.add(dir);
    return;
  }
  const [segment, ...rest] = segments as [string, ...string[]];
  if (segment === '**') {
    if (rest.length === 0) {
      // A trailing `**` means everything below: the directory stands for its whole tree.
      if (dir !== '') found.add(dir);
      else for (const entry of entries(root, dir)) found.add(entry.name);
      return;
    }
    // Zero directories, then one more level at a time.
    walk(root, dir, rest, found);
    for (const entry of entries(root, dir)) {
      if (entry.isDirectory()) walk(root, join(dir, entry.name), segments, found);
    }
    return;
  }
  if (!hasMagic(segment)) {
    const name = unescapeLiteral(segment);
    if (exists(posix.join(root, dir, name))) walk(root, join(dir, name), rest, found);
    return;
  }
  const regexp = segmentRegExp(segment);
  for (const entry of entries(root, dir)) {
    if (regexp.test(entry.name)) walk(root, join(dir, entry.name), rest, found);
  }
}

function join(dir: string, name: string): string {
  return dir === '' ? name : `${dir}/${name}`;
}

function entries(root: string, dir: string): Dirent[] {
  try {
    return readdirSync(posix.join(root, dir), { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  } catch (error) {
    // A file matched a middle segment: nothing below it can match.
    if (isMissing(error)) return [];
    throw error;
  }
}

function exists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch (error) {
    if (isMissing(error)) return false;
    throw error;
  }
}

function isMissing(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}
