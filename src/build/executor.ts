/**
 * Executes a BuildPlan against the layer store. A step whose key names an image
 * in the store is a cache hit and costs nothing. A miss runs in the namespace
 * runtime as root on an overlay of its parent's layers; its upper dir then
 * becomes the step's layer (content-addressed by the diff_id of its
 * deterministic tar). Every step's output goes to a log file and to the
 * reporter; a failure names the step, its command, the last lines, the exit
 * code and the log.
 */
import { createWriteStream, existsSync, mkdirSync, rmSync, type WriteStream } from 'node:fs';
import { join } from 'node:path';
import type { EnvSpec } from '../config/types.js';
import { EnvyError } from '../errors.js';
import { bootstrapDebian } from '../image/debian.js';
import { createHostBaseLayer } from '../image/host.js';
import { importOci } from '../image/oci-import.js';
import { hostPlatform, pullImage } from '../image/registry.js';
import type { ImageConfig, ImageLayer, ImageRecord, LayerStore, Platform, Unpacker } from '../image/store.js';
import { tempName } from '../image/temp.js';
import type { Reporter } from '../cli/ui/events.js';
import { packageName, pinnedRequest } from '../plan/packages.js';
import { KERNEL_MARKER, kernelFileScript, kernelScript } from '../plan/kernel.js';
import type { BaseStep, BuildPlan, FilesStep, KernelStep, PackagesStep, RunStep, Step, UserStep } from '../plan/types.js';
import { NamespaceRuntime } from '../runtime/namespace/runtime.js';
import { debianArchOf, emulationFor, type Emulation } from '../runtime/emulation.js';
import type { Arch } from '../config/types.js';
import type { EnvironmentConfig, Identity, MountRequest, ProcessSpec } from '../runtime/types.js';
import { cacheDir } from '../state/paths.js';
import { AptDownloadProgress } from './apt-progress.js';
import { mark } from './trace.js';
import { buildPassthroughEnv } from './host-env.js';
import { LayerJobSession } from './job-session.js';
import { ownByRootInUserNamespace, removeInUserNamespace, UnpackSession } from './userns.js';

export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** Image label marking a host base: the runtime binds the host's /usr over it. */
export const HOST_BASE_LABEL = 'dev.envy.base.host';
const FAILURE_TAIL_LINES = 30;
const VERSION_MARKER = 'envy-resolved\t';

export interface BuildOptions {
  store: LayerStore;
  plan: BuildPlan;
  spec: EnvSpec;
  projectDir: string;
  reporter: Reporter;
  /** The env user: its uid/gid is the keep-id of the map, the same one the environment runs with. */
  identity: Identity;
  /** Per-step logs go here. */
  logDir: string;
  signal?: AbortSignal;
}

export interface ResolvedVersions {
  baseDigest?: string;
  packages: Record<'apt' | 'npm' | 'pip', Record<string, string>>;
  /** The kernel package a kernel step unpacked (backend: vm). */
  kernel?: { package: string; version: string };
}

export interface BuildResult {
  image: ImageRecord;
  resolved: ResolvedVersions;
  /** Steps that ran (cache misses), by key. */
  built: string[];
}

/**
 * The time every file a build step writes is clamped to (SOURCE_DATE_EPOCH), so two builds of the same
 * pinned inputs give identical layers. The user's SOURCE_DATE_EPOCH wins; then a Debian snapshot's time
 * (known before the bootstrap, which needs it); then, once the base is in the store, the creation time of
 * a pulled or imported image, or 0 when its config has none: its content is fixed by its digest, so the
 * epoch is too. A base that drifts (an unpinned Debian suite, the host) gets no epoch.
 */
export function sourceDateEpoch(step: BaseStep, base?: ImageRecord, env: NodeJS.ProcessEnv = process.env): number | undefined {
  const fromEnv = env.SOURCE_DATE_EPOCH;
  if (fromEnv !== undefined && /^\d+$/.test(fromEnv)) return Number(fromEnv);
  if (base && (step.source.kind === 'image' || step.source.kind === 'oci')) {
    const created = base.config.created === undefined ? NaN : Date.parse(base.config.created);
    return Number.isNaN(created) ? 0 : Math.floor(created / 1000);
  }
  if (step.source.kind !== 'debian' || !step.source.snapshot) return undefined;
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(step.source.snapshot);
  return m ? Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!) / 1000 : undefined;
}

function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

class StepLog {
  private readonly stream: WriteStream;
  readonly tail: string[] = [];

  constructor(
    readonly path: string,
    private readonly onLine: (line: string) => void,
  ) {
    this.stream = createWriteStream(path);
  }

  line(text: string): void {
    this.stream.write(`${text}\n`);
    this.tail.push(text);
    if (this.tail.length > FAILURE_TAIL_LINES) this.tail.shift();
    this.onLine(text);
  }

  pipe(readable: NodeJS.ReadableStream | null | undefined): Promise<void> {
    if (!readable) return Promise.resolve();
    return new Promise((resolve) => {
      let pending = '';
      readable.on('data', (chunk: Buffer) => {
        pending += chunk.toString();
        const lines = pending.split(/\r?\n|\r/);
        pending = lines.pop() ?? '';
        for (const l of lines) this.line(l);
      });
      readable.on('end', () => {
        if (pending) this.line(pending);
        resolve();
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.stream.end(resolve));
  }
}

export class Executor {
  private readonly resolved: ResolvedVersions = { packages: { apt: {}, npm: {}, pip: {} } };
  private epoch: number | undefined;
  private foreign: { emulation: Emulation | undefined } | undefined;
  /** The build's layer worker (snapshots, removals), started with the build when a step will run. */
  private jobs: Promise<LayerJobSession> | undefined;

  constructor(private readonly options: BuildOptions) {}

  async run(): Promise<BuildResult> {
    const { plan, store } = this.options;
    // Started before anything else, so its Node start overlaps the work before the first snapshot.
    if (plan.steps.some((s) => s.kind !== 'base' && s.kind !== 'env' && !store.hasImage(s.key))) this.jobs = LayerJobSession.start(this.options.identity);
    try {
      return await this.runSteps();
    } finally {
      await this.jobs?.then((session) => session.close(), () => undefined);
    }
  }

  private layerJobs(): Promise<LayerJobSession> {
    return (this.jobs ??= LayerJobSession.start(this.options.identity));
  }

  private async runSteps(): Promise<BuildResult> {
    const { plan, store, reporter } = this.options;
    mark('executor start');
    mkdirSync(this.options.logDir, { recursive: true });
    await store.sweepStale((path) => removeInUserNamespace(this.options.identity, [path]));
    mark('swept');
    reporter.report({ type: 'plan', steps: plan.steps.map((s) => ({ key: s.key, label: s.label, kind: s.kind })) });
    const built: string[] = [];
    let parent: ImageRecord | undefined;
    for (const [index, step] of plan.steps.entries()) {
      this.options.signal?.throwIfAborted();
      if (step.kind === 'base') this.epoch = sourceDateEpoch(step);
      if (store.hasImage(step.key)) {
        parent = store.readImage(step.key);
        if (step.kind === 'base') {
          this.resolved.baseDigest = parent.manifestDigest;
          this.epoch = sourceDateEpoch(step, parent);
        }
        if (step.kind === 'packages') Object.assign(this.resolved.packages[step.manager], parent.resolved?.packages);
        if (step.kind === 'kernel' && parent.resolved?.kernel) this.resolved.kernel = parent.resolved.kernel;
        reporter.report({ type: 'step-cached', key: step.key });
        continue;
      }
      const started = Date.now();
      mark(`step ${step.kind} ${step.label} start`);
      reporter.report({ type: 'step-start', key: step.key });
      // apt shows no progress meter without a terminal: its per-archive lines become a download with bytes (and a rate in the view).
      const apt = step.kind === 'packages' && step.manager === 'apt' ? new AptDownloadProgress() : undefined;
      const log = new StepLog(join(this.options.logDir, `${String(index + 1).padStart(2, '0')}-${step.kind}-${step.key.slice(0, 12)}.log`), (line) => {
        reporter.report({ type: 'step-output', key: step.key, line });
        const download = apt?.line(line);
        if (download) reporter.report({ type: 'download', id: `${step.key}:apt`, label: 'apt archives', ...download });
      });
      try {
        const image = this.withResolved(step, await this.execute(step, parent, log));
        if (step.kind === 'base') this.epoch = sourceDateEpoch(step, image);
        mark('  executed');
        await store.writeImage(image);
        mark('  image written');
        parent = image;
        built.push(step.key);
        reporter.report({ type: 'step-done', key: step.key, ms: Date.now() - started });
      } catch (error) {
        const message = error instanceof EnvyError ? error.message : String(error);
        reporter.report({ type: 'step-failed', key: step.key, ms: Date.now() - started, message });
        throw error;
      } finally {
        await log.close();
      }
    }
    if (!parent) throw new EnvyError('INTERNAL', `plan ${plan.name} has no steps`);
    return { image: parent, resolved: this.resolved, built };
  }

  /** Keep what a packages or kernel step resolved with its image, for later cache hits (ImageRecord.resolved). */
  private withResolved(step: Step, image: ImageRecord): ImageRecord {
    // A plan has one packages step per manager: what that manager resolved is this step's.
    if (step.kind === 'packages') return { ...image, resolved: { packages: { ...this.resolved.packages[step.manager] } } };
    if (step.kind === 'kernel' && this.resolved.kernel) return { ...image, resolved: { kernel: this.resolved.kernel } };
    return image;
  }

  private async execute(step: Step, parent: ImageRecord | undefined, log: StepLog): Promise<ImageRecord> {
    if (step.kind === 'base') return this.base(step, log);
    if (!parent) throw new EnvyError('INTERNAL', `step ${step.label} has no parent image`);
    switch (step.kind) {
      case 'env':
        return this.derive(step, parent, [], { env: mergeEnv(parent.config.env, step.env) });
      case 'kernel':
        if (step.file) {
          const script = kernelFileScript(step.file, '/.envy-src');
          return this.runStep(step, parent, log, { argv: ['/bin/sh', '-c', `set -e\n${script}`], root: true, extraMounts: [{ type: 'bind', source: this.options.projectDir, target: '/.envy-src', readonly: true }] });
        }
        return this.runStep(step, parent, log, { argv: ['/bin/sh', '-c', `set -e\n${kernelScript(step)}`], root: true });
      case 'packages':
        return this.runStep(step, parent, log, { argv: ['/bin/sh', '-c', this.packagesScript(step)], root: true });
      case 'files':
        return this.runStep(step, parent, log, { argv: ['/bin/sh', '-c', filesScript(step)], root: true, extraMounts: [{ type: 'bind', source: this.options.projectDir, target: '/.envy-src', readonly: true }] });
      case 'user':
        return this.runStep(step, parent, log, { argv: ['/bin/sh', '-c', userScript(step)], root: true });
      case 'run':
        return this.runStep(step, parent, log, {
          argv: [...step.shell, step.run],
          root: step.user === 'root',
          cwd: step.workdir,
          env: step.env,
          extraMounts: [{ type: 'bind', source: this.options.projectDir, target: step.projectPath, readonly: true }],
        });
    }
  }

  /** The plan's architecture (its base step's): the VM's, or the host's. */
  private arch(): Arch {
    const base = this.options.plan.steps[0];
    if (base?.kind !== 'base') throw new EnvyError('INTERNAL', `plan ${this.options.plan.name} does not start with its base`);
    return base.arch;
  }

  /**
   * How the plan's programs run here: undefined for the host's own architecture, else qemu-user
   * (runtime/emulation.ts). Asked only when a step must run, so a fully cached plan needs no qemu.
   */
  private emulation(): Emulation | undefined {
    this.foreign ??= { emulation: emulationFor(this.arch()) };
    return this.foreign.emulation;
  }

  private derive(step: Step, parent: ImageRecord, layers: ImageLayer[], config: Partial<ImageConfig>): ImageRecord {
    return {
      key: step.key,
      source: `build ${this.options.plan.name}: ${step.label}`,
      layers: [...parent.layers, ...layers],
      config: { ...parent.config, ...config },
      ...(parent.platform ? { platform: parent.platform } : {}),
      createdAt: new Date().toISOString(),
      parent: parent.key,
    };
  }

  private async base(step: BaseStep, log: StepLog): Promise<ImageRecord> {
    if (step.source.kind === 'host') return this.baseLayers(step, log, async () => Promise.reject(new EnvyError('INTERNAL', 'a host base unpacks nothing')));
    // One layer worker unpacks all of the base's layers, each while it streams in (userns.ts).
    let session: Promise<UnpackSession> | undefined;
    const unpack: Unpacker = async (source, dest, o) => (await (session ??= UnpackSession.start(this.options.identity))).unpack(source, dest, o);
    try {
      return await this.baseLayers(step, log, unpack);
    } finally {
      await session?.then((s) => s.close(), () => undefined);
    }
  }

  private async baseLayers(step: BaseStep, log: StepLog, unpack: Unpacker): Promise<ImageRecord> {
    const { store, reporter, identity } = this.options;
    const removeTree = (path: string): Promise<void> => removeInUserNamespace(identity, [path]).then(() => undefined);
    // What the image is built for, so an export says so (an arm64 image built on x86_64 is arm64).
    let platform: Platform = platformOf(step.arch);
    const record = (layers: ImageLayer[], config: ImageConfig, digest: string | undefined): ImageRecord => {
      this.resolved.baseDigest = digest;
      return { key: step.key, source: step.label, ...(digest ? { manifestDigest: digest } : {}), layers, config, platform, createdAt: new Date().toISOString() };
    };
    const source = step.source;
    switch (source.kind) {
      case 'debian': {
        const tar = join(store.root, 'layers', tempName('bootstrap'));
        const work = join(store.root, 'layers', tempName('mmdebstrap'));
        try {
          log.line(`bootstrapping Debian ${source.suite}${source.snapshot ? ` at ${source.snapshot}` : ''} with mmdebstrap`);
          const emulation = this.emulation();
          if (emulation) log.line(`${step.arch} is not this host's architecture: its programs run under qemu-user (${emulation.interpreter}, ${emulation.via === 'userns' ? "registered in the build's user namespace" : 'registered host-wide'})`);
          if (emulation) mkdirSync(work);
          const foreign = emulation ? { emulation, keepId: `${identity.uid}:${identity.gid}`, tmpDir: work } : undefined;
          await bootstrapDebian(source, tar, { arch: debianArchOf(step.arch), sourceDateEpoch: this.epoch, onLine: (l) => log.line(l), signal: this.options.signal, ...(foreign ? { foreign } : {}) });
          const meta = await store.addLayer(tar, { label: step.label, createdBy: `mmdebstrap ${source.suite}`, chown: true, unpack });
          if (step.digest && step.digest !== meta.diffId) {
            log.line(`note: env.lock pins ${step.digest}; this bootstrap gave ${meta.diffId} (an unpinned base drifts with the mirror)`);
          }
          return record([{ diffId: meta.diffId }], { env: [`PATH=${DEFAULT_PATH}`] }, meta.diffId);
        } finally {
          rmSync(tar, { force: true });
          if (existsSync(work)) await removeTree(work).catch(() => undefined);
        }
      }
      case 'image': {
        const ref = step.digest ? `${source.ref.replace(/@sha256:[0-9a-f]{64}$/, '')}@${step.digest}` : source.ref;
        const pulled = await pullImage(ref, store, {
          platform,
          unpack,
          chown: true,
          removeTree,
          onProgress: (p) => reporter.report({ type: 'download', id: p.blob, label: p.blob.slice(7, 19), done: p.done, total: p.total }),
        });
        platform = checkPlatform(pulled.image.platform, platform, source.ref);
        return record(pulled.image.layers, pulled.image.config, pulled.manifestDigest);
      }
      case 'oci': {
        const imported = await importOci(join(this.options.projectDir, source.path), store, { platform, unpack, chown: true, removeTree });
        platform = checkPlatform(imported.image.platform, platform, source.path);
        return record(imported.image.layers, imported.image.config, imported.digest);
      }
      case 'host': {
        const scratch = join(store.root, 'layers', tempName('hostbase'));
        mkdirSync(join(scratch, 'root'), { recursive: true });
        try {
          createHostBaseLayer(join(scratch, 'root'));
          await ownByRootInUserNamespace(identity, join(scratch, 'root'));
          const layer = await this.commitScratch(scratch, 'host base skeleton', []);
          return record([layer], { env: [`PATH=${DEFAULT_PATH}`], labels: { [HOST_BASE_LABEL]: 'true' } }, undefined);
        } finally {
          if (existsSync(scratch)) await removeInUserNamespace(identity, [scratch]).catch(() => undefined);
        }
      }
    }
  }

  /**
   * Make `scratch/root` (a step's overlay upper dir, already inside the store's layers/ dir) a layer. One
   * layer-worker run does all that needs the user namespace: the deterministic snapshot (the diff_id), the
   * mtime clamp, removing `remove` (the overlay work dir) and, when the store already has that content,
   * the tree itself. Then the scratch dir, which the user owns, is renamed into place: no copy, no move of
   * the subordinate-owned tree, no second worker.
   */
  private async commitScratch(scratch: string, createdBy: string, remove: string[]): Promise<ImageLayer> {
    const { store } = this.options;
    const jobs = await this.layerJobs();
    const snapshot = await jobs.snapshot(join(scratch, 'root'), this.epoch, { layersDir: join(store.root, 'layers/sha256'), remove });
    mark(`  snapshot done (${snapshot.entries} entries, ${snapshot.size} bytes)`);
    if (snapshot.existing) {
      // The worker removed the tree; what is left is the user's own empty scratch dir.
      rmSync(scratch, { recursive: true, force: true });
      return { diffId: snapshot.diffId };
    }
    const meta = await store.adoptLayerDir(
      scratch,
      {
        diffId: snapshot.diffId,
        size: snapshot.size,
        createdBy,
        entries: snapshot.entries,
        skippedDevices: 0,
        whiteouts: snapshot.whiteouts,
        opaqueDirs: snapshot.opaqueDirs,
        // The upper dir was written inside the namespace and kept as it is: its owners are the image's.
        // Without this, export wrote every file of a step layer as 0:0 (the user's home became root's).
        chowned: true,
        owners: {},
        strippedModes: {},
      },
      // Someone stored the same content since the worker looked: drop ours.
      { removeTree: (path) => jobs.remove([path]) },
    );
    return { diffId: meta.diffId };
  }

  private async runStep(
    step: KernelStep | PackagesStep | FilesStep | UserStep | RunStep,
    parent: ImageRecord,
    log: StepLog,
    how: { argv: string[]; root: boolean; cwd?: string; env?: Record<string, string>; extraMounts?: MountRequest[] },
  ): Promise<ImageRecord> {
    const { store, identity, spec } = this.options;
    // The upper dir is created where the layer will live (scratch/root), so committing it is a rename.
    const scratch = join(store.root, 'layers', tempName('step'));
    const upper = join(scratch, 'root');
    const work = join(scratch, 'work');
    mkdirSync(upper, { recursive: true });
    mkdirSync(work, { recursive: true });
    try {
      const mounts: MountRequest[] = [...(how.extraMounts ?? [])];
      if (parent.config.labels?.[HOST_BASE_LABEL]) mounts.push({ type: 'bind', source: '/usr', target: '/usr', readonly: true });
      if ((step.kind === 'packages' && step.manager === 'apt') || (step.kind === 'kernel' && !step.file)) {
        const archives = join(cacheDir(), 'apt-archives');
        mkdirSync(join(archives, 'partial'), { recursive: true });
        mounts.push({ type: 'bind', source: archives, target: '/var/cache/apt/archives' });
      }
      const config: EnvironmentConfig = {
        id: `build-${step.key.slice(0, 12)}`,
        hostname: spec.name,
        // Lowest first, as RootfsSpec says: envy-ns puts the last one on top of the overlay.
        rootfs: { layers: parent.layers.map((l) => store.layerRoot(l.diffId)), upper, work },
        mounts,
        network: 'host',
        user: identity,
        resources: {},
        ...binfmtConfig(this.emulation()),
      };
      // What the image and the step set wins over the host's proxy and index settings.
      const env: Record<string, string> = { ...buildPassthroughEnv(), ...envFromList(parent.config.env), ...(how.env ?? {}) };
      env.PATH ??= DEFAULT_PATH;
      env.HOME ??= how.root ? '/root' : identity.home;
      if (this.epoch !== undefined) env.SOURCE_DATE_EPOCH = String(this.epoch);
      const process: ProcessSpec = { argv: how.argv, env, cwd: how.cwd ?? '/', root: how.root, identity, tty: false };
      const pipes: Promise<void>[] = [];
      const runtime = new NamespaceRuntime({
        stdio: ['ignore', 'pipe', 'pipe'],
        onSpawn: (run) => {
          pipes.push(log.pipe(run.child.stdout), log.pipe(run.child.stderr));
          // A terminal's Ctrl-C reaches the helper with us (same process group), but an interrupt may come
          // from elsewhere (kill -INT of envy alone, a supervisor): hand it to the step explicitly too.
          const signal = this.options.signal;
          if (!signal) return;
          const interrupt = (): void => void run.child.kill('SIGINT');
          if (signal.aborted) interrupt();
          else {
            signal.addEventListener('abort', interrupt, { once: true });
            run.child.once('close', () => signal.removeEventListener('abort', interrupt));
          }
        },
        warn: (line) => log.line(line.trimEnd()),
      });
      mark('  runOnce start');
      const code = await runtime.runOnce(config, process);
      await Promise.all(pipes);
      mark('  runOnce done');
      if (code !== 0) {
        const command = step.kind === 'run' ? step.run : how.argv.join(' ');
        throw new EnvyError('BUILD', `step "${step.label}" failed with exit code ${code}`, {
          details: [`command: ${command}`, ...log.tail.map((l) => `| ${l}`), `log: ${log.path}`],
          hint: step.kind === 'run' ? 'fix the command in env.yaml (setup), then run envy up again: finished steps stay cached' : `see ${log.path}`,
        });
      }
      if (step.kind === 'packages') this.collectVersions(step, log.tail);
      if (step.kind === 'kernel' && !step.file) {
        const marker = log.tail.find((l) => l.startsWith(KERNEL_MARKER));
        const [name, version] = marker?.slice(KERNEL_MARKER.length).split('\t') ?? [];
        if (!name || !version) throw new EnvyError('BUILD', `step "${step.label}" did not say which kernel it unpacked`, { details: [`log: ${log.path}`] });
        this.resolved.kernel = { package: name, version };
      }
      const layer = await this.commitScratch(scratch, step.label, [work]);
      return this.derive(step, parent, [layer], {});
    } finally {
      // Only a failed step leaves its scratch: a committed one was renamed into the store or removed.
      if (existsSync(scratch)) {
        // The build's worker may be gone (a Ctrl-C reaches its process group too): then a worker of its own.
        await this.layerJobs()
          .then((jobs) => jobs.remove([scratch]))
          .catch(() => removeInUserNamespace(identity, [scratch]))
          .catch(() => rmSync(scratch, { recursive: true, force: true }));
      }
    }
  }

  private packagesScript(step: PackagesStep): string {
    const requests = step.packages.map((p) => shellQuote(pinnedRequest(step.manager, p, step.pinned[packageName(step.manager, p) ?? p])));
    const names = step.packages.map((p) => shellQuote(packageName(step.manager, p) ?? p));
    const marker = (manager: string): string => `printf '${VERSION_MARKER.replace('\t', '\\t')}${manager}\\t%s\\t%s\\n'`;
    switch (step.manager) {
      case 'apt':
        return [
          'set -e',
          'export DEBIAN_FRONTEND=noninteractive',
          // No package descriptions (Translation-en): 6.5 MB to fetch and 34 MB in every packages layer, unused.
          'apt-get update -o Dpkg::Use-Pty=0 -o Acquire::Languages=none',
          // dpkg fsyncs every file it unpacks (git alone: ~5 s here); a build step needs none of that
          // durability: a crash mid-step discards the step, and a committed layer is as durable as the
          // store makes any layer (docs/images.md, crash safety). Container images ship the same setting.
          `apt-get install -y --no-install-recommends -o Dpkg::Use-Pty=0 -o Dpkg::Options::=--force-unsafe-io ${requests.join(' ')}`,
          `dpkg-query -W -f '\${Package} \${Version}\\n' ${names.map((n) => n.replace(/:[a-z0-9-]+'$/, "'")).join(' ')} | while read -r name version; do ${marker('apt')} "$name" "$version"; done`,
          // Volatile files differ on every run; they would make an otherwise identical layer differ.
          'rm -f /var/log/dpkg.log /var/log/alternatives.log /var/cache/ldconfig/aux-cache /var/cache/apt/*.bin; rm -rf /var/log/apt',
        ].join('\n');
      case 'npm':
        return [
          'set -e',
          `npm install -g --no-fund --no-audit --no-update-notifier ${requests.join(' ')}`,
          `for name in ${names.join(' ')}; do version=$(npm ls -g --depth=0 --json "$name" | sed -n 's/.*"version": *"\\([^"]*\\)".*/\\1/p' | tail -n1); ${marker('npm')} "$name" "$version"; done`,
          'rm -rf /root/.npm/_logs /root/.npm/_cacache',
        ].join('\n');
      case 'pip':
        return [
          'set -e',
          `pip install --no-cache-dir --break-system-packages --root-user-action=ignore ${requests.join(' ')} 2>&1 || pip install --no-cache-dir ${requests.join(' ')}`,
          `for name in ${names.join(' ')}; do version=$(pip show "\${name%%[*}" 2>/dev/null | sed -n 's/^Version: //p'); ${marker('pip')} "$name" "$version"; done`,
        ].join('\n');
    }
  }

  private collectVersions(step: PackagesStep, lines: string[]): void {
    // The markers are the last lines the script prints; the tail always holds them for any sane package count.
    for (const line of lines) {
      if (!line.startsWith(VERSION_MARKER)) continue;
      const [, manager, name, version] = line.split('\t');
      if (manager === step.manager && name && version) this.resolved.packages[step.manager][name] = version;
    }
  }
}

/** The OCI platform of an architecture envy builds for. */
export function platformOf(arch: Arch): Platform {
  return hostPlatform(arch === 'aarch64' ? 'arm64' : 'x64');
}

/**
 * A single-platform image (no index to choose from) must still be of the plan's architecture: an amd64
 * image under an arm64 VM kernel would build, then fail to boot.
 */
export function checkPlatform(found: Platform | undefined, wanted: Platform, what: string): Platform {
  if (found === undefined) return wanted;
  if (found.architecture !== wanted.architecture) {
    throw new EnvyError('IMAGE', `base image ${what} is for ${found.os}/${found.architecture}, but this env builds for ${wanted.os}/${wanted.architecture}`, {
      hint: 'use an image (or a multi-platform index) for that architecture, or change backend.arch',
    });
  }
  return found;
}

function binfmtConfig(emulation: Emulation | undefined): { binfmt?: string } {
  return emulation?.via === 'userns' ? { binfmt: emulation.register } : {};
}

export function envFromList(list: string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const entry of list) {
    const eq = entry.indexOf('=');
    if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  return env;
}

export function mergeEnv(list: string[], extra: Record<string, string>): string[] {
  const env = { ...envFromList(list), ...extra };
  return Object.entries(env).map(([k, v]) => `${k}=${v}`);
}

function filesScript(step: FilesStep): string {
  const lines = ['set -e'];
  for (const copy of step.copies) {
    const src = shellQuote(`/.envy-src/${copy.src}`);
    const dest = shellQuote(copy.dest);
    lines.push(`mkdir -p "$(dirname ${dest})"`, `rm -rf ${dest}`, `cp -a ${src} ${dest}`, `chown -R 0:0 ${dest}`);
    if (copy.mode) lines.push(`chmod ${shellQuote(copy.mode)} ${dest}`);
  }
  return lines.join('\n');
}

function userScript(step: UserStep): string {
  const { name, uid, gid, home, shell } = step;
  // Written directly, not with useradd: minimal bases (busybox, host) have no shadow-utils, and a fixed
  // last-change day keeps /etc/shadow identical between builds.
  return [
    'set -e',
    `grep -q '^${name}:' /etc/group || grep -q '^[^:]*:[^:]*:${gid}:' /etc/group || echo '${name}:x:${gid}:' >> /etc/group`,
    `grep -q '^${name}:' /etc/passwd || echo '${name}:x:${uid}:${gid}:${name}:${home}:${shell}' >> /etc/passwd`,
    `if [ -f /etc/shadow ] && ! grep -q '^${name}:' /etc/shadow; then echo '${name}:!:19000:0:99999:7:::' >> /etc/shadow; fi`,
    `mkdir -p '${home}'`,
    `chown ${uid}:${gid} '${home}'`,
  ].join('\n');
}
