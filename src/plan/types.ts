/**
 * BuildPlan: the ordered DAG of content-addressed Steps compiled from an EnvSpec.
 * A Step's key = sha256(parent key, kind, normalized inputs, input file contents),
 * so the same env.yaml and files give the same keys on any machine.
 */
import type { Arch, BaseSource } from '../config/types.js';

export type StepKind = 'base' | 'kernel' | 'packages' | 'files' | 'run' | 'env' | 'user';

interface StepCommon {
  /** sha256 hex, the cache key. */
  key: string;
  /** Key of the parent step, or undefined for the base. */
  parent?: string;
  /** One-line human label for tables and the progress UI. */
  label: string;
}

export interface BaseStep extends StepCommon {
  kind: 'base';
  source: BaseSource;
  /** Architecture the image is built for (the VM's, else the host's): a base's bytes differ per architecture. */
  arch: Arch;
  /** Resolved digest from env.lock, when known (pins the base). */
  digest?: string;
  /** For `oci` bases: what the path holds, so the Dockerfile can name the matching podman transport. */
  ociFormat?: OciFormat;
}

/** An OCI image layout directory, or a tarball in docker-archive or oci-archive form. */
export type OciFormat = 'oci-layout' | 'docker-archive' | 'oci-archive';

export interface PackagesStep extends StepCommon {
  kind: 'packages';
  manager: 'apt' | 'npm' | 'pip';
  packages: string[];
  /** Versions pinned by env.lock (package -> version), when known. */
  pinned: Record<string, string>;
}

/**
 * The VM backend's guest kernel, from the plan rather than the host: Debian's kernel package
 * (`package`, a metapackage like linux-image-amd64 or a versioned linux-image-6.1.0-18-amd64)
 * fetched with `apt-get download` and unpacked with `dpkg-deb -x` (installing it would run
 * initramfs-tools: slow, and envy brings its own initramfs). Its /boot and /lib/modules land in
 * the image. `pinned` is the resolved package and version from env.lock.
 */
export interface KernelStep extends StepCommon {
  kind: 'kernel';
  arch: Arch;
  /** Debian's package (absent with `file`). */
  package?: string;
  pinned?: { package: string; version: string };
  /**
   * Or the project's own kernel file (backend.kernel as a path), copied to /boot/vmlinuz-RELEASE
   * with /boot/.envy-kernel naming it; modules come from the image's /lib/modules/RELEASE if any.
   */
  file?: KernelFile;
}

export interface KernelFile {
  /** Relative to the project directory. */
  src: string;
  /** sha256:... of the bytes. */
  digest: string;
  /** `uname -r` as the file states it. */
  release: string;
}

export interface FilesStep extends StepCommon {
  kind: 'files';
  /**
   * Each copy with the sha256 of its content (a directory hashes its whole tree).
   * Without `mode`, a copied file gets 0755 when its owner may execute it and 0644
   * otherwise (directories 0755), as git records modes: checkouts under different
   * umasks then key alike and build alike. Symlinks inside a directory are copied
   * as links, never followed.
   */
  copies: { src: string; dest: string; mode?: string; digest: string }[];
}

export interface RunStep extends StepCommon {
  kind: 'run';
  name?: string;
  run: string;
  shell: string[];
  user: 'root' | 'user';
  /** Working directory of the command (the env's workdir). */
  workdir: string;
  /** Where the project is visible while the command runs (the workspace path). */
  projectPath: string;
  /** Matched input files (relative, sorted) with their content digests. */
  inputs: { path: string; digest: string }[];
  /** Environment visible to the command (accumulated env steps). */
  env: Record<string, string>;
}

export interface EnvStep extends StepCommon {
  kind: 'env';
  env: Record<string, string>;
}

export interface UserStep extends StepCommon {
  kind: 'user';
  name: string;
  uid: number;
  gid: number;
  home: string;
  shell: string;
}

export type Step = BaseStep | KernelStep | PackagesStep | FilesStep | RunStep | EnvStep | UserStep;

export interface BuildPlan {
  /** Env name from env.yaml. */
  name: string;
  /** Steps in execution order; steps[0] is the base; each step's parent is the one before it. */
  steps: Step[];
  /** Key of the last step: identifies the final image. */
  key: string;
  /** Working directory and environment of the final image (for Dockerfile WORKDIR/ENV and the runtime). */
  workdir: string;
  env: Record<string, string>;
}

/**
 * env.lock: what env.yaml resolved to, so a build elsewhere or later gets the
 * same bytes. Format and rules: docs/lockfile.md.
 */
export interface EnvLock {
  lockfileVersion: 1;
  /** sha256 over the build-relevant env.yaml fields (not its bytes): comment and layout edits keep it. */
  specDigest: string;
  /** The same, per section, so --frozen can say which part of env.yaml moved. */
  sections: Record<LockSection, string>;
  base: LockedBase;
  /** Per manager: each package as written in env.yaml -> resolved version, or null until a build resolves it. */
  packages: Record<'apt' | 'npm' | 'pip', Record<string, string | null>>;
  /** The VM guest kernel package (backend: vm): as requested, and what it resolved to once built. */
  kernel?: LockedKernel;
}

export interface LockedKernel {
  /** The package the plan asks for (linux-image-amd64, or a pinned linux-image-VERSION-FLAVOUR). */
  package?: string;
  /** Or the project's kernel file and the digest of what was built from it. */
  file?: string;
  digest?: string;
  /** The real kernel package and its version that build installed, e.g. linux-image-6.1.0-18-amd64 / 6.1.76-1. */
  resolved?: string;
  version?: string;
}

export type LockSection = 'files' | 'env' | 'setup' | 'user' | 'workdir';

export type LockedBase = BaseSource & {
  /** The resolved content digest (sha256:...) of the base image, once known. */
  digest?: string;
  /** The architecture the digest is for: written for `backend: vm` (its arch); absent means the host's. */
  arch?: Arch;
};
