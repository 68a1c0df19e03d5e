/**
 * Schema-valid env.yaml data -> EnvSpec: shorthands expanded, units converted,
 * every default filled in, and the checks a schema cannot express (paths that
 * escape the project, port ranges inside strings, duplicate mount targets).
 */
import { statSync } from 'node:fs';
import { join, posix } from 'node:path';
import { inspectKernelFile } from './kernel-file.js';
import type { Diagnostic, NodeIndex, PathSegment } from './diagnostics.js';
import { toPointer } from './diagnostics.js';
import type {
  Arch,
  BackendSpec,
  BaseSource,
  EnvSpec,
  FileCopy,
  HooksSpec,
  MountSpec,
  PortSpec,
  ReadinessCheck,
  ServiceSpec,
  SetupStep,
  UserSpec,
  WorkspaceSpec,
} from './types.js';
import { parseDuration, parseSize } from './units.js';

/** The defaults, in one place; the schema's `default` annotations document the same values (a test keeps them equal). */
export const DEFAULTS = {
  workspacePath: '/workspace',
  workspaceSync: 'bind',
  workspaceDirection: 'two-way',
  setupShell: ['/bin/sh', '-c'],
  setupUser: 'root',
  userShell: '/bin/sh',
  restart: 'on-failure',
  stopGraceMs: 10_000,
  readyIntervalMs: 1_000,
  readyTimeoutMs: 60_000,
  network: 'host',
  portProtocol: 'tcp',
  vmMemoryBytes: 2 * 1024 ** 3,
  vmCpus: 2,
} as const;

/** The VM architecture that needs no emulation here; other hosts get x86_64, which TCG emulates anywhere. */
export function hostArch(arch: string = process.arch): Arch {
  return arch === 'arm64' ? 'aarch64' : 'x86_64';
}

type Raw = Record<string, unknown>;

export interface Normalized {
  spec: EnvSpec;
  diagnostics: Diagnostic[];
}

/** `projectDir`: where env.yaml is, for checks of the project files it names (a kernel file). */
export function normalizeSpec(raw: Raw, index: NodeIndex, arch: Arch = hostArch(), projectDir?: string): Normalized {
  const diagnostics: Diagnostic[] = [];
  const problem = (path: PathSegment[], message: string, hint?: string, where: 'key' | 'value' = 'value') => {
    const node = index.get(toPointer(path));
    const offset = node ? (where === 'key' || node.empty ? (node.keyOffset ?? node.valueOffset) : node.valueOffset) : 0;
    diagnostics.push({ offset, path, message, hint });
  };
  const text = (path: PathSegment[]) => index.get(toPointer(path))?.text;

  const workspace = normalizeWorkspace(raw.workspace);
  const mounts = normalizeMounts((raw.mounts as Raw[] | undefined) ?? [], workspace.path, problem);
  const spec: EnvSpec = {
    name: raw.name as string,
    base: normalizeBase(raw.base as Raw, problem),
    packages: {
      apt: [...(((raw.packages as Raw | undefined)?.apt as string[] | undefined) ?? [])],
      npm: [...(((raw.packages as Raw | undefined)?.npm as string[] | undefined) ?? [])],
      pip: [...(((raw.packages as Raw | undefined)?.pip as string[] | undefined) ?? [])],
    },
    env: normalizeEnv(raw.env as Raw | undefined, ['env'], text),
    files: ((raw.files as Raw[] | undefined) ?? []).map((file, i) => normalizeFile(file, ['files', i], problem, text)),
    setup: ((raw.setup as unknown[] | undefined) ?? []).map((step, i) => normalizeSetupStep(step, ['setup', i], problem)),
    user: normalizeUser(raw.user),
    workdir: raw.workdir === undefined ? workspace.path : insidePath(raw.workdir as string),
    workspace,
    mounts,
    ports: normalizePorts((raw.ports as unknown[] | undefined) ?? [], problem),
    services: Object.entries((raw.services as Raw | undefined) ?? {}).map(([name, service]) =>
      normalizeService(name, service, ['services', name], problem, text),
    ),
    hooks: normalizeHooks(raw.hooks as Raw | undefined),
    network: (raw.network as EnvSpec['network'] | undefined) ?? DEFAULTS.network,
    resources: {},
    backend: normalizeBackend(raw.backend, arch, problem, projectDir),
  };
  if (spec.workspace.sync === '9p' && spec.backend.type !== 'vm') {
    problem(['workspace', 'sync'], '`9p` shares the project into a VM and needs `backend: vm`', 'use `bind` (the default) for this backend, or set `backend: vm`');
  }
  const resources = raw.resources as Raw | undefined;
  if (resources?.memory !== undefined) spec.resources.memory = size(resources.memory as number | string, ['resources', 'memory'], problem);
  if (resources?.pids !== undefined) spec.resources.pids = resources.pids as number;
  if (resources?.cpus !== undefined) spec.resources.cpus = resources.cpus as number;
  return { spec, diagnostics };
}

type Report = (path: PathSegment[], message: string, hint?: string, where?: 'key' | 'value') => void;
type TextOf = (path: PathSegment[]) => string | undefined;

/** An absolute path inside the environment, in one spelling: `/cache/` and `/cache/./` are `/cache`. */
function insidePath(value: string): string {
  const normalized = posix.normalize(value);
  return normalized.length > 1 ? normalized.replace(/\/+$/, '') : normalized;
}

/**
 * A path from env.yaml that names something in the project: relative, and
 * still inside the project once `..` is resolved. Returns it normalized.
 */
function projectPath(value: string, path: PathSegment[], report: Report): string {
  if (posix.isAbsolute(value)) {
    report(path, `must be relative to the project directory; got the absolute path "${value}"`, 'paths from env.yaml stay inside the project; use a path relative to env.yaml');
    return value;
  }
  const normalized = posix.normalize(value);
  if (normalized === '..' || normalized.startsWith('../')) {
    report(path, `"${value}" leaves the project directory`, 'paths from env.yaml stay inside the project; move the file into it');
    return value;
  }
  return normalized.replace(/\/$/, '') || '.';
}

function normalizeBase(base: Raw, report: Report): BaseSource {
  if (typeof base.debian === 'string') {
    const out: BaseSource = { kind: 'debian', suite: base.debian };
    if (base.snapshot !== undefined) out.snapshot = base.snapshot as string;
    if (base.mirror !== undefined) out.mirror = (base.mirror as string).replace(/\/+$/, '');
    return out;
  }
  if (typeof base.image === 'string') return { kind: 'image', ref: base.image };
  if (typeof base.oci === 'string') return { kind: 'oci', path: projectPath(base.oci, ['base', 'oci'], report) };
  return { kind: 'host' };
}

function normalizeEnv(env: Raw | undefined, path: PathSegment[], text: TextOf): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(env ?? {})) {
    // Numbers keep their spelling: `VERSION: 1.10` means "1.10", not "1.1".
    const spelled = typeof value === 'string' ? value : (text([...path, name]) ?? String(value));
    Object.defineProperty(out, name, { value: spelled, enumerable: true, writable: true, configurable: true });
  }
  return out;
}

function normalizeFile(file: Raw, path: PathSegment[], report: Report, text: TextOf): FileCopy {
  const out: FileCopy = {
    src: projectPath(file.src as string, [...path, 'src'], report),
    // A trailing slash on dest means "into this directory", so it survives normalization.
    dest: posix.normalize(file.dest as string),
  };
  if (file.mode !== undefined) {
    // YAML 1.2 reads `0755` as the decimal number 755, so the digits as written are what count.
    const written = typeof file.mode === 'string' ? file.mode : (text([...path, 'mode']) ?? String(file.mode));
    const digits = /^(?:0o?)?([0-7]{3,4})$/.exec(written)?.[1];
    if (digits === undefined) report([...path, 'mode'], `expected octal permission bits like 0755; got ${written}`, 'write the mode in octal, e.g. "0644"');
    else out.mode = digits.padStart(4, '0');
  }
  return out;
}

function shellArgv(shell: unknown): string[] {
  if (Array.isArray(shell)) return shell as string[];
  if (typeof shell !== 'string') return [...DEFAULTS.setupShell];
  const words = shell.trim().split(/\s+/);
  return words.length === 1 ? [words[0]!, '-c'] : words;
}

function normalizeSetupStep(step: unknown, path: PathSegment[], report: Report): SetupStep {
  if (typeof step === 'string') return { run: step, inputs: [], shell: [...DEFAULTS.setupShell], user: DEFAULTS.setupUser };
  const raw = step as Raw;
  const out: SetupStep = {
    run: raw.run as string,
    inputs: ((raw.inputs as string[] | undefined) ?? []).map((glob, i) => projectPath(glob, [...path, 'inputs', i], report)),
    shell: shellArgv(raw.shell),
    user: (raw.user as SetupStep['user'] | undefined) ?? DEFAULTS.setupUser,
  };
  if (raw.name !== undefined) out.name = raw.name as string;
  return out;
}

function normalizeUser(user: unknown): UserSpec {
  if (typeof user === 'string') return { name: user, shell: DEFAULTS.userShell };
  const raw = (user as Raw | undefined) ?? {};
  const out: UserSpec = { shell: (raw.shell as string | undefined) ?? DEFAULTS.userShell };
  if (raw.name !== undefined) out.name = raw.name as string;
  if (raw.uid !== undefined) out.uid = raw.uid as number;
  if (raw.gid !== undefined) out.gid = raw.gid as number;
  if (raw.home !== undefined) out.home = insidePath(raw.home as string);
  return out;
}

function normalizeWorkspace(workspace: unknown): WorkspaceSpec {
  const raw: Raw = typeof workspace === 'string' ? { path: workspace } : ((workspace as Raw | undefined) ?? {});
  return {
    path: insidePath((raw.path as string | undefined) ?? DEFAULTS.workspacePath),
    sync: (raw.sync as WorkspaceSpec['sync'] | undefined) ?? DEFAULTS.workspaceSync,
    direction: (raw.direction as WorkspaceSpec['direction'] | undefined) ?? DEFAULTS.workspaceDirection,
    ignore: [...((raw.ignore as string[] | undefined) ?? [])],
  };
}

function normalizeMounts(mounts: Raw[], workspacePath: string, report: Report): MountSpec[] {
  const targets = new Map<string, number>();
  return mounts.map((mount, i) => {
    const path: PathSegment[] = ['mounts', i];
    let out: MountSpec;
    let targetPath: PathSegment[];
    if (typeof mount.tmpfs === 'string') {
      targetPath = [...path, 'tmpfs'];
      out = { type: 'tmpfs', target: insidePath(mount.tmpfs) };
      if (mount.size !== undefined) out.size = size(mount.size as number | string, [...path, 'size'], report);
      if (mount.target !== undefined) report([...path, 'target'], 'a tmpfs takes its mount point from "tmpfs"', 'remove "target" and write `tmpfs: /path`', 'key');
      if (mount.readonly !== undefined) report([...path, 'readonly'], 'a read-only tmpfs would always be empty', 'remove "readonly"', 'key');
    } else {
      targetPath = [...path, 'target'];
      const target = insidePath(mount.target as string);
      const readonly = (mount.readonly as boolean | undefined) ?? false;
      out = typeof mount.volume === 'string'
        ? { type: 'volume', name: mount.volume, target, readonly }
        : { type: 'bind', source: bindSource(mount.bind as string), target, readonly };
    }
    if (out.target === '/') report(targetPath, 'cannot mount over the root directory', 'pick a directory such as /cache');
    else if (out.target === workspacePath) report(targetPath, `"${out.target}" is the workspace path`, 'mount somewhere else, or move the workspace with `workspace: {path: ...}`');
    const earlier = targets.get(out.target);
    if (earlier !== undefined) report(targetPath, `target "${out.target}" is already used by mounts[${earlier}]`, 'each mount needs its own target');
    else targets.set(out.target, i);
    return out;
  });
}

/** Bind sources keep `~` and relative paths symbolic: the spec stays free of this host's paths. */
function bindSource(source: string): string {
  if (source === '~' || source.startsWith('~/')) return source === '~' ? '~' : '~/' + posix.normalize(source.slice(2));
  return posix.normalize(source);
}

/** The host path of a bind mount's source: `~/` from the user's home, relative paths from the project directory. */
export function resolveBindSource(source: string, projectDir: string, home: string): string {
  if (source === '~') return home;
  if (source.startsWith('~/')) return posix.join(home, source.slice(2));
  return posix.resolve(projectDir, source);
}

function size(value: number | string, path: PathSegment[], report: Report): number {
  const bytes = parseSize(value);
  if (bytes === undefined || bytes <= 0) {
    report(path, `expected a size greater than zero like 512m or 2g; got ${JSON.stringify(value)}`, 'sizes are bytes, or a number with k, m, g or t');
    return 0;
  }
  return bytes;
}

function duration(value: unknown, fallback: number, path: PathSegment[], report: Report, allowZero: boolean): number {
  if (value === undefined) return fallback;
  const ms = parseDuration(value as string);
  if (ms === undefined || (!allowZero && ms === 0)) {
    report(path, `expected a duration${allowZero ? '' : ' greater than zero'} like 500ms, 5s or 2m; got ${JSON.stringify(value)}`);
    return fallback;
  }
  return ms;
}

const PORT_STRING = /^([0-9]{1,5})(?::([0-9]{1,5}))?(?:\/(tcp|udp))?$/;

function normalizePorts(ports: unknown[], report: Report): PortSpec[] {
  const used = new Map<string, number>();
  const out: PortSpec[] = [];
  ports.forEach((port, i) => {
    const path: PathSegment[] = ['ports', i];
    let spec: PortSpec;
    if (typeof port === 'number') spec = { container: port, host: port, protocol: DEFAULTS.portProtocol };
    else if (typeof port === 'string') {
      const match = PORT_STRING.exec(port)!;
      const first = Number(match[1]);
      const second = match[2] === undefined ? undefined : Number(match[2]);
      spec = { host: first, container: second ?? first, protocol: (match[3] as PortSpec['protocol'] | undefined) ?? DEFAULTS.portProtocol };
      const bad = [first, second].find((n) => n !== undefined && (n < 1 || n > 65535));
      if (bad !== undefined) {
        report(path, `port ${bad} is out of range; ports are 1 to 65535`);
        return;
      }
    } else {
      const raw = port as Raw;
      const container = raw.container as number;
      spec = { container, host: (raw.host as number | undefined) ?? container, protocol: (raw.protocol as PortSpec['protocol'] | undefined) ?? DEFAULTS.portProtocol };
    }
    const key = `${spec.host}/${spec.protocol}`;
    const earlier = used.get(key);
    if (earlier !== undefined) {
      report(path, `host port ${key} is already published by ports[${earlier}]`, 'each host port can be published once');
      return;
    }
    used.set(key, i);
    out.push(spec);
  });
  return out;
}

function normalizeService(name: string, service: unknown, path: PathSegment[], report: Report, text: TextOf): ServiceSpec {
  const raw: Raw = typeof service === 'string' ? { run: service } : (service as Raw);
  const out: ServiceSpec = {
    name,
    run: raw.run as string,
    restart: (raw.restart as ServiceSpec['restart'] | undefined) ?? DEFAULTS.restart,
    env: normalizeEnv(raw.env as Raw | undefined, [...path, 'env'], text),
    stopGrace: duration(raw.stopGrace, DEFAULTS.stopGraceMs, [...path, 'stopGrace'], report, true),
  };
  if (raw.workdir !== undefined) out.workdir = insidePath(raw.workdir as string);
  if (raw.ready !== undefined) {
    const ready: Raw = typeof raw.ready === 'string' ? { run: raw.ready } : (raw.ready as Raw);
    const check: ReadinessCheck = {
      run: ready.run as string,
      interval: duration(ready.interval, DEFAULTS.readyIntervalMs, [...path, 'ready', 'interval'], report, false),
      timeout: duration(ready.timeout, DEFAULTS.readyTimeoutMs, [...path, 'ready', 'timeout'], report, false),
    };
    out.ready = check;
  }
  return out;
}

function normalizeHooks(hooks: Raw | undefined): HooksSpec {
  const list = (value: unknown) => (value === undefined ? [] : typeof value === 'string' ? [value] : [...(value as string[])]);
  return { onCreate: list(hooks?.onCreate), postStart: list(hooks?.postStart), postAttach: list(hooks?.postAttach) };
}

/** A Debian kernel version (6.1.0-18, 6.1.0-18-amd64); anything else is a kernel file's path. */
const DEBIAN_KERNEL_VERSION = /^[0-9][0-9a-z.+~-]*$/;

function checkKernelFile(projectDir: string, file: string, arch: Arch, report: Report): void {
  const path = ['backend', 'kernel'];
  let found: ReturnType<typeof inspectKernelFile>;
  try {
    if (!statSync(join(projectDir, file)).isFile()) {
      report(path, `${file} is not a file`, 'name the kernel image itself (vmlinux, bzImage or Image)');
      return;
    }
    found = inspectKernelFile(join(projectDir, file));
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    report(path, code === 'ENOENT' ? `the kernel file ${file} does not exist` : `cannot read the kernel file ${file} (${code ?? (error as Error).message})`, 'give a path relative to env.yaml, or a Debian kernel version such as 6.1.0-18');
    return;
  }
  if (typeof found === 'string') report(path, `${file} is ${found}`, 'x86_64 boots a bzImage or vmlinux, aarch64 an Image (or Image.gz)');
  else if (found.arch !== arch) report(path, `${file} is an ${found.arch} kernel (${found.format}), but the VM is ${arch}`, `set backend.arch: ${found.arch}, or use a kernel built for ${arch}`);
}

const ARCH_ALIASES: Record<string, Arch> = { x86_64: 'x86_64', amd64: 'x86_64', aarch64: 'aarch64', arm64: 'aarch64' };
const VM_ONLY = ['arch', 'kernel', 'memory', 'cpus'] as const;

function normalizeBackend(backend: unknown, arch: Arch, report: Report, projectDir: string | undefined): BackendSpec {
  const vmDefaults = (): BackendSpec => ({ type: 'vm', arch, memory: DEFAULTS.vmMemoryBytes, cpus: DEFAULTS.vmCpus });
  if (backend === undefined || backend === 'namespace') return { type: 'namespace' };
  if (backend === 'vm') return vmDefaults();
  const raw = backend as Raw;
  if (raw.type === 'namespace') {
    for (const key of VM_ONLY) {
      if (raw[key] !== undefined) report(['backend', key], 'only applies to `type: vm`', `remove "${key}", or set \`type: vm\``, 'key');
    }
    return { type: 'namespace' };
  }
  const out: BackendSpec = {
    type: 'vm',
    arch: raw.arch === undefined ? arch : ARCH_ALIASES[raw.arch as string]!,
    memory: raw.memory === undefined ? DEFAULTS.vmMemoryBytes : size(raw.memory as number | string, ['backend', 'memory'], report),
    cpus: (raw.cpus as number | undefined) ?? DEFAULTS.vmCpus,
  };
  if (raw.kernel !== undefined) {
    const value = raw.kernel as string;
    if (DEBIAN_KERNEL_VERSION.test(value)) out.kernel = value;
    else {
      out.kernelFile = projectPath(value, ['backend', 'kernel'], report);
      // (projectPath reported a path outside the project already.)
      const inside = !posix.isAbsolute(out.kernelFile) && out.kernelFile !== '..' && !out.kernelFile.startsWith('../');
      if (projectDir !== undefined && inside) checkKernelFile(projectDir, out.kernelFile, out.arch, report);
    }
  }
  return out;
}
