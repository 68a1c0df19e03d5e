/**
 * BuildPlan: the ordered DAG of content-addressed Steps compiled from an EnvSpec.
 * A Step's key = sha256(parent key, kind, normalized inputs, input file contents),
 * so the same env.yaml and files give the same keys on any machine.
 */
import type { BaseSource } from '../config/types.js';

export type StepKind = 'base' | 'packages' | 'files' | 'run' | 'env' | 'user';

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
  /** Resolved digest from env.lock, when known (pins the base). */
  digest?: string;
}

export interface PackagesStep extends StepCommon {
  kind: 'packages';
  manager: 'apt' | 'npm' | 'pip';
  packages: string[];
  /** Versions pinned by env.lock (package -> version), when known. */
  pinned: Record<string, string>;
}

export interface FilesStep extends StepCommon {
  kind: 'files';
  /** Each copy with the sha256 of its content (a directory hashes its whole tree). */
  copies: { src: string; dest: string; mode?: string; digest: string }[];
}

export interface RunStep extends StepCommon {
  kind: 'run';
  name?: string;
  run: string;
  shell: string[];
  user: 'root' | 'user';
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

export type Step = BaseStep | PackagesStep | FilesStep | RunStep | EnvStep | UserStep;

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
