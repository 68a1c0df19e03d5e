/**
 * Ignore rules with git's semantics (gitignore(5)), written here rather than taken from a package so the
 * precedence between env.yaml patterns, .gitignore and .envyignore is ours to define:
 *
 *   lowest   workspace.ignore patterns from env.yaml (like .git/info/exclude: a baseline for the tree)
 *            .gitignore of a directory, then that directory's .envyignore (so `!.env` in .envyignore can
 *            re-include a file git ignores), each deeper directory overriding its ancestors
 *   highest  built-in rules for envy's own temp files
 *
 * Within one source the last matching pattern wins. As in git, nothing below an ignored directory can be
 * re-included: callers ask about a path and every ancestor is checked first.
 */

export const IGNORE_FILE_NAMES = ['.gitignore', '.envyignore'] as const;

/** Prefix of the temp files the transports write before renaming; never synced in either direction. */
export const SYNC_TEMP_PREFIX = '.envy-sync-tmp.';

interface Rule {
  negate: boolean;
  dirOnly: boolean;
  /** Matches the basename only (pattern had no slash except a trailing one). */
  basenameOnly: boolean;
  regex: RegExp;
  /** Pattern text as written, for diagnostics. */
  source: string;
}

interface RuleSet {
  /** Directory (relative to the tree root, '' for the root) the patterns are relative to. */
  baseDir: string;
  rules: Rule[];
}

/** Translate one gitignore pattern body (no `!`, no trailing `/`) into a regex source. */
function globToRegexSource(glob: string): string {
  let out = '';
  let i = 0;
  while (i < glob.length) {
    const c = glob[i]!;
    if (c === '*') {
      if (glob[i + 1] === '*') {
        const atStart = i === 0 || glob[i - 1] === '/';
        const atEnd = i + 2 === glob.length;
        const slashAfter = glob[i + 2] === '/';
        if (atStart && slashAfter) {
          // `**/` : zero or more leading directories.
          out += '(?:[^/]*/)*';
          i += 3;
          continue;
        }
        if (atStart && atEnd) {
          // `/**` at the end (or a bare `**`): everything inside.
          out += '.*';
          i += 2;
          continue;
        }
        // Any other run of asterisks behaves like a single `*`.
        while (glob[i] === '*') i++;
        out += '[^/]*';
        continue;
      }
      out += '[^/]*';
      i++;
      continue;
    }
    if (c === '?') {
      out += '[^/]';
      i++;
      continue;
    }
    if (c === '[') {
      const close = findClassEnd(glob, i);
      if (close === -1) {
        out += '\\[';
        i++;
        continue;
      }
      let body = glob.slice(i + 1, close);
      let negated = false;
      if (body.startsWith('!') || body.startsWith('^')) {
        negated = true;
        body = body.slice(1);
      }
      const escaped = body.replace(/\\(.)/g, '$1').replace(/[\\\]^]/g, (m) => `\\${m}`);
      out += negated ? `[^/${escaped}]` : `[${escaped}]`;
      i = close + 1;
      continue;
    }
    if (c === '\\' && i + 1 < glob.length) {
      out += escapeRegex(glob[i + 1]!);
      i += 2;
      continue;
    }
    out += escapeRegex(c);
    i++;
  }
  return out;
}

function findClassEnd(glob: string, open: number): number {
  let j = open + 1;
  if (glob[j] === '!' || glob[j] === '^') j++;
  // A `]` right after the opening bracket is a literal member.
  if (glob[j] === ']') j++;
  for (; j < glob.length; j++) {
    if (glob[j] === '\\') {
      j++;
      continue;
    }
    if (glob[j] === ']') return j;
  }
  return -1;
}

function escapeRegex(c: string): string {
  return /[.*+?^${}()|[\]\\/]/.test(c) ? `\\${c}` : c;
}

/** Parse one line of an ignore file; null for blanks and comments. */
export function parseIgnoreLine(line: string): Rule | null {
  let text = line.replace(/\r$/, '');
  // Trailing spaces are dropped unless escaped with a backslash.
  text = text.replace(/(?<!\\)\s+$/, '');
  if (text.endsWith('\\ ')) text = text.slice(0, -2) + ' ';
  if (text === '' || text.startsWith('#')) return null;
  let negate = false;
  if (text.startsWith('!')) {
    negate = true;
    text = text.slice(1);
  } else if (text.startsWith('\\!') || text.startsWith('\\#')) {
    text = text.slice(1);
  }
  let dirOnly = false;
  if (text.endsWith('/') && !text.endsWith('\\/')) {
    dirOnly = true;
    text = text.replace(/\/+$/, '');
  }
  if (text === '') return null;
  const basenameOnly = !text.includes('/');
  if (text.startsWith('/')) text = text.slice(1);
  return { negate, dirOnly, basenameOnly, regex: new RegExp(`^${globToRegexSource(text)}$`), source: line };
}

export function parseIgnoreText(text: string): Rule[] {
  return text
    .split('\n')
    .map(parseIgnoreLine)
    .filter((r): r is Rule => r !== null);
}

function parentOf(path: string): string {
  const slash = path.lastIndexOf('/');
  return slash === -1 ? '' : path.slice(0, slash);
}

function baseName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

/**
 * The ignore decision for a tree. Paths are relative to the tree root with `/` separators and no
 * leading or trailing slash.
 */
export class IgnoreMatcher {
  /** workspace.ignore patterns: relative to the root, lowest precedence. */
  private readonly baseline: RuleSet;
  /** Per directory: [.gitignore rules, .envyignore rules]. */
  private readonly fileRules = new Map<string, Map<string, RuleSet>>();
  /** Ancestor decisions are asked for again and again during a walk; cleared when rules change. */
  private readonly dirCache = new Map<string, boolean>();

  constructor(extraPatterns: readonly string[] = []) {
    this.baseline = { baseDir: '', rules: extraPatterns.map(parseIgnoreLine).filter((r): r is Rule => r !== null) };
  }

  /** Install (or with null content, drop) the rules of one ignore file found in `dir`. */
  setIgnoreFile(dir: string, fileName: string, content: string | null): void {
    let forDir = this.fileRules.get(dir);
    if (content === null) {
      forDir?.delete(fileName);
      if (forDir && forDir.size === 0) this.fileRules.delete(dir);
    } else {
      if (!forDir) {
        forDir = new Map();
        this.fileRules.set(dir, forDir);
      }
      forDir.set(fileName, { baseDir: dir, rules: parseIgnoreText(content) });
    }
    this.dirCache.clear();
  }

  /** Whether any ignore file rules are known for `dir` (so a caller knows whether to reload). */
  hasIgnoreFile(dir: string, fileName: string): boolean {
    return this.fileRules.get(dir)?.has(fileName) ?? false;
  }

  /** True when `path` (or any directory above it) is ignored. */
  ignores(path: string, isDir: boolean): boolean {
    if (path === '') return false;
    const name = baseName(path);
    if (name.startsWith(SYNC_TEMP_PREFIX)) return true;
    const parent = parentOf(path);
    if (parent !== '' && this.ignoresDir(parent)) return true;
    return this.decide(path, isDir);
  }

  private ignoresDir(dir: string): boolean {
    const cached = this.dirCache.get(dir);
    if (cached !== undefined) return cached;
    const parent = parentOf(dir);
    const result = (parent !== '' && this.ignoresDir(parent)) || this.decide(dir, true);
    this.dirCache.set(dir, result);
    return result;
  }

  /** The path's own verdict, ignoring ancestors: the last matching rule in precedence order. */
  private decide(path: string, isDir: boolean): boolean {
    let verdict: boolean | undefined;
    const consider = (set: RuleSet): void => {
      const relative = set.baseDir === '' ? path : path.slice(set.baseDir.length + 1);
      const name = baseName(relative);
      for (const rule of set.rules) {
        if (rule.dirOnly && !isDir) continue;
        if ((rule.basenameOnly ? rule.regex.test(name) : rule.regex.test(relative))) verdict = !rule.negate;
      }
    };
    consider(this.baseline);
    // Outer directories first, so deeper ignore files override their ancestors.
    const dirs = [''];
    const parts = parentOf(path).split('/').filter((p) => p !== '');
    for (let i = 1; i <= parts.length; i++) dirs.push(parts.slice(0, i).join('/'));
    for (const dir of dirs) {
      const forDir = this.fileRules.get(dir);
      if (!forDir) continue;
      for (const fileName of IGNORE_FILE_NAMES) {
        const set = forDir.get(fileName);
        if (set) consider(set);
      }
    }
    return verdict ?? false;
  }
}
