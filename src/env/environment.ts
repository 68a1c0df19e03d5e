/**
 * The environment lifecycle: a built image plus a persistent writable layer,
 * the workspace and mounts, run by the namespace runtime. `envy up` brings it
 * to the running state (building what changed), `exec`/`shell` run processes
 * in it (starting it when down), `down` stops it and `down --rm` forgets it.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_PATH, HOST_BASE_LABEL, envFromList } from '../build/executor.js';
import { removeInUserNamespace } from '../build/userns.js';
import type { Project } from '../cli/project.js';
import type { Reporter } from '../cli/ui/events.js';
import { resolveBindSource } from '../config/normalize.js';
import type { EnvSpec } from '../config/types.js';
import { EnvyError } from '../errors.js';
import { LayerStore, type ImageRecord } from '../image/store.js';
import { runtimeFor } from '../runtime/select.js';
import type { EnvironmentConfig, Identity, MountRequest, ProcessSpec, Runtime } from '../runtime/types.js';
import type { VmBoot } from '../runtime/vm/runtime.js';
import {
  environmentId,
  environmentPaths,
  readRecord,
  removeEnvironmentDir,
  writeRecord,
  type EnvironmentRecord,
} from '../state/environments.js';
import { acquireLock, type Lock } from '../state/lock.js';
import { buildProject } from './build.js';
import { flushWorkspaceSync, startWorkspaceSync, stopWorkspaceSync, syncSettings, workspaceSyncPaths } from './workspace-sync.js';

export const STOP_GRACE_MS = 10_000;

export interface PreparedEnvironment {
  record: EnvironmentRecord;
  config: EnvironmentConfig;
  image: ImageRecord;
  identity: Identity;
  spec: EnvSpec;
}

/** The runtime's view of an environment: layers lowest first, the writable layer, the workspace and mounts. */
export function environmentConfig(id: string, spec: EnvSpec, projectDir: string, image: ImageRecord, store: LayerStore, identity: Identity): EnvironmentConfig {
  const paths = environmentPaths(id);
  const mounts: MountRequest[] = [];
  if (image.config.labels?.[HOST_BASE_LABEL]) mounts.push({ type: 'bind', source: '/usr', target: '/usr', readonly: true });
  // `sync: watch`: the environment sees a private copy that envy __sync keeps in step (workspace-sync.ts).
  const workspaceSource = spec.workspace.sync === 'watch' ? workspaceSyncPaths(id).copy : projectDir;
  mounts.push({ type: 'bind', source: workspaceSource, target: spec.workspace.path });
  for (const mount of spec.mounts) {
    if (mount.type === 'volume') {
      const source = join(paths.volumes, mount.name);
      mkdirSync(source, { recursive: true });
      mounts.push({ type: 'bind', source, target: mount.target, readonly: mount.readonly });
    } else if (mount.type === 'bind') {
      const source = resolveBindSource(mount.source, projectDir, homedir());
      if (!existsSync(source)) {
        throw new EnvyError('CONFIG_INVALID', `mounts: the bind source ${source} (for ${mount.target}) does not exist`, { hint: 'create it, or fix the path in env.yaml' });
      }
      mounts.push({ type: 'bind', source, target: mount.target, readonly: mount.readonly });
    } else {
      mounts.push({ type: 'tmpfs', target: mount.target, ...(mount.size !== undefined ? { size: mount.size } : {}) });
    }
  }
  return {
    id,
    hostname: spec.name,
    rootfs: { layers: image.layers.map((l) => store.layerRoot(l.diffId)).reverse(), upper: paths.upper, work: paths.work },
    mounts,
    network: spec.network,
    user: identity,
    resources: spec.resources,
  };
}

/** The environment variables a process inside sees: the image's, then identity and terminal, then the caller's. */
export function processEnv(image: ImageRecord, identity: Identity, root: boolean, extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = { ...envFromList(image.config.env) };
  env.PATH ??= DEFAULT_PATH;
  env.HOME = root ? '/root' : identity.home;
  env.USER = root ? 'root' : identity.name;
  env.LOGNAME = env.USER;
  env.LANG ??= 'C.UTF-8';
  if (process.env.TERM) env.TERM = process.env.TERM;
  return { ...env, ...extra };
}

export function lockEnvironment(id: string, reporter: Reporter | undefined): Promise<Lock> {
  return acquireLock(environmentPaths(id).lock, {
    purpose: `envy ${process.argv.slice(2, 3).join(' ')}`,
    onWait: (owner) => reporter?.report({ type: 'message', text: `waiting for another envy (pid ${owner.pid}, ${owner.purpose}) working on this environment...` }),
  });
}

export interface UpResult extends PreparedEnvironment {
  /** It was already running with nothing changed. */
  unchanged: boolean;
  built: number;
  notes: string[];
}

/**
 * Bring the project's environment up: build what changed, (re)create the
 * writable layer when the image changed, start it, run the hooks that are due.
 */
export async function up(project: Project, options: { frozen: boolean; reporter: Reporter; runtime?: Runtime; signal?: AbortSignal }): Promise<UpResult> {
  const { spec, source } = project;
  const id = environmentId(source.dir, spec.name);
  const paths = environmentPaths(id);
  const runtime = options.runtime ?? (await runtimeFor(spec.backend.type));
  const lock = await lockEnvironment(id, options.reporter);
  try {
    const notes: string[] = [];
    const previous = readRecord(id);
    const build = await buildProject(project, { frozen: options.frozen, reporter: options.reporter, signal: options.signal });
    const image = build.image;
    const config = environmentConfig(id, spec, source.dir, image, build.store, build.identity);
    if (spec.backend.type === 'vm' && 'useImage' in runtime) {
      const { arch, memory, cpus } = spec.backend;
      (runtime as { useImage(boot: VmBoot): void }).useImage({ image, store: build.store, identity: build.identity, arch, memory, cpus, ports: spec.ports });
    }
    const running = (await runtime.status(config)).state === 'running';
    const unchanged = running && previous?.imageKey === image.key && previous.specDigest === source.digest;
    if (unchanged && previous) {
      // Records written before the exec fast path existed lack its data: add it, nothing else changes.
      if (!previous.exec) writeRecord({ ...previous, exec: { identity: build.identity, workdir: spec.workdir, env: processEnv(image, build.identity, false), resources: spec.resources } });
      // The sync process may have died (killed, crashed) while the environment ran on: bring it back.
      if (previous.sync) await startWorkspaceSync(id);
      return { record: previous, config, image, identity: build.identity, spec, unchanged: true, built: 0, notes };
    }
    if (running) {
      notes.push('env.yaml changed: restarting the environment');
      await runtime.stop(config, STOP_GRACE_MS);
    }
    // A sync process belongs to one configuration of the workspace: restart it with the new one.
    await stopWorkspaceSync(id);
    let created = previous?.created ?? false;
    if (previous?.imageKey && previous.imageKey !== image.key && existsSync(paths.upper)) {
      // A writable layer belongs to the image it was made on: over another image its whiteouts and copies lie.
      notes.push(`the image changed (${previous.imageKey.slice(0, 12)} -> ${image.key.slice(0, 12)}): the writable layer starts fresh`);
      await removeInUserNamespace(build.identity, [paths.upper, paths.work]);
      created = false;
    }
    mkdirSync(paths.upper, { recursive: true });
    mkdirSync(paths.work, { recursive: true });
    mkdirSync(paths.logs, { recursive: true });
    const record: EnvironmentRecord = {
      id,
      name: spec.name,
      projectDir: source.dir,
      specFile: source.file,
      specDigest: source.digest,
      backend: spec.backend.type,
      imageKey: image.key,
      createdAt: previous?.createdAt ?? new Date().toISOString(),
      created,
      exec: { identity: build.identity, workdir: spec.workdir, env: processEnv(image, build.identity, false), resources: spec.resources },
    };
    if (spec.workspace.sync === 'watch') record.sync = syncSettings(source.dir, spec.workspace);
    writeRecord(record);
    await build.store.setRefs(id, [image.key]);
    if (record.sync) {
      // The environment starts on a complete copy: hooks and the first shell see the sources.
      options.reporter.report({ type: 'message', text: `syncing ${source.dir} into the environment (workspace.sync: watch, ${record.sync.direction})` });
      await startWorkspaceSync(id);
      await flushWorkspaceSync(id);
    }
    await runtime.start(config);
    const prepared: PreparedEnvironment = { record, config, image, identity: build.identity, spec };
    if (!record.created) {
      await runHooks(prepared, runtime, 'onCreate', spec.hooks.onCreate);
      record.created = true;
      writeRecord(record);
    }
    await runHooks(prepared, runtime, 'postStart', spec.hooks.postStart);
    if (spec.services.length > 0) notes.push(`services (${spec.services.map((s) => s.name).join(', ')}) are not supervised by this version of envy yet; start them with envy exec`);
    return { ...prepared, unchanged: false, built: build.built.length, notes };
  } finally {
    lock.release();
  }
}

export async function runHooks(env: PreparedEnvironment, runtime: Runtime, name: string, commands: string[]): Promise<void> {
  for (const command of commands) {
    const code = await runtime.exec(env.config, {
      argv: ['/bin/sh', '-c', command],
      env: processEnv(env.image, env.identity, false),
      cwd: env.spec.workdir,
      root: false,
      identity: env.identity,
      tty: false,
    });
    if (code !== 0) {
      throw new EnvyError('COMMAND', `hooks.${name} failed with exit code ${code}: ${command}`, { hint: 'fix the hook in env.yaml and run envy up again' });
    }
  }
}

/** The running environment of a project, starting it (with `up`) when it is down or env.yaml changed. */
export async function ensureRunning(project: Project, reporter: Reporter, runtime: Runtime): Promise<PreparedEnvironment> {
  const id = environmentId(project.source.dir, project.spec.name);
  const record = readRecord(id);
  // The fast path: nothing changed since `up`, and it runs. No plan, no build, no lock.
  if (record?.imageKey && record.specDigest === project.source.digest) {
    const store = LayerStore.open();
    if (store.hasImage(record.imageKey)) {
      const image = store.readImage(record.imageKey);
      const { planIdentity } = await import('./build.js');
      const { compilePlan } = await import('../plan/compile.js');
      const identity = planIdentity(compilePlan(project.spec, project.source.dir, project.lock));
      const config = environmentConfig(id, project.spec, project.source.dir, image, store, identity);
      if ((await runtime.status(config)).state === 'running') return { record, config, image, identity, spec: project.spec };
    }
  }
  return up(project, { frozen: false, reporter, runtime });
}

export async function down(project: Project, options: { remove: boolean; runtime?: Runtime }): Promise<{ id: string; wasRunning: boolean; removed: boolean }> {
  const id = environmentId(project.source.dir, project.spec.name);
  const record = readRecord(id);
  if (!record) return { id, wasRunning: false, removed: false };
  const runtime = options.runtime ?? (await runtimeFor(record.backend));
  const lock = await lockEnvironment(id, undefined);
  try {
    // stop() needs only the id; the rest of the config is not consulted.
    const config: EnvironmentConfig = { id, hostname: record.name, rootfs: { layers: [] }, mounts: [], network: 'host', resources: {} };
    const wasRunning = (await runtime.status(config)).state === 'running';
    if (wasRunning) await runtime.stop(config, STOP_GRACE_MS);
    await stopWorkspaceSync(id);
    if (!options.remove) return { id, wasRunning, removed: false };
    const { planIdentity } = await import('./build.js');
    const { compilePlan } = await import('../plan/compile.js');
    const identity = planIdentity(compilePlan(project.spec, project.source.dir, project.lock));
    await removeInUserNamespace(identity, [environmentPaths(id).root]);
    removeEnvironmentDir(id);
    await LayerStore.open().removeRefs(id);
    return { id, wasRunning, removed: true };
  } finally {
    lock.release();
  }
}

export function shellProcess(env: PreparedEnvironment, options: { root: boolean; tty: boolean }): ProcessSpec {
  const shell = env.spec.user.shell;
  return {
    argv: [shell, '-l'],
    env: processEnv(env.image, env.identity, options.root, { PS1: `(${env.spec.name}) \\u@\\h:\\w\\$ `, ENVY_ENV: env.spec.name }),
    cwd: env.spec.workdir,
    root: options.root,
    identity: env.identity,
    tty: options.tty,
  };
}
