/**
 * A directory as a deterministic layer tar: entries sorted by path, mtimes
 * clamped to SOURCE_DATE_EPOCH, owners as numbers, no user/group names, and
 * overlayfs' own markers turned into OCI ones (a 0/0 character device becomes
 * `.wh.NAME`, an opaque directory gets `.wh..wh..opq`). Its sha256 is the
 * layer's diff_id; the same tree gives the same digest on any machine.
 *
 * Runs as root inside the user namespace (layer-worker.ts), where it can read
 * every file of the layer and sees the owners as the image sees them.
 */
import { createHash } from 'node:crypto';
import { createReadStream, lstatSync, readdirSync, readlinkSync, type Stats } from 'node:fs';
import { join } from 'node:path';
import { Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import { tryRun } from '../exec.js';

export interface SnapshotOptions {
  /** Seconds since the epoch: later mtimes are clamped to it. */
  sourceDateEpoch?: number;
  /** Opaque directories (relative paths); default: asked of getfattr. */
  opaqueDirs?: Set<string>;
  /** Where the tar bytes go besides the hash (export); it is ended when the tar is complete. Default: only hashed. */
  sink?: Writable;
}

export interface SnapshotResult {
  diffId: string;
  size: number;
  entries: number;
  whiteouts: string[];
  opaqueDirs: string[];
  skippedDevices: number;
}

/** Relative paths of directories marked opaque with the userxattr overlay attribute. */
export async function findOpaqueDirs(root: string): Promise<Set<string>> {
  const result = await tryRun('getfattr', ['-R', '-P', '--absolute-names', '-d', '-m', '^user\\.overlay\\.opaque$', root]);
  const dirs = new Set<string>();
  if (!result) return dirs;
  let current: string | undefined;
  for (const line of String(result.stdout).split('\n')) {
    if (line.startsWith('# file: ')) current = line.slice('# file: '.length);
    else if (current && /^user\.overlay\.opaque="y"$/.test(line.trim())) {
      const rel = current === root ? '' : current.slice(root.length + 1);
      if (rel) dirs.add(rel);
    }
  }
  return dirs;
}

function isWhiteoutDevice(stats: Stats): boolean {
  return stats.isCharacterDevice() && stats.rdev === 0;
}

/** Every path under root, depth-first, children sorted bytewise: tar order is the digest's order. */
function* walk(root: string, rel = ''): Generator<{ rel: string; stats: Stats }> {
  const names = readdirSync(join(root, rel)).sort((a, b) => (Buffer.compare(Buffer.from(a), Buffer.from(b))));
  for (const name of names) {
    const childRel = rel ? `${rel}/${name}` : name;
    const stats = lstatSync(join(root, childRel));
    yield { rel: childRel, stats };
    if (stats.isDirectory()) yield* walk(root, childRel);
  }
}

export async function snapshotDirectory(root: string, options: SnapshotOptions = {}): Promise<SnapshotResult> {
  const opaque = options.opaqueDirs ?? (await findOpaqueDirs(root));
  const clamp = (mtime: Date): Date => {
    if (options.sourceDateEpoch === undefined) return new Date(Math.floor(mtime.getTime() / 1000) * 1000);
    return new Date(Math.min(Math.floor(mtime.getTime() / 1000), options.sourceDateEpoch) * 1000);
  };
  const pack = tar.pack();
  const hash = createHash('sha256');
  let size = 0;
  const hasher = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      hash.update(chunk);
      size += chunk.length;
      callback(null, chunk);
    },
  });
  const discard = new Writable({ write: (_chunk, _encoding, callback) => callback() });
  const consumed = pipeline(pack, hasher, options.sink ?? discard);

  const whiteouts: string[] = [];
  let entries = 0;
  let skippedDevices = 0;
  const firstPathOfInode = new Map<string, string>();
  const addEntry = (header: Partial<tar.Header> & { name: string }, body?: Buffer): Promise<void> =>
    new Promise((resolve, reject) => {
      entries++;
      const done = (error?: Error | null): void => (error ? reject(error) : resolve());
      // tar-stream leaves a file entry without a body open for streaming: empty markers need an empty body.
      if (body || header.type === 'file') pack.entry(header, body ?? Buffer.alloc(0), done);
      else pack.entry(header, done);
    });

  for (const { rel, stats } of walk(root)) {
    const base = { mode: stats.mode & 0o7777, uid: stats.uid, gid: stats.gid, mtime: clamp(stats.mtime), uname: '', gname: '' };
    if (isWhiteoutDevice(stats)) {
      const slash = rel.lastIndexOf('/');
      const name = slash < 0 ? `.wh.${rel}` : `${rel.slice(0, slash)}/.wh.${rel.slice(slash + 1)}`;
      whiteouts.push(rel);
      await addEntry({ ...base, name, type: 'file', size: 0, mode: 0o644 });
    } else if (stats.isDirectory()) {
      await addEntry({ ...base, name: `${rel}/`, type: 'directory' });
      if (opaque.has(rel)) await addEntry({ ...base, name: `${rel}/.wh..wh..opq`, type: 'file', size: 0, mode: 0o644 });
    } else if (stats.isSymbolicLink()) {
      await addEntry({ ...base, name: rel, type: 'symlink', linkname: readlinkSync(join(root, rel)) });
    } else if (stats.isFile()) {
      const inode = `${stats.dev}:${stats.ino}`;
      const first = stats.nlink > 1 ? firstPathOfInode.get(inode) : undefined;
      if (first !== undefined) {
        await addEntry({ ...base, name: rel, type: 'link', linkname: first });
        continue;
      }
      if (stats.nlink > 1) firstPathOfInode.set(inode, rel);
      await new Promise<void>((resolve, reject) => {
        entries++;
        const entry = pack.entry({ ...base, name: rel, type: 'file', size: stats.size }, (error) => (error ? reject(error) : resolve()));
        pipeline(createReadStream(join(root, rel)), entry).catch(reject);
      });
    } else if (stats.isFIFO()) {
      await addEntry({ ...base, name: rel, type: 'fifo' });
    } else {
      // Device nodes cannot be made rootlessly and sockets are not content.
      skippedDevices++;
    }
  }
  pack.finalize();
  await consumed;
  return { diffId: `sha256:${hash.digest('hex')}`, size, entries, whiteouts, opaqueDirs: [...opaque].sort(), skippedDevices };
}
