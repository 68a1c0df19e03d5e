/**
 * EnvSpec: env.yaml after validation and normalization. Every optional field in
 * the file has its default filled in here, so later stages never guess.
 * The file format itself is the contract in schemas/env.schema.json.
 */

export type BaseSource =
  /** A minbase rootfs bootstrapped from Debian's mirror (mmdebstrap, unshare mode). */
  | { kind: 'debian'; suite: string; snapshot?: string; mirror?: string }
  /** An OCI registry image: `name[:tag][@sha256:...]`. */
  | { kind: 'image'; ref: string }
  /** An OCI image layout dir or a docker-archive tarball; `path` is relative to the project dir. */
  | { kind: 'oci'; path: string }
  /** The host's /usr, /bin, /lib read-only with the env's own /etc: instant, for light tools. */
  | { kind: 'host' };

export interface PackageSpec {
  apt: string[];
  npm: string[];
  pip: string[];
}

export interface FileCopy {
  /** Source, relative to the project dir (confined to it). */
  src: string;
  /** Absolute destination inside the image. */
  dest: string;
  /** Octal mode string such as "0755", or undefined to keep the source's mode. */
  mode?: string;
}

export interface SetupStep {
  /** Optional label shown in the plan and progress UI. */
  name?: string;
  run: string;
  /** Globs (relative to the project dir) whose file contents key this step's cache. */
  inputs: string[];
  /** argv prefix that receives `run` as its last argument; default ["/bin/sh", "-c"]. */
  shell: string[];
  /** Run as root (default) or as the environment user. */
  user: 'root' | 'user';
}

export interface UserSpec {
  /** Name inside the environment; undefined means the invoking host user's name. */
  name?: string;
  /** uid/gid inside; undefined means the host user's (keep-id). */
  uid?: number;
  gid?: number;
  /** Home directory inside; undefined means /home/<name>. */
  home?: string;
  shell: string;
}

export interface WorkspaceSpec {
  /** Absolute path inside the environment where the project dir appears. */
  path: string;
  /** `9p`: a VM's live virtio-9p share of the project (backend: vm only). */
  sync: 'bind' | 'watch' | '9p';
  /** Sync direction when sync is `watch` (or the VM backend syncs). */
  direction: 'one-way' | 'two-way';
  /** Extra ignore patterns (gitignore syntax) for sync. */
  ignore: string[];
}

export type MountSpec =
  | { type: 'volume'; name: string; target: string; readonly: boolean }
  | { type: 'bind'; source: string; target: string; readonly: boolean }
  | { type: 'tmpfs'; target: string; size?: number };

export interface PortSpec {
  /** Port inside the environment. */
  container: number;
  /** Port on the host's loopback (same as `container` when not given). */
  host: number;
  protocol: 'tcp' | 'udp';
}

export interface ReadinessCheck {
  run: string;
  /** Milliseconds between attempts. */
  interval: number;
  /** Milliseconds before the service counts as failed to start. */
  timeout: number;
}

export interface ServiceSpec {
  name: string;
  run: string;
  ready?: ReadinessCheck;
  restart: 'always' | 'on-failure' | 'no';
  env: Record<string, string>;
  workdir?: string;
  /** Milliseconds between SIGTERM and SIGKILL on stop. */
  stopGrace: number;
}

export interface HooksSpec {
  onCreate: string[];
  postStart: string[];
  postAttach: string[];
}

export interface ResourcesSpec {
  /** Bytes. */
  memory?: number;
  pids?: number;
  cpus?: number;
}

export type Arch = 'x86_64' | 'aarch64';

export type BackendSpec =
  | { type: 'namespace' }
  | {
      type: 'vm';
      arch: Arch;
      /** A Debian kernel package version to pin (linux-image-VERSION-FLAVOUR). */
      kernel?: string;
      /** Or a kernel file of the project (relative to env.yaml's directory, normalized). */
      kernelFile?: string;
      /** Bytes. */
      memory: number;
      cpus: number;
    };

export interface EnvSpec {
  name: string;
  base: BaseSource;
  packages: PackageSpec;
  /** Environment variables, in file order. */
  env: Record<string, string>;
  files: FileCopy[];
  setup: SetupStep[];
  user: UserSpec;
  /** Absolute working directory inside; defaults to the workspace path. */
  workdir: string;
  workspace: WorkspaceSpec;
  mounts: MountSpec[];
  ports: PortSpec[];
  /** Services in file order (they start in this order and stop in reverse). */
  services: ServiceSpec[];
  hooks: HooksSpec;
  network: 'host' | 'none' | 'private';
  resources: ResourcesSpec;
  backend: BackendSpec;
}

/** Where an EnvSpec came from. Kept apart from EnvSpec so that specs stay free of host paths. */
export interface SpecSource {
  /** Absolute path of env.yaml. */
  file: string;
  /** Absolute project dir (env.yaml's dir). */
  dir: string;
  /** sha256 of the file's bytes. */
  digest: string;
}

export interface LoadedSpec {
  spec: EnvSpec;
  source: SpecSource;
}
