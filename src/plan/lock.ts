/**
 * env.lock: what env.yaml resolved to (base digest, package versions) plus a
 * digest of the env.yaml fields that shape the build, so `--frozen` can say
 * precisely where env.yaml and env.lock part ways. YAML, like env.yaml, with a
 * fixed key order and every string quoted: diffs show one changed line per
 * changed version, and YAML 1.1 readers cannot mistake `1:2.3` or `1.10` for
 * numbers. Format: docs/lockfile.md.
 */
import { readFileSync } from 'node:fs';
import { isMap, isNode, isScalar, LineCounter, parseDocument, stringify, type Document } from 'yaml';
import type { Arch, BaseSource, EnvSpec } from '../config/types.js';
import { hostArch } from '../config/normalize.js';
import { EnvyError } from '../errors.js';
import { formatReference, parseReference } from '../image/reference.js';
import { writeFileAtomic } from '../state/atomic.js';
import { canonicalDigest, type Canonical } from './canonical.js';
import { kernelPackage } from './kernel.js';
import type { EnvLock, LockedBase, LockSection, LockedKernel } from './types.js';

export const LOCK_FILE_NAME = 'env.lock';
export const LOCKFILE_VERSION = 1;
const MAX_LOCK_BYTES = 16 * 1024 * 1024;
const MANAGERS = ['apt', 'npm', 'pip'] as const;
const SECTIONS: readonly LockSection[] = ['env', 'files', 'setup', 'user', 'workdir'];
const DIGEST = /^sha256:[a-f0-9]{64}$/;
const FROZEN_HINT = 'run envy up without --frozen to update env.lock, then commit it';

/** A base as it identifies itself, digest aside: two bases are the same when these agree. */
function baseIdentity(base: BaseSource): { [key: string]: Canonical } {
  switch (base.kind) {
    case 'debian':
      return { kind: 'debian', suite: base.suite, snapshot: base.snapshot, mirror: base.mirror };
    case 'image':
      return { kind: 'image', ref: canonicalRef(base.ref) };
    case 'oci':
      return { kind: 'oci', path: base.path };
    case 'host':
      return { kind: 'host' };
  }
}

function canonicalRef(ref: string): string {
  try {
    return formatReference(parseReference(ref));
  } catch {
    // An invalid ref is reported by whoever pulls it; here it only has to compare equal to itself.
    return ref;
  }
}

export function sameBase(a: BaseSource, b: BaseSource): boolean {
  return canonicalDigest(baseIdentity(a)) === canonicalDigest(baseIdentity(b));
}

/**
 * The architecture a lock's base digest is for: a VM's is written down (base.arch); a lock without one
 * was written for the host's. A base's digest differs per architecture (an index entry, a bootstrap).
 */
export function lockedArch(lock: EnvLock): Arch {
  return lock.base.arch ?? hostArch();
}

/** The architecture an env.yaml builds for, as env.lock records it: only a VM names one. */
function specArch(spec: EnvSpec): Arch | undefined {
  return spec.backend.type === 'vm' ? spec.backend.arch : undefined;
}

/** The lock's base digest when the lock was written for this very base and architecture. */
export function lockedBaseDigest(base: BaseSource, lock: EnvLock | undefined, arch: Arch = hostArch()): string | undefined {
  return lock && sameBase(lock.base, base) && lockedArch(lock) === arch ? lock.base.digest : undefined;
}

function describeKernel(name: string | undefined, file: string | undefined): string {
  return name ?? (file !== undefined ? `the kernel file ${file}` : 'none');
}

export function describeBase(base: BaseSource): string {
  switch (base.kind) {
    case 'debian':
      return `debian:${base.suite}${base.snapshot ? `@${base.snapshot}` : ''}${base.mirror ? ` (mirror ${base.mirror})` : ''}`;
    case 'image':
      return `image ${base.ref}`;
    case 'oci':
      return `oci ${base.path}`;
    case 'host':
      return 'host';
  }
}

function packageList(spec: EnvSpec, manager: (typeof MANAGERS)[number]): string[] {
  return [...new Set(spec.packages[manager])].sort();
}

/**
 * The env.yaml fields that shape the image, normalized, per section. Left out
 * on purpose: the name, setup step labels, and everything that only shapes how
 * the env runs (ports, services, mounts, hooks, resources, backend), since
 * changing those needs no rebuild and so no new lock. `user` holds the fields
 * as declared, never the host user's values, so the lock is the same for
 * every teammate.
 */
export function specSections(spec: EnvSpec): Record<LockSection, Canonical> {
  const env: { [key: string]: Canonical } = {};
  for (const name of Object.keys(spec.env).sort()) env[name] = spec.env[name];
  return {
    env,
    files: spec.files.map((file) => ({ src: file.src, dest: file.dest, mode: file.mode })),
    setup: spec.setup.map((step) => ({ run: step.run, shell: [...step.shell], user: step.user, inputs: [...step.inputs] })),
    user: { name: spec.user.name, uid: spec.user.uid, gid: spec.user.gid, home: spec.user.home, shell: spec.user.shell },
    workdir: { workdir: spec.workdir, workspace: spec.workspace.path },
  };
}

function sectionDigests(spec: EnvSpec): Record<LockSection, string> {
  const sections = specSections(spec);
  const out = {} as Record<LockSection, string>;
  for (const section of SECTIONS) out[section] = `sha256:${canonicalDigest(sections[section])}`;
  return out;
}

function specDigestOf(spec: EnvSpec, sections: Record<LockSection, string>): string {
  const packages: { [key: string]: Canonical } = {};
  for (const manager of MANAGERS) packages[manager] = packageList(spec, manager);
  return `sha256:${canonicalDigest({ base: baseIdentity(spec.base), packages, sections })}`;
}

/** The lock for `spec` with nothing resolved yet: no base digest, every version null. */
export function lockFromSpec(spec: EnvSpec): EnvLock {
  const sections = sectionDigests(spec);
  const packages = {} as EnvLock['packages'];
  for (const manager of MANAGERS) {
    packages[manager] = {};
    for (const name of packageList(spec, manager)) packages[manager][name] = null;
  }
  const lock: EnvLock = { lockfileVersion: LOCKFILE_VERSION, specDigest: specDigestOf(spec, sections), sections, base: { ...spec.base }, packages };
  const arch = specArch(spec);
  if (arch !== undefined) lock.base.arch = arch;
  const kernel = kernelPackage(spec);
  if (kernel !== undefined) lock.kernel = { package: kernel };
  else if (spec.backend.type === 'vm' && spec.backend.kernelFile !== undefined) lock.kernel = { file: spec.backend.kernelFile };
  return lock;
}

/**
 * The lock for `spec`, keeping what `previous` resolved that still applies:
 * the base digest when the base is unchanged, versions of packages still listed.
 */
export function refreshLock(spec: EnvSpec, previous: EnvLock | undefined): EnvLock {
  const lock = lockFromSpec(spec);
  if (!previous) return lock;
  const digest = lockedBaseDigest(spec.base, previous, lock.base.arch);
  if (digest !== undefined) lock.base.digest = digest;
  for (const manager of MANAGERS) {
    for (const name of Object.keys(lock.packages[manager])) {
      const version = previous.packages[manager][name];
      if (typeof version === 'string') lock.packages[manager][name] = version;
    }
  }
  const was = previous.kernel;
  if (lock.kernel?.package !== undefined && was?.package === lock.kernel.package && was.resolved && was.version) lock.kernel = { ...was };
  // A kernel file's digest is the build's to write (buildProject): the file may have changed since.
  if (lock.kernel?.file !== undefined && was?.file === lock.kernel.file && was.digest) lock.kernel = { ...was };
  return lock;
  return lock;
}

/**
 * Under --frozen env.lock must already describe env.yaml. Throws LOCK_MISMATCH
 * naming every disagreement (the first in the message, the rest as details).
 */
export function checkFrozen(spec: EnvSpec, lock: EnvLock | undefined): void {
  if (!lock) {
    throw new EnvyError('LOCK_MISMATCH', `${LOCK_FILE_NAME} is missing, and --frozen forbids writing it`, {
      hint: 'run envy up without --frozen to write env.lock, then commit it',
    });
  }
  const problems: string[] = [];
  if (!sameBase(lock.base, spec.base)) problems.push(`base changed from ${describeBase(lock.base)} to ${describeBase(spec.base)}`);
  const arch = specArch(spec) ?? hostArch();
  if (lockedArch(lock) !== arch) problems.push(`backend: the architecture changed from ${lockedArch(lock)} to ${arch}`);
  for (const manager of MANAGERS) {
    const wanted = packageList(spec, manager);
    const locked = Object.keys(lock.packages[manager]);
    for (const name of wanted) {
      if (!Object.hasOwn(lock.packages[manager], name)) problems.push(`packages.${manager}: env.yaml adds "${name}", env.lock lacks it`);
    }
    for (const name of locked.sort()) {
      if (!wanted.includes(name)) problems.push(`packages.${manager}: env.yaml drops "${name}", env.lock still has it`);
    }
  }
  const kernel = describeKernel(kernelPackage(spec), spec.backend.type === 'vm' ? spec.backend.kernelFile : undefined);
  const lockedKernel = describeKernel(lock.kernel?.package, lock.kernel?.file);
  if (kernel !== lockedKernel) problems.push(`backend: the VM kernel changed from ${lockedKernel} to ${kernel}`);
  const sections = sectionDigests(spec);
  for (const section of SECTIONS) {
    if (lock.sections[section] !== sections[section]) problems.push(`${section}: ${SECTION_CHANGED[section]} since env.lock was written`);
  }
  if (problems.length === 0 && lock.specDigest !== specDigestOf(spec, sections)) {
    problems.push('specDigest does not match env.yaml although every section does (was env.lock edited by hand?)');
  }
  if (problems.length > 0) {
    throw new EnvyError('LOCK_MISMATCH', `env.lock disagrees with env.yaml: ${problems[0]}`, { hint: FROZEN_HINT, details: problems.slice(1) });
  }
}

const SECTION_CHANGED: Record<LockSection, string> = {
  env: 'the env variables changed',
  files: 'the files entries changed',
  setup: 'the setup steps changed',
  user: 'the user changed',
  workdir: 'workdir or workspace.path changed',
};

const HEADER = `# env.lock: written by envy from env.yaml. Commit it; do not edit it by hand.
# It pins the base image and package versions (docs/lockfile.md).
`;

/** The file's text: fixed key order, strings double-quoted, keys plain. */
export function renderLock(lock: EnvLock): string {
  const source = lock.base;
  const base: Record<string, unknown> = { kind: source.kind };
  if (source.kind === 'debian') {
    base.suite = source.suite;
    if (source.snapshot !== undefined) base.snapshot = source.snapshot;
    if (source.mirror !== undefined) base.mirror = source.mirror;
  } else if (source.kind === 'image') base.ref = source.ref;
  else if (source.kind === 'oci') base.path = source.path;
  if (source.arch !== undefined) base.arch = source.arch;
  if (source.digest !== undefined) base.digest = source.digest;
  const sections: Record<string, string> = {};
  for (const section of SECTIONS) sections[section] = lock.sections[section];
  const packages: Record<string, Record<string, string | null>> = {};
  for (const manager of MANAGERS) {
    packages[manager] = {};
    for (const name of Object.keys(lock.packages[manager]).sort()) packages[manager][name] = lock.packages[manager][name] ?? null;
  }
  const body: Record<string, unknown> = { lockfileVersion: lock.lockfileVersion, specDigest: lock.specDigest, base, packages };
  if (lock.kernel) {
    const { package: name, resolved, version, file, digest } = lock.kernel;
    body.kernel = { ...(name ? { package: name } : {}), ...(resolved ? { resolved } : {}), ...(version ? { version } : {}), ...(file ? { file } : {}), ...(digest ? { digest } : {}) };
  }
  body.sections = sections;
  return HEADER + stringify(body, { defaultStringType: 'QUOTE_DOUBLE', defaultKeyType: 'PLAIN', lineWidth: 0 });
}

export function writeLock(path: string, lock: EnvLock): void {
  writeFileAtomic(path, renderLock(lock));
}

/** Parse and validate env.lock; undefined when the file does not exist. `label` names it in errors. */
export function readLock(path: string, label: string = path): EnvLock | undefined {
  let text: string;
  try {
    const bytes = readFileSync(path);
    if (bytes.length > MAX_LOCK_BYTES) throw invalid(`${label}: is ${bytes.length} bytes, far more than any env.lock`);
    text = bytes.toString('utf8');
  } catch (error) {
    if (error instanceof EnvyError) throw error;
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw invalid(`${label}: cannot be read: ${(error as Error).message}`, error);
  }
  return parseLock(text, label);
}

function invalid(message: string, cause?: unknown): EnvyError {
  return new EnvyError('LOCK_INVALID', message, {
    hint: 'restore env.lock from version control, or delete it and run envy up to write it again',
    ...(cause === undefined ? {} : { cause }),
  });
}

export function parseLock(text: string, label: string): EnvLock {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const where = (offset: number) => {
    const { line, col } = lines.linePos(offset);
    return `${label}:${line}:${col}`;
  };
  const syntax = doc.errors[0];
  if (syntax) throw invalid(`${where(syntax.pos[0])}: ${syntax.message.split('\n')[0]}`);
  return new LockReader(doc, where, label).read();
}

type Path = (string | number)[];

function shown(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (isNode(value)) return isMap(value) ? 'a mapping' : 'a list';
  return JSON.stringify(value);
}

/** Validates the parsed document field by field, reporting the position of the first bad node. */
class LockReader {
  constructor(
    private readonly doc: Document,
    private readonly where: (offset: number) => string,
    private readonly label: string,
  ) {}

  private fail(path: Path, message: string): never {
    // A missing field is reported where its parent mapping is.
    let range: [number, number, number] | undefined;
    for (let depth = path.length; depth >= 0 && range === undefined; depth--) {
      const node = depth === 0 ? this.doc.contents : this.doc.getIn(path.slice(0, depth), true);
      range = (node as { range?: [number, number, number] } | null | undefined)?.range;
    }
    const field = path.join('.');
    throw invalid(`${range ? this.where(range[0]) : this.label}: ${field === '' ? '' : `${field}: `}${message}`);
  }

  private map(path: Path): Record<string, unknown> {
    const node = path.length === 0 ? this.doc.contents : this.doc.getIn(path, true);
    if (!isMap(node)) this.fail(path, path.length === 0 ? 'expected a mapping (is this an env.lock?)' : 'expected a mapping');
    const out: Record<string, unknown> = {};
    for (const pair of node.items) {
      const key = isScalar(pair.key) ? pair.key.value : undefined;
      if (typeof key !== 'string') this.fail(path, 'has a key that is not a string');
      out[key] = isScalar(pair.value) ? pair.value.value : pair.value;
    }
    return out;
  }

  private only(path: Path, value: Record<string, unknown>, allowed: readonly string[]): void {
    for (const key of Object.keys(value)) {
      if (!allowed.includes(key)) this.fail([...path, key], `unknown field (expected one of ${allowed.join(', ')})`);
    }
  }

  private string(path: Path, value: unknown, pattern?: RegExp, expected = 'a string'): string {
    if (typeof value !== 'string' || (pattern && !pattern.test(value))) this.fail(path, `expected ${expected}, got ${shown(value)}`);
    return value;
  }

  private digest(path: Path, value: unknown): string {
    return this.string(path, value, DIGEST, 'a sha256:<64 hex> digest');
  }

  read(): EnvLock {
    const top = this.map([]);
    this.only([], top, ['lockfileVersion', 'specDigest', 'base', 'packages', 'kernel', 'sections']);
    const version = top.lockfileVersion;
    if (typeof version === 'number' && Number.isInteger(version) && version > LOCKFILE_VERSION) {
      this.fail(['lockfileVersion'], `version ${version} was written by a newer envy (this one reads version ${LOCKFILE_VERSION})`);
    }
    if (version !== LOCKFILE_VERSION) this.fail(['lockfileVersion'], `expected ${LOCKFILE_VERSION}, got ${shown(version)}`);
    const specDigest = this.digest(['specDigest'], top.specDigest);
    const lock: EnvLock = { lockfileVersion: LOCKFILE_VERSION, specDigest, sections: this.sections(), base: this.base(), packages: this.packages() };
    if (top.kernel !== undefined) lock.kernel = this.kernel();
    return lock;
  }

  private kernel(): LockedKernel {
    const path = ['kernel'];
    const raw = this.map(path);
    this.only(path, raw, ['package', 'resolved', 'version', 'file', 'digest']);
    const kernel: LockedKernel = {};
    if (raw.file !== undefined) {
      kernel.file = this.string([...path, 'file'], raw.file, /./, 'the kernel file as env.yaml names it');
      if (raw.digest !== undefined) kernel.digest = this.digest([...path, 'digest'], raw.digest);
      return kernel;
    }
    kernel.package = this.string([...path, 'package'], raw.package, /^linux-image-/, 'a linux-image-* package name');
    if (raw.resolved !== undefined) kernel.resolved = this.string([...path, 'resolved'], raw.resolved, /^linux-image-/, 'a linux-image-* package name');
    if (raw.version !== undefined) kernel.version = this.string([...path, 'version'], raw.version, /./, 'a version string');
    return kernel;
  }

  private sections(): EnvLock['sections'] {
    const raw = this.map(['sections']);
    this.only(['sections'], raw, SECTIONS);
    const out = {} as EnvLock['sections'];
    for (const section of SECTIONS) out[section] = this.digest(['sections', section], raw[section]);
    return out;
  }

  private base(): LockedBase {
    const path = ['base'];
    const raw = this.map(path);
    const optional = (key: string) => (raw[key] === undefined ? undefined : this.string([...path, key], raw[key]));
    const digest = raw.digest === undefined ? undefined : this.digest([...path, 'digest'], raw.digest);
    const arch = raw.arch === undefined ? undefined : this.arch([...path, 'arch'], raw.arch);
    let base: LockedBase;
    switch (raw.kind) {
      case 'debian': {
        this.only(path, raw, ['kind', 'suite', 'snapshot', 'mirror', 'arch', 'digest']);
        base = { kind: 'debian', suite: this.string([...path, 'suite'], raw.suite) };
        const snapshot = optional('snapshot');
        const mirror = optional('mirror');
        if (snapshot !== undefined) base.snapshot = snapshot;
        if (mirror !== undefined) base.mirror = mirror;
        break;
      }
      case 'image':
        this.only(path, raw, ['kind', 'ref', 'arch', 'digest']);
        base = { kind: 'image', ref: this.string([...path, 'ref'], raw.ref) };
        break;
      case 'oci':
        this.only(path, raw, ['kind', 'path', 'arch', 'digest']);
        base = { kind: 'oci', path: this.string([...path, 'path'], raw.path) };
        break;
      case 'host':
        this.only(path, raw, ['kind', 'arch', 'digest']);
        base = { kind: 'host' };
        break;
      default:
        this.fail([...path, 'kind'], `expected debian, image, oci or host, got ${shown(raw.kind)}`);
    }
    if (arch !== undefined) base.arch = arch;
    if (digest !== undefined) base.digest = digest;
    return base;
  }

  private arch(path: string[], value: unknown): Arch {
    if (value === 'x86_64' || value === 'aarch64') return value;
    return this.fail(path, `expected x86_64 or aarch64, got ${shown(value)}`);
  }

  private packages(): EnvLock['packages'] {
    const raw = this.map(['packages']);
    this.only(['packages'], raw, MANAGERS);
    const out = {} as EnvLock['packages'];
    for (const manager of MANAGERS) {
      const path = ['packages', manager];
      const versions = raw[manager] === undefined ? {} : this.map(path);
      out[manager] = {};
      for (const [name, version] of Object.entries(versions)) {
        if (version !== null) this.string([...path, name], version, /./, 'a version string or null');
        Object.defineProperty(out[manager], name, { value: version, enumerable: true, writable: true, configurable: true });
      }
    }
    return out;
  }
}
