/**
 * From a loaded project to a built image and an up-to-date env.lock: the
 * stage `envy build` and `envy up` share.
 */
import { join } from 'node:path';
import { Executor, type BuildResult } from '../build/executor.js';
import type { Project } from '../cli/project.js';
import type { Reporter } from '../cli/ui/events.js';
import { LayerStore } from '../image/store.js';
import { compilePlan } from '../plan/compile.js';
import { packageName } from '../plan/packages.js';
import { checkFrozen, refreshLock, renderLock, writeLock } from '../plan/lock.js';
import type { BuildPlan, EnvLock, KernelStep, UserStep } from '../plan/types.js';
import { EnvyError } from '../errors.js';
import { mark } from '../build/trace.js';
import type { Identity } from '../runtime/types.js';
import { environmentId, environmentPaths } from '../state/environments.js';

export interface ProjectBuild extends BuildResult {
  plan: BuildPlan;
  lock: EnvLock;
  identity: Identity;
  store: LayerStore;
  lockChanged: boolean;
}

export function planIdentity(plan: BuildPlan): Identity {
  const user = plan.steps.find((s): s is UserStep => s.kind === 'user');
  if (!user) throw new Error(`plan ${plan.name} has no user step`);
  return { uid: user.uid, gid: user.gid, name: user.name, home: user.home };
}

export async function buildProject(project: Project, options: { frozen: boolean; reporter: Reporter; signal?: AbortSignal }): Promise<ProjectBuild> {
  if (options.frozen) checkFrozen(project.spec, project.lock);
  mark('buildProject');
  const plan = compilePlan(project.spec, project.source.dir, project.lock);
  mark('compiled');
  const kernelFile = plan.steps.find((s): s is KernelStep => s.kind === 'kernel')?.file;
  if (options.frozen && kernelFile && project.lock?.kernel?.digest !== kernelFile.digest) {
    throw new EnvyError('LOCK_MISMATCH', `backend.kernel: the kernel file ${kernelFile.src} is not the one env.lock records (${project.lock?.kernel?.digest?.slice(0, 19) ?? 'no digest'}, now ${kernelFile.digest.slice(0, 19)})`, {
      hint: 'run envy up without --frozen to record the new kernel in env.lock, then commit it',
    });
  }
  const identity = planIdentity(plan);
  const store = LayerStore.open();
  const id = environmentId(project.source.dir, project.spec.name);
  const executor = new Executor({
    store,
    plan,
    spec: project.spec,
    projectDir: project.source.dir,
    reporter: options.reporter,
    identity,
    logDir: join(environmentPaths(id).logs, 'build'),
    signal: options.signal,
  });
  const result = await executor.run();
  mark('executor done');
  const lock = refreshLock(project.spec, project.lock);
  if (result.resolved.baseDigest && lock.base.digest === undefined) lock.base.digest = result.resolved.baseDigest;
  for (const manager of ['apt', 'npm', 'pip'] as const) {
    // The lock keys packages as env.yaml writes them (`typescript@5`); versions come back by name.
    for (const request of Object.keys(lock.packages[manager])) {
      const version = result.resolved.packages[manager][packageName(manager, request) ?? request];
      if (version !== undefined && lock.packages[manager][request] === null) lock.packages[manager][request] = version;
    }
  }
  if (lock.kernel?.file !== undefined && kernelFile) lock.kernel = { file: lock.kernel.file, digest: kernelFile.digest };
  if (lock.kernel?.package !== undefined && result.resolved.kernel && !lock.kernel.resolved) {
    lock.kernel = { package: lock.kernel.package, resolved: result.resolved.kernel.package, version: result.resolved.kernel.version };
  }
  const lockChanged = !project.lock || renderLock(project.lock) !== renderLock(lock);
  // --frozen never writes: the lock is the input there, not the output.
  if (!lockChanged || options.frozen) return { ...result, plan, lock, identity, store, lockChanged };
  writeLock(project.lockPath, lock);
  mark('lock written');
  // The pins just written enter the step keys (a pinned base is a different input than "latest"), yet
  // they describe exactly what was built: record the images under the pinned keys too, so the next
  // build with this lock is all cache hits instead of a rebuild of identical content.
  const pinned = compilePlan(project.spec, project.source.dir, lock);
  let image = result.image;
  for (const [index, step] of pinned.steps.entries()) {
    const built = plan.steps[index];
    if (!built || built.key === step.key || !store.hasImage(built.key)) continue;
    const alias = { ...store.readImage(built.key), key: step.key };
    if (!store.hasImage(step.key)) await store.writeImage(alias);
    if (index === pinned.steps.length - 1) image = alias;
  }
  mark('aliases written');
  return { ...result, image, plan: pinned, lock, identity, store, lockChanged };
}
