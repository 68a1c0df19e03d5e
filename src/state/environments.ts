/**
 * Per-environment state: one directory per (project dir, env name) under
 * stateDir()/environments/<id>/ holding record.json, the writable layer (upper/
 * + work/), service logs and named volumes. The record is the truth for
 * `envy status`; whether the environment runs is asked of the runtime, never
 * cached, so a reboot shows environments as stopped rather than broken.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { EnvyError } from '../errors.js';
import { writeFileAtomic } from './atomic.js';
import { stateDir } from './paths.js';

export interface EnvironmentRecord {
  /** `<name>-<8 hex of the project dir's hash>`: readable and unique per project. */
  id: string;
  name: string;
  projectDir: string;
  specFile: string;
  /** Digest of env.yaml when the environment was last brought up. */
  specDigest: string;
  /** env.yaml's stat when its bytes had that digest: an unchanged stat spares `envy exec` the hashing. */
  specStat?: { size: number; mtimeMs: number; ctimeMs: number; ino: number };
  /** Digest of the spec without `services` (env/environment.ts environmentDigest): equal means only services changed. */
  envDigest?: string;
  backend: 'namespace' | 'vm';
  /** Key of the built image the writable layer sits on. */
  imageKey?: string;
  createdAt: string;
  /** hooks.onCreate ran to success for this writable layer. */
  created: boolean;
  /**
   * What `envy exec` needs to enter the running environment without loading env.yaml or the plan:
   * valid while specDigest matches env.yaml's bytes.
   */
  exec?: {
    identity: { uid: number; gid: number; name: string; home: string };
    workdir: string;
    /** The environment of processes inside (image config env + identity), before -e. */
    env: Record<string, string>;
    resources: { memory?: number; pids?: number; cpus?: number };
  };
  /**
   * A synced workspace, kept in step by `envy __sync`: `workspace.sync: watch` (the environment sees a
   * private copy of `source`), or a VM's workspace (`guest`: the guest directory, synced over the agent).
   */
  sync?: {
    source: string;
    direction: 'one-way' | 'two-way';
    ignore: string[];
    guest?: string;
    /**
     * A VM's other host directories kept live in the guest by the same process (volumes, binds
     * from env.yaml): two-way, or one-way for a read-only bind.
     */
    mounts?: { source: string; guest: string; direction: 'one-way' | 'two-way' }[];
  };
}

export function environmentsDir(): string {
  return join(stateDir(), 'environments');
}

export function environmentId(projectDir: string, name: string): string {
  return `${name}-${createHash('sha256').update(projectDir).digest('hex').slice(0, 8)}`;
}

export interface EnvironmentPaths {
  root: string;
  record: string;
  upper: string;
  work: string;
  logs: string;
  volumes: string;
  lock: string;
  run: string;
}

export function environmentPaths(id: string): EnvironmentPaths {
  const root = join(environmentsDir(), id);
  return {
    root,
    record: join(root, 'record.json'),
    upper: join(root, 'upper'),
    work: join(root, 'work'),
    logs: join(root, 'logs'),
    volumes: join(root, 'volumes'),
    lock: join(root, 'lock'),
    run: join(root, 'run'),
  };
}

export function readRecord(id: string): EnvironmentRecord | undefined {
  const path = environmentPaths(id).record;
  if (!existsSync(path)) return undefined;
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as EnvironmentRecord;
  } catch (error) {
    // Records are written atomically, so a bad one was edited by hand or the disk is failing.
    throw new EnvyError('STATE', `environment record ${path} is unreadable: ${(error as Error).message}`, {
      hint: `remove ${environmentPaths(id).root} to forget this environment`,
    });
  }
}

export function writeRecord(record: EnvironmentRecord): void {
  writeFileAtomic(environmentPaths(record.id).record, `${JSON.stringify(record, null, 2)}\n`);
}

export function listRecords(): EnvironmentRecord[] {
  const dir = environmentsDir();
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .flatMap((id) => {
      try {
        const record = readRecord(id);
        return record ? [record] : [];
      } catch {
        return [];
      }
    })
    // Ids are ASCII: compare code units. localeCompare would load ICU's collator, ~15 ms of `envy exec`.
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

export function removeEnvironmentDir(id: string): void {
  rmSync(environmentPaths(id).root, { recursive: true, force: true });
}
