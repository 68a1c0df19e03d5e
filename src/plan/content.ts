/**
 * Content digests of project files for step keys, and the confinement of
 * env.yaml's project paths: a path must name something inside the project
 * once `..` and symlinks are resolved, because env.yaml may come from a repo
 * its user did not write.
 */
import { closeSync, lstatSync, mkdirSync, openSync, readFileSync, readSync, readdirSync, readlinkSync, realpathSync, statSync, type Stats } from 'node:fs';
import { dirname, join, posix } from 'node:path';
import { createHash } from 'node:crypto';
import { EnvyError } from '../errors.js';
import { writeFileAtomic } from '../state/atomic.js';
import { cacheDir } from '../state/paths.js';
import { canonicalDigest } from './canonical.js';

const CHUNK_BYTES = 1024 * 1024;

/** sha256 hex of a file's bytes, read in chunks so a large archive never sits in memory whole. */
export function hashFileSync(path: string): string {
  const hash = createHash('sha256');
  const buffer = Buffer.allocUnsafe(CHUNK_BYTES);
  const fd = openSync(path, 'r');
  try {
    for (;;) {
      const read = readSync(fd, buffer, 0, CHUNK_BYTES, null);
      if (read === 0) break;
      hash.update(buffer.subarray(0, read));
    }
  } finally {
    closeSync(fd);
  }
  return hash.digest('hex');
}

interface CachedDigest {
  stamp: string;
  digest: string;
}

/** How many files the digest cache remembers (base archives: a handful per user). */
const DIGEST_CACHE_ENTRIES = 64;

/**
 * hashFileSync behind a cache keyed by the file's identity and change stamps (device, inode, size,
 * mtime and ctime in nanoseconds), so a base archive of hundreds of MB is hashed once rather than on
 * every plan (~230 ms per 223 MB here, and `up` plans more than once). ctime moves on every write or
 * rename onto the path and no tool sets it back, so a changed file never matches a stale entry.
 */
export function hashFileCached(path: string, cacheFile = join(cacheDir(), 'file-digests.json')): string {
  const stampOf = (): string => {
    const s = statSync(path, { bigint: true });
    return `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
  };
  const stamp = stampOf();
  let cache: Record<string, CachedDigest> = {};
  try {
    cache = JSON.parse(readFileSync(cacheFile, 'utf8')) as Record<string, CachedDigest>;
  } catch {
    // No cache yet, or an unreadable one: it is rebuilt.
  }
  const hit = cache[path];
  if (hit?.stamp === stamp && typeof hit.digest === 'string') return hit.digest;
  const digest = hashFileSync(path);
  // A file written while it was read has a new stamp: its digest is not remembered.
  if (stampOf() !== stamp) return digest;
  delete cache[path];
  const entries = [...Object.entries(cache).slice(-(DIGEST_CACHE_ENTRIES - 1)), [path, { stamp, digest }] as const];
  try {
    mkdirSync(dirname(cacheFile), { recursive: true });
    writeFileAtomic(cacheFile, JSON.stringify(Object.fromEntries(entries)));
  } catch {
    // A cache that cannot be written costs a hash next time, nothing more.
  }
  return digest;
}

/** The project directory with symlinks resolved: the fence every project path is checked against. */
export function projectRoot(projectDir: string): string {
  try {
    return realpathSync(projectDir);
  } catch (error) {
    throw new EnvyError('CONFIG_READ', `project directory ${projectDir} cannot be read: ${(error as Error).message}`, { cause: error });
  }
}

function inside(root: string, path: string): boolean {
  return path === root || path.startsWith(root.endsWith('/') ? root : `${root}/`);
}

/**
 * Check the lexical form of a project path from env.yaml and return it
 * normalized ('.' for the project itself). `field` names it in errors.
 */
export function checkProjectPath(path: string, field: string): string {
  if (posix.isAbsolute(path)) {
    throw new EnvyError('CONFIG_INVALID', `${field}: "${path}" is an absolute path; project paths are relative to env.yaml`, {
      hint: 'write the path relative to the directory that holds env.yaml',
    });
  }
  const normalized = posix.normalize(path).replace(/\/+$/, '') || '.';
  if (normalized === '..' || normalized.startsWith('../')) {
    throw new EnvyError('CONFIG_INVALID', `${field}: "${path}" leaves the project directory`, {
      hint: 'paths from env.yaml stay inside the project; move the file into it',
    });
  }
  return normalized;
}

/**
 * The real location of `relative` (already lexically checked) under `root`,
 * refused when a symlink on the way leads outside the project.
 */
export function confine(root: string, relative: string, field: string): string {
  const joined = posix.join(root, relative);
  let real: string;
  try {
    real = realpathSync(joined);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      throw new EnvyError('CONFIG_INVALID', `${field}: "${relative}" does not exist in the project directory`, {
        hint: 'create it, or fix the path (it is relative to env.yaml)',
      });
    }
    throw new EnvyError('CONFIG_INVALID', `${field}: "${relative}" cannot be resolved: ${(error as Error).message}`, { cause: error });
  }
  if (!inside(root, real)) {
    throw new EnvyError('CONFIG_INVALID', `${field}: "${relative}" is a symlink to ${real}, outside the project directory`, {
      hint: 'envy copies and hashes only files inside the project; copy the target into the project instead of linking to it',
    });
  }
  return real;
}

function stat(path: string, label: string, field: string): Stats {
  try {
    return lstatSync(path);
  } catch (error) {
    throw new EnvyError('CONFIG_INVALID', `${field}: cannot read "${label}": ${(error as Error).message}`, { cause: error });
  }
}

/** The mode envy gives a copied file when env.yaml sets none: only the owner's execute bit survives, as in git. */
export function normalizedMode(stats: Stats): string {
  if (stats.isDirectory()) return '0755';
  return stats.mode & 0o100 ? '0755' : '0644';
}

/** One entry of a hashed tree; `path` is relative to the tree's root, '.' for a lone file. */
export type TreeEntry = {
  path: string;
  type: 'file' | 'dir' | 'symlink';
  mode?: string;
  /** sha256 hex of a file's bytes. */
  digest?: string;
  /** A symlink's target as written (links inside a tree are copied, not followed). */
  target?: string;
};

/**
 * Every entry under `real` (a file or directory inside the project), sorted by
 * path. `label` is the project-relative name used in errors. FIFOs, sockets
 * and devices are refused: reading a FIFO would hang the plan forever.
 */
export function treeEntries(real: string, label: string, field: string): TreeEntry[] {
  const top = stat(real, label, field);
  if (top.isFile()) return [{ path: '.', type: 'file', mode: normalizedMode(top), digest: hashFileSync(real) }];
  if (!top.isDirectory()) throw special(label, field);
  const out: TreeEntry[] = [];
  const visit = (dir: string, relative: string) => {
    let names: string[];
    try {
      names = readdirSync(dir).sort();
    } catch (error) {
      throw new EnvyError('CONFIG_INVALID', `${field}: cannot read "${posix.join(label, relative)}": ${(error as Error).message}`, { cause: error });
    }
    for (const name of names) {
      const path = relative === '' ? name : `${relative}/${name}`;
      const absolute = posix.join(dir, name);
      const stats = stat(absolute, posix.join(label, path), field);
      if (stats.isSymbolicLink()) out.push({ path, type: 'symlink', target: readlinkSync(absolute) });
      else if (stats.isFile()) out.push({ path, type: 'file', mode: normalizedMode(stats), digest: hashFileSync(absolute) });
      else if (stats.isDirectory()) {
        out.push({ path, type: 'dir', mode: normalizedMode(stats) });
        visit(absolute, path);
      } else throw special(posix.join(label, path), field);
    }
  };
  visit(real, '');
  return out;
}

function special(label: string, field: string): EnvyError {
  return new EnvyError('CONFIG_INVALID', `${field}: "${label}" is not a regular file, directory or symlink`, {
    hint: 'envy copies and hashes regular files, directories and symlinks only (no FIFOs, sockets or devices)',
  });
}

/** One digest for a whole source: a file and a directory holding the same bytes never collide. */
export function treeDigest(entries: TreeEntry[], isDirectory: boolean): string {
  return `sha256:${canonicalDigest({ type: isDirectory ? 'dir' : 'file', entries })}`;
}
