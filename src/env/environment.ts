/**
 * The environment lifecycle: a built image plus a persistent writable layer,
 * the workspace and mounts, run by the namespace runtime. `envy up` brings it
 * to the running state (building what changed), `exec`/`shell` run processes
 * in it (starting it when down), `down` stops it and `down --rm` forgets it.
 */
import { createHash } from 'node:crypto';
import { appendFileSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, statSync } from 'node:fs';
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
import { runtimeFor, runtimeWritingTo } from '../runtime/select.js';
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
import { ENVY_DIR_INSIDE, PROFILE_INSIDE, prepareInsideDir, shellEnv } from './attach.js';
import { buildProject } from './build.js';
import { LogFollower, logMaxBytes, rotateFiles } from './service-log.js';
import { applyServices, clearServices, hooksLogPath, readServicesRequest, serviceDigest, servicesReport, stopServices, supervisorOwner, type ServiceStatus } from './services.js';
import { flushWorkspaceSync, startWorkspaceSync, stopWorkspaceSync, syncSettings, usesWorkspaceSync, workspaceSyncPaths } from './workspace-sync.js';

export const STOP_GRACE_MS = 10_000;

/**
 * env.yaml's stat, if its bytes still have the digest the spec was loaded with: stat first, then read,
 * so an edit racing this shows as a digest mismatch (no stat recorded), never as a stale stat.
 */
function currentSpecStat(file: string, digest: string): EnvironmentRecord['specStat'] {
  try {
    const stats = statSync(file);
    if (createHash('sha256').update(readFileSync(file)).digest('hex') !== digest) return undefined;
    return { size: stats.size, mtimeMs: stats.mtimeMs, ctimeMs: stats.ctimeMs, ino: stats.ino };
  } catch {
    return undefined;
  }
}

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
  // A VM cannot bind: envy __sync keeps the guest's copy in step, or the project is shared with 9p.
  if (spec.backend.type === 'vm') {
    mounts.push({ type: 'bind', source: projectDir, target: spec.workspace.path, vm: spec.workspace.sync === '9p' ? '9p' : 'sync' });
  } else {
    const workspaceSource = spec.workspace.sync === 'watch' ? workspaceSyncPaths(id).copy : projectDir;
    mounts.push({ type: 'bind', source: workspaceSource, target: spec.workspace.path });
  }
  // A VM whose workspace is synced keeps the other host directories live the same way (one sync
  // process for all); a file bind, or any bind beside a 9p workspace, is copied in at boot instead.
  const vmSync = (source: string): { vm?: 'sync' } => (spec.backend.type === 'vm' && spec.workspace.sync !== '9p' && statSync(source).isDirectory() ? { vm: 'sync' } : {});
  for (const mount of spec.mounts) {
    if (mount.type === 'volume') {
      const source = join(paths.volumes, mount.name);
      mkdirSync(source, { recursive: true });
      mounts.push({ type: 'bind', source, target: mount.target, readonly: mount.readonly, ...vmSync(source) });
    } else if (mount.type === 'bind') {
      const source = resolveBindSource(mount.source, projectDir, homedir());
      if (!existsSync(source)) {
        throw new EnvyError('CONFIG_INVALID', `mounts: the bind source ${source} (for ${mount.target}) does not exist`, { hint: 'create it, or fix the path in env.yaml' });
      }
      mounts.push({ type: 'bind', source, target: mount.target, readonly: mount.readonly, ...vmSync(source) });
    } else {
      mounts.push({ type: 'tmpfs', target: mount.target, ...(mount.size !== undefined ? { size: mount.size } : {}) });
    }
  }
  // sshd's state for `envy attach` and the login shells' profile script (attach.ts): mounted from the start, so attaching never needs a restart;
  // last, so a tmpfs the user mounts on /run cannot hide it.
  const inside = prepareInsideDir(id);
  mounts.push({ type: 'bind', source: inside.dir, target: ENVY_DIR_INSIDE, readonly: true });
  mounts.push({ type: 'bind', source: inside.profile, target: PROFILE_INSIDE, readonly: true });
  return {
    id,
    hostname: spec.name,
    // Lowest first, as RootfsSpec says: envy-ns puts the last one on top of the overlay.
    rootfs: { layers: image.layers.map((l) => store.layerRoot(l.diffId)), upper: paths.upper, work: paths.work },
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
  /** The services' state once `up` is done (ready, or running when they have no readiness check). */
  services: ServiceStatus[];
}

/**
 * Digest of everything in the spec but `services`: when only services changed, the environment keeps
 * running and only the changed services restart.
 */
export function environmentDigest(spec: EnvSpec): string {
  const { services: _services, ...rest } = spec;
  return createHash('sha256').update(JSON.stringify(rest)).digest('hex');
}

/** `services.web, services.db (new)`: which services a new list restarts, for people. */
function changedServices(id: string, services: EnvSpec['services']): string[] {
  const before = new Map((readServicesRequest(id)?.services ?? []).map((s) => [s.name, serviceDigest(s)]));
  const changed = services.filter((s) => before.get(s.name) !== serviceDigest(s)).map((s) => (before.has(s.name) ? s.name : `${s.name} (new)`));
  const removed = [...before.keys()].filter((name) => !services.some((s) => s.name === name)).map((name) => `${name} (removed)`);
  return [...changed, ...removed];
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
    const envDigest = environmentDigest(spec);
    const unchanged = running && previous?.imageKey === image.key && previous.specDigest === source.digest;
    if (unchanged && previous) {
      // Records written by older versions lack the exec fast path's data: add it, nothing else changes.
      const specStat = previous.specStat ?? currentSpecStat(source.file, source.digest);
      if (!previous.exec || (!previous.specStat && specStat)) {
        writeRecord({ ...previous, exec: previous.exec ?? { identity: build.identity, workdir: spec.workdir, env: processEnv(image, build.identity, false), resources: spec.resources }, ...(specStat ? { specStat } : {}) });
      }
      // The sync process may have died (killed, crashed) while the environment ran on: bring it back.
      if (previous.sync) await startWorkspaceSync(id);
      let finished = false;
      if (!previous.created) {
        // The last up started it but its onCreate failed or was interrupted: finish that, once.
        const prepared: PreparedEnvironment = { record: previous, config, image, identity: build.identity, spec };
        notes.push('hooks.onCreate did not complete last time: running it now');
        await runHooks(prepared, runtime, 'onCreate', spec.hooks.onCreate, { log: true });
        previous.created = true;
        writeRecord(previous);
        await runHooks(prepared, runtime, 'postStart', spec.hooks.postStart, { log: true });
        finished = true;
      }
      // So may the supervisor: a new one ends what the old one left and starts the services again.
      let services: ServiceStatus[] = [];
      if (spec.services.length > 0) {
        const current = supervisorOwner(id) ? servicesReport(id, true).services : undefined;
        const failed = (current ?? []).filter((s) => s.state === 'failed').map((s) => s.name);
        if (current && failed.length === 0) {
          services = current;
        } else if (current) {
          // `up` makes it so: a failed service gets another chance (the others keep running).
          notes.push(`starting the failed service${failed.length === 1 ? '' : 's'} again: ${failed.join(', ')}`);
          services = (await applyServices(id, spec.services)).services;
        } else {
          notes.push('the service supervisor was not running: services restarted');
          services = (await applyServices(id, spec.services)).services;
        }
      }
      return { record: previous, config, image, identity: build.identity, spec, unchanged: !finished, built: 0, notes, services };
    }
    if (running && previous?.imageKey === image.key && previous.envDigest === envDigest) {
      // Only services changed: the environment and the unchanged services keep running.
      const record: EnvironmentRecord = { ...previous, specFile: source.file, specDigest: source.digest, envDigest, specStat: currentSpecStat(source.file, source.digest) };
      const changed = changedServices(id, spec.services);
      notes.push(changed.length > 0 ? `services changed: ${changed.join(', ')}; the rest keep running` : 'env.yaml changed, but nothing that needs a restart');
      writeRecord(record);
      const services = spec.services.length > 0 ? (await applyServices(id, spec.services)).services : (await clearServices(id), []);
      return { record, config, image, identity: build.identity, spec, unchanged: false, built: build.built.length, notes, services };
    }
    if (running) {
      notes.push('env.yaml changed: restarting the environment');
      // Services stop in reverse order, each with its own grace, before the environment goes.
      await stopServices(id);
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
      envDigest,
      backend: spec.backend.type,
      imageKey: image.key,
      createdAt: previous?.createdAt ?? new Date().toISOString(),
      created,
      exec: { identity: build.identity, workdir: spec.workdir, env: processEnv(image, build.identity, false), resources: spec.resources },
    };
    if (usesWorkspaceSync(spec)) record.sync = syncSettings(source.dir, spec.workspace, spec.backend.type, config.mounts);
    const specStat = currentSpecStat(source.file, source.digest);
    if (specStat) record.specStat = specStat;
    writeRecord(record);
    await build.store.setRefs(id, [image.key]);
    if (record.sync && !record.sync.guest) {
      // The environment starts on a complete copy: hooks and the first shell see the sources.
      options.reporter.report({ type: 'message', text: `syncing ${source.dir} into the environment (workspace.sync: watch, ${record.sync.direction})` });
      await startWorkspaceSync(id);
      await flushWorkspaceSync(id);
    }
    // A VM's sync process starts beside the boot: its Node start and its connection to the guest's
    // sync agent (which the boot starts as soon as the guest answers) overlap the kernel's seconds.
    const guestSync = record.sync?.guest ? startWorkspaceSync(id) : undefined;
    guestSync?.catch(() => undefined);
    try {
      await runtime.start(config);
    } catch (error) {
      if (guestSync) await guestSync.then(() => stopWorkspaceSync(id), () => undefined);
      throw error;
    }
    if (record.sync?.guest) {
      // A VM's copy lives in the guest: synced once it answers, before the hooks and the first shell.
      const { runningVmState } = await import('../runtime/vm/channel.js');
      if (runningVmState(id)?.channel === 'agent') {
        options.reporter.report({ type: 'message', text: `syncing ${source.dir} into the VM at ${record.sync.guest} (${record.sync.direction})` });
        await guestSync;
        await flushWorkspaceSync(id);
      } else {
        await guestSync?.then(() => stopWorkspaceSync(id), () => undefined);
        notes.push(`the VM runs without envy's guest agent: ${record.sync.guest} is not synced`);
      }
    }
    const prepared: PreparedEnvironment = { record, config, image, identity: build.identity, spec };
    if (!record.created) {
      await runHooks(prepared, runtime, 'onCreate', spec.hooks.onCreate, { log: true });
      record.created = true;
      writeRecord(record);
    }
    await runHooks(prepared, runtime, 'postStart', spec.hooks.postStart, { log: true });
    // A supervisor left from a run whose environment died is gone by now (it follows its environment).
    const services = spec.services.length > 0 ? (await applyServices(id, spec.services)).services : (await clearServices(id), []);
    return { ...prepared, unchanged: false, built: build.built.length, notes, services };
  } finally {
    lock.release();
  }
}

/**
 * Run hooks in order; the first failure stops them. With `log`, their output goes to the
 * environment's hooks log (`envy logs --hooks`) and is followed from there to stdout. A file, not
 * a pipe: a process a hook leaves in the background keeps a valid stdout after `up` exits.
 */
export async function runHooks(env: PreparedEnvironment, runtime: Runtime, name: string, commands: string[], options: { log?: boolean } = {}): Promise<void> {
  for (const command of commands) {
    let code: number;
    if (options.log) {
      const path = hooksLogPath(env.record.id);
      mkdirSync(environmentPaths(env.record.id).logs, { recursive: true });
      try {
        if (statSync(path).size > logMaxBytes()) rotateFiles(path);
      } catch {
        // no log yet
      }
      appendFileSync(path, `[envy] ${new Date().toISOString()} hooks.${name}: ${command}\n`);
      const follower = new LogFollower(path, true);
      const fd = openSync(path, 'a');
      const echo = (): void => {
        const data = follower.read();
        if (data.length > 0) process.stdout.write(data);
      };
      const timer = setInterval(echo, 100);
      try {
        code = await runHook(env, await runtimeWritingTo(runtime.backend, fd), command);
      } finally {
        clearInterval(timer);
        closeSync(fd);
        echo();
        follower.close();
      }
      appendFileSync(path, `[envy] hooks.${name} exited with code ${code}\n`);
    } else {
      code = await runHook(env, runtime, command);
    }
    if (code !== 0) {
      throw new EnvyError('COMMAND', `hooks.${name} failed with exit code ${code}: ${command}`, { hint: `fix the hook in env.yaml and run envy up again${options.log ? ' (envy logs --hooks shows its output)' : ''}` });
    }
  }
}

function runHook(env: PreparedEnvironment, runtime: Runtime, command: string): Promise<number> {
  return runtime.exec(env.config, {
    argv: ['/bin/sh', '-c', command],
    env: processEnv(env.image, env.identity, false),
    cwd: env.spec.workdir,
    root: false,
    identity: env.identity,
    tty: false,
  });
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
  if (!record) {
    // `envy ssh-config` before any `up` leaves keys behind: --rm forgets those too.
    if (options.remove && existsSync(environmentPaths(id).root)) {
      removeEnvironmentDir(id);
      return { id, wasRunning: false, removed: true };
    }
    return { id, wasRunning: false, removed: false };
  }
  const runtime = options.runtime ?? (await runtimeFor(record.backend));
  const lock = await lockEnvironment(id, undefined);
  try {
    // stop() needs only the id; the rest of the config is not consulted.
    const config: EnvironmentConfig = { id, hostname: record.name, rootfs: { layers: [] }, mounts: [], network: 'host', resources: {} };
    const wasRunning = (await runtime.status(config)).state === 'running';
    // Services first, in reverse order with their own grace; whatever is left dies with the environment.
    await stopServices(id);
    // A VM's sync talks to an agent in the guest: stop it before the guest goes, not after it failed.
    if (record.sync?.guest) await stopWorkspaceSync(id);
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
    env: processEnv(env.image, env.identity, options.root, shellEnv(env.spec.name, processEnv(env.image, env.identity, options.root))),
    cwd: env.spec.workdir,
    root: options.root,
    identity: env.identity,
    tty: options.tty,
  };
}
