/**
 * EnvSpec -> BuildPlan. Each step's key is sha256 over the canonical JSON of
 * its parent's key, its kind and everything that decides its bytes (inputs as
 * normalized data, project files as content digests), and nothing else: no
 * timestamps, no host paths, no host user name unless the env takes it from
 * the host. So one env.yaml and one set of files give one set of keys, on any
 * machine and from any checkout location, and an edit invalidates the step it
 * touches and the steps after it, never the ones before.
 *
 * Step order: base; apt, npm and pip packages; one files step per `files`
 * entry (a changed file then rebuilds from its own copy on, and each entry is
 * one COPY in the Dockerfile); env; the setup steps, with the user step placed
 * right before the first setup step that runs as the user, or last when none
 * does. An env that takes its user from the host (name, uid or gid left out)
 * has keys that differ between people from the user step on: placing it late
 * keeps everything before it shareable. Root setup steps that precede it run
 * before the env user exists.
 */
import { openSync, readSync, closeSync, readFileSync, statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { userInfo } from 'node:os';
import { posix } from 'node:path';
import type { Arch, BaseSource, EnvSpec, FileCopy, SetupStep, UserSpec } from '../config/types.js';
import { hostArch } from '../config/normalize.js';
import { formatReference, parseReference } from '../image/reference.js';
import { archiveIdentity } from '../image/tar-scan.js';
import { EnvyError } from '../errors.js';
import { canonicalDigest, type Canonical } from './canonical.js';
import { checkProjectPath, confine, hashFileCached, hashFileSync, projectRoot, treeDigest, treeEntries } from './content.js';
import { expandGlob, hasMagic } from './glob.js';
import { identifyKernel, kernelRelease } from '../config/kernel-file.js';
import { kernelPackage } from './kernel.js';
import { lockedBaseDigest } from './lock.js';
import type { BaseStep, BuildPlan, EnvLock, EnvStep, FilesStep, KernelFile, KernelStep, OciFormat, PackagesStep, RunStep, Step, UserStep } from './types.js';

/** Bumped when the key derivation changes, so stores never confuse keys of two derivations. */
export const KEY_FORMAT = 1;

export interface HostUser {
  name: string;
  uid: number;
  gid: number;
}

export interface CompileOptions {
  /** Architecture to build for; default: the VM backend's, else the host's. */
  arch?: Arch;
  /** The invoking user, for the user fields env.yaml leaves out; default: os.userInfo(). */
  hostUser?: HostUser;
}

export function compilePlan(spec: EnvSpec, projectDir: string, lock?: EnvLock, options: CompileOptions = {}): BuildPlan {
  const root = projectRoot(projectDir);
  const steps: Step[] = [];
  const add = <T extends Step>(step: Omit<T, 'key' | 'parent'>, keyInputs: Record<string, Canonical>): void => {
    const parent = steps.at(-1)?.key;
    const key = canonicalDigest({ format: KEY_FORMAT, parent: parent ?? null, kind: step.kind, ...keyInputs });
    steps.push({ ...step, key, ...(parent === undefined ? {} : { parent }) } as T);
  };

  const arch = options.arch ?? (spec.backend.type === 'vm' ? spec.backend.arch : hostArch());
  const base = baseStep(spec.base, root, lock, arch);
  add<BaseStep>(base.step, base.keyInputs);

  // Right after the base: editing packages or setup never refetches the kernel.
  const kernel = kernelPackage(spec);
  if (spec.backend.type === 'vm' && spec.base.kind === 'host') {
    throw new EnvyError('CONFIG_INVALID', 'backend: vm needs an image with its own /usr; base: host shares the host\'s', { hint: 'use a debian or image base with backend: vm' });
  }
  if (spec.backend.type === 'vm' && spec.backend.kernelFile !== undefined) {
    const file = kernelFile(spec.backend.kernelFile, root, arch);
    // The key is the bytes, not the name: a renamed file builds the same image.
    add<KernelStep>({ kind: 'kernel', arch, file, label: `kernel file ${file.src} (${file.release}, ${arch})` }, { arch, file: file.digest });
  }
  if (kernel !== undefined) {
    const locked = lock?.kernel;
    const pinned = locked && locked.package === kernel && locked.resolved && locked.version ? { package: locked.resolved, version: locked.version } : undefined;
    const label = `kernel ${pinned ? `${pinned.package}=${pinned.version}` : kernel} (${arch})`;
    add<KernelStep>({ kind: 'kernel', arch, package: kernel, ...(pinned ? { pinned } : {}), label }, { arch, package: kernel, pinned: pinned ?? null });
  }

  for (const manager of ['apt', 'npm', 'pip'] as const) {
    const packages = [...new Set(spec.packages[manager])].sort();
    if (packages.length === 0) continue;
    if (spec.base.kind === 'host') {
      throw new EnvyError('CONFIG_INVALID', `packages.${manager}: a host base cannot install packages (it shares the host's read-only /usr)`, {
        hint: 'use a debian or image base for packages, or install them on the host',
      });
    }
    const pinned: Record<string, string> = {};
    for (const name of packages) {
      const version = lock?.packages[manager][name];
      if (typeof version === 'string') pinned[name] = version;
    }
    add<PackagesStep>(
      { kind: 'packages', manager, packages, pinned, label: `${manager}: ${packages.join(' ')}` },
      { manager, packages, pinned },
    );
  }

  spec.files.forEach((file, index) => {
    const copy = fileCopy(file, index, root);
    add<FilesStep>({ kind: 'files', copies: [copy], label: `copy ${copy.src} -> ${copy.dest}${copy.mode ? ` (${copy.mode})` : ''}` }, { copies: [copy] });
  });

  const env = sortedEnv(spec.env);
  if (Object.keys(env).length > 0) {
    add<EnvStep>({ kind: 'env', env, label: `env: ${Object.keys(env).join(' ')}` }, { env });
  }

  const user = resolveUser(spec.user, options.hostUser);
  const addUser = () =>
    add<UserStep>({ kind: 'user', ...user, label: `user ${user.name} (${user.uid}:${user.gid}, ${user.home})` }, { ...user });
  let userAdded = false;
  spec.setup.forEach((setup, index) => {
    if (setup.user === 'user' && !userAdded) {
      addUser();
      userAdded = true;
    }
    const step = runStep(setup, index, root, spec, env);
    add<RunStep>(step, {
      run: step.run,
      shell: step.shell,
      user: step.user,
      workdir: step.workdir,
      projectPath: step.projectPath,
      inputs: step.inputs.map((input) => ({ ...input })),
    });
  });
  if (!userAdded) addUser();

  return { name: spec.name, steps, key: steps.at(-1)!.key, workdir: spec.workdir, env };
}

/** The project's kernel file: its digest and release, read once (config loading checked its format and arch). */
function kernelFile(path: string, root: string, arch: Arch): KernelFile {
  const field = 'backend.kernel';
  const src = checkProjectPath(path, field);
  const real = confine(root, src, field);
  let bytes: Buffer;
  try {
    bytes = readFileSync(real);
  } catch (error) {
    throw new EnvyError('CONFIG_INVALID', `${field}: cannot read the kernel file ${src} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
  }
  const found = identifyKernel(bytes.subarray(0, 64 * 1024));
  if (typeof found === 'string' || found.arch !== arch) {
    throw new EnvyError('CONFIG_INVALID', `${field}: ${src} is ${typeof found === 'string' ? found : `an ${found.arch} kernel, but the VM is ${arch}`}`);
  }
  const release = kernelRelease(bytes, found.format);
  if (!release) {
    throw new EnvyError('CONFIG_INVALID', `${field}: ${src} states no kernel release (no "Linux version" banner)`, {
      hint: 'use the kernel image as the kernel build made it (vmlinux, arch/*/boot/bzImage or Image)',
    });
  }
  return { src, digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}`, release };
}

/** env order must not matter: `A` then `B` builds the same image as `B` then `A`. */
function sortedEnv(env: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of Object.keys(env).sort()) {
    Object.defineProperty(out, name, { value: env[name], enumerable: true, writable: true, configurable: true });
  }
  return out;
}

function describeBase(source: BaseSource): string {
  switch (source.kind) {
    case 'debian':
      return `debian ${source.suite}${source.snapshot ? ` (snapshot ${source.snapshot})` : ''}`;
    case 'image':
      return `image ${source.ref}`;
    case 'oci':
      return `oci ${source.path}`;
    case 'host':
      return 'host';
  }
}

function baseStep(
  source: BaseSource,
  root: string,
  lock: EnvLock | undefined,
  arch: Arch,
): { step: Omit<BaseStep, 'key' | 'parent'>; keyInputs: Record<string, Canonical> } {
  const digest = lockedBaseDigest(source, lock, arch);
  const step: Omit<BaseStep, 'key' | 'parent'> = { kind: 'base', source, arch, label: describeBase(source) };
  if (digest !== undefined) {
    step.digest = digest;
    step.label += ` @ ${digest.slice(0, 19)}`;
  }
  const keyInputs: Record<string, Canonical> = { arch, digest };
  switch (source.kind) {
    case 'debian':
      keyInputs.source = { kind: 'debian', suite: source.suite, snapshot: source.snapshot, mirror: source.mirror };
      break;
    case 'image':
      // docker.io/library/debian:bookworm and debian:bookworm are one image: key them alike.
      keyInputs.source = { kind: 'image', ref: formatReference(parseReference(source.ref)) };
      break;
    case 'oci': {
      const relative = checkProjectPath(source.path, 'base.oci');
      const real = confine(root, relative, 'base.oci');
      const oci = ociContent(real, relative);
      step.ociFormat = oci.format;
      keyInputs.source = { kind: 'oci', path: relative, format: oci.format, content: oci.digest };
      break;
    }
    case 'host':
      keyInputs.source = { kind: 'host' };
      break;
  }
  return { step, keyInputs };
}

/**
 * An OCI layout is keyed by its index.json (it names every manifest by digest,
 * so it pins the whole image without hashing the blobs); a plain tar archive by its
 * documents (archiveIdentity), a compressed one by its bytes.
 */
function ociContent(real: string, label: string): { format?: OciFormat; digest: string } {
  if (statSync(real).isDirectory()) {
    const index = posix.join(real, 'index.json');
    let digest: string;
    try {
      digest = hashFileSync(index);
    } catch {
      throw new EnvyError('CONFIG_INVALID', `base.oci: "${label}" is a directory without index.json, so not an OCI image layout`, {
        hint: 'point base.oci at an OCI layout directory (skopeo copy ... oci:DIR) or an image archive (podman save)',
      });
    }
    return { format: 'oci-layout', digest: `sha256:${digest}` };
  }
  const format = archiveFormat(real);
  return { ...(format ? { format } : {}), digest: archiveIdentity(real) ?? `sha256:${hashFileCached(real)}` };
}

const TAR_BLOCK = 512;
const MAX_TAR_ENTRIES = 4096;

/** Tell a docker-archive from an oci-archive by the names in its tar headers (uncompressed tarballs only). */
export function archiveFormat(path: string): OciFormat | undefined {
  const fd = openSync(path, 'r');
  try {
    const header = Buffer.alloc(TAR_BLOCK);
    let offset = 0;
    for (let entry = 0; entry < MAX_TAR_ENTRIES; entry++) {
      if (readSync(fd, header, 0, TAR_BLOCK, offset) < TAR_BLOCK || header.every((byte) => byte === 0)) return undefined;
      if (header.toString('latin1', 257, 262) !== 'ustar') return undefined;
      const name = header.toString('utf8', 0, 100).replace(/\0.*$/s, '').replace(/^\.\//, '');
      if (name === 'manifest.json') return 'docker-archive';
      if (name === 'oci-layout' || name === 'index.json') return 'oci-archive';
      const size = parseInt(header.toString('latin1', 124, 136).replace(/\0.*$/s, '').trim() || '0', 8);
      if (!Number.isFinite(size)) return undefined;
      offset += TAR_BLOCK + Math.ceil(size / TAR_BLOCK) * TAR_BLOCK;
    }
    return undefined;
  } finally {
    closeSync(fd);
  }
}

function fileCopy(file: FileCopy, index: number, root: string): FilesStep['copies'][number] {
  const field = `files[${index}]`;
  const src = checkProjectPath(file.src, `${field}.src`);
  if (!posix.isAbsolute(file.dest)) {
    throw new EnvyError('CONFIG_INVALID', `${field}.dest: "${file.dest}" must be an absolute path inside the environment`, {
      hint: 'write the destination as an absolute path, e.g. /usr/local/bin/tool',
    });
  }
  if (file.mode !== undefined && !/^[0-7]{4}$/.test(file.mode)) {
    throw new EnvyError('CONFIG_INVALID', `${field}.mode: "${file.mode}" is not four octal digits`, { hint: 'write the mode in octal, e.g. "0644"' });
  }
  const real = confine(root, src, `${field}.src`);
  const entries = treeEntries(real, src, `${field}.src`);
  const isDirectory = !(entries.length === 1 && entries[0]!.path === '.');
  return { src, dest: file.dest, ...(file.mode === undefined ? {} : { mode: file.mode }), digest: treeDigest(entries, isDirectory) };
}

function runStep(setup: SetupStep, index: number, root: string, spec: EnvSpec, env: Record<string, string>): Omit<RunStep, 'key' | 'parent'> {
  const firstLine = setup.run.trim().split('\n')[0] ?? '';
  const label = setup.name ?? (firstLine.length > 60 ? `${firstLine.slice(0, 57)}...` : firstLine);
  const step: Omit<RunStep, 'key' | 'parent'> = {
    kind: 'run',
    run: setup.run,
    shell: [...setup.shell],
    user: setup.user,
    workdir: spec.workdir,
    projectPath: spec.workspace.path,
    inputs: matchInputs(setup.inputs, index, root),
    env,
    label,
  };
  if (setup.name !== undefined) step.name = setup.name;
  return step;
}

/**
 * The files a step's `inputs` globs match, each with its content digest. A
 * matched directory stands for every file below it. A literal path that is
 * missing is an error (a typo would silently key nothing); a wildcard that
 * matches nothing is allowed (`patches/*.diff` before the first patch).
 */
export function matchInputs(patterns: string[], stepIndex: number, root: string): RunStep['inputs'] {
  const digests = new Map<string, string>();
  patterns.forEach((pattern, patternIndex) => {
    const field = `setup[${stepIndex}].inputs[${patternIndex}]`;
    const normalized = checkProjectPath(pattern, field);
    let matches: string[];
    if (hasMagic(normalized)) {
      try {
        matches = expandGlob(root, normalized);
      } catch (error) {
        throw new EnvyError('CONFIG_INVALID', `${field}: cannot match "${pattern}": ${(error as Error).message}`, { cause: error });
      }
    } else {
      matches = [normalized];
    }
    for (const match of matches) {
      const real = confine(root, match, field);
      for (const entry of treeEntries(real, match, field)) {
        const path = posix.join(match, entry.path);
        if (entry.type === 'file') digests.set(path, `sha256:${entry.digest!}`);
        else if (entry.type === 'symlink') digests.set(path, `symlink:${entry.target!}`);
      }
    }
  });
  return [...digests.keys()].sort().map((path) => ({ path, digest: digests.get(path)! }));
}

const USER_NAME = /^[a-z_][a-z0-9_-]{0,31}$/;
/** When envy runs as root, keeping the host's ids would make the env user a second root. */
const ROOT_FALLBACK = { name: 'dev', uid: 1000, gid: 1000 };

/**
 * The env user with every field settled. Host values fill only what env.yaml
 * leaves out, so a spec that names its user fully keys the same for everyone.
 */
export function resolveUser(user: UserSpec, hostUser?: HostUser): Omit<UserStep, 'key' | 'parent' | 'kind' | 'label'> {
  const needsHost = user.name === undefined || user.uid === undefined || user.gid === undefined;
  const host = needsHost ? (hostUser ?? currentHostUser()) : undefined;
  const fallback = host && host.uid === 0 ? ROOT_FALLBACK : host;
  const name = user.name ?? userNameFrom(fallback!.name);
  const uid = user.uid ?? fallback!.uid;
  const gid = user.gid ?? fallback!.gid;
  return { name, uid, gid, home: user.home ?? `/home/${name}`, shell: user.shell };
}

function currentHostUser(): HostUser {
  try {
    const info = userInfo();
    return { name: info.username, uid: info.uid, gid: info.gid };
  } catch (error) {
    throw new EnvyError('CONFIG_INVALID', 'user: env.yaml leaves the user to the host, but the host user has no passwd entry', {
      hint: 'set user.name, user.uid and user.gid in env.yaml',
      cause: error,
    });
  }
}

/** Host names like "John.Doe" are not valid Debian user names: lower-case them and replace what useradd rejects. */
function userNameFrom(hostName: string): string {
  let name = hostName.toLowerCase().replace(/[^a-z0-9_-]/g, '_').slice(0, 32);
  if (!/^[a-z_]/.test(name)) name = `_${name}`.slice(0, 32);
  return USER_NAME.test(name) ? name : ROOT_FALLBACK.name;
}
