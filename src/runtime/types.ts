/**
 * The Runtime interface every backend implements (namespace, vm). A backend turns
 * a prepared rootfs (ordered read-only layers + a writable upper dir) into a
 * running Environment and runs processes in it.
 */

export interface MountRequest {
  type: 'bind' | 'tmpfs';
  /** Host path (bind) — already resolved and confined by the caller. */
  source?: string;
  /** Absolute path inside the environment. */
  target: string;
  readonly?: boolean;
  /** tmpfs size in bytes. */
  size?: number;
  /**
   * How a VM (which cannot bind-mount) gets a bind's contents. Unset: copied in at boot. `sync`: the
   * workspace sync process keeps the guest's copy live (the runtime only makes the mount point, the
   * env user's). `9p`: shared live with virtio-9p and mounted at boot. The namespace runtime binds.
   */
  vm?: 'sync' | '9p';
}

export interface Identity {
  /** uid/gid inside the environment. */
  uid: number;
  gid: number;
  name: string;
  home: string;
}

export interface RootfsSpec {
  /** Read-only layer dirs, lowest first. */
  layers: string[];
  /** Writable upper dir (persisted between runs) and overlay work dir, or undefined for read-only. */
  upper?: string;
  work?: string;
}

export interface EnvironmentConfig {
  /** Stable id (state dir name) of the environment. */
  id: string;
  hostname: string;
  rootfs: RootfsSpec;
  mounts: MountRequest[];
  network: 'host' | 'none' | 'private';
  /**
   * Who the invoking host user appears as inside (keep-id): files they create in bind mounts
   * stay theirs on the host. Fixed when the environment starts; default: the host user's
   * uid/gid/name with a home under /home.
   */
  user?: Identity;
  resources: { memory?: number; pids?: number; cpus?: number };
  /**
   * A binfmt_misc register line (a qemu-user interpreter) for the environment's own user namespace:
   * set when the image is of another architecture than the host (runtime/emulation.ts).
   */
  binfmt?: string;
}

export interface ProcessSpec {
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  /** Run as root inside (build steps, --root); otherwise as `identity`. */
  root: boolean;
  identity?: Identity;
  /** Allocate a pty (true when stdin is a terminal). */
  tty: boolean;
}

export type EnvironmentState = 'running' | 'stopped';

export interface RuntimeStatus {
  state: EnvironmentState;
  /** Host pid of the environment's init, when running. */
  pid?: number;
  startedAt?: string;
  /** The VM backend's guest: architecture, kernel release, and whether KVM or TCG runs it. */
  vm?: { arch: string; kernel: string; accel: 'kvm' | 'tcg' };
}

export interface Runtime {
  readonly backend: 'namespace' | 'vm';
  /** Start the environment's init in the background (idempotent). */
  start(config: EnvironmentConfig): Promise<RuntimeStatus>;
  /** Run a process in a running environment; resolves to its exit code (128+n for signal n). */
  exec(config: EnvironmentConfig, process: ProcessSpec): Promise<number>;
  /** Run one process in a fresh, throwaway set of namespaces (build steps); resolves to its exit code. */
  runOnce(config: EnvironmentConfig, process: ProcessSpec): Promise<number>;
  /** Stop every process of the environment within `graceMs`, then kill. */
  stop(config: EnvironmentConfig, graceMs: number): Promise<void>;
  status(config: EnvironmentConfig): Promise<RuntimeStatus>;
}
