/**
 * `base: {debian: SUITE}`: a minbase root filesystem bootstrapped from Debian's
 * mirror by mmdebstrap in unshare mode (rootless, the well-kept tool for this).
 * The result is a tarball, so it enters the layer store exactly like a pulled
 * layer: same unpacking, same diff_id, and with SOURCE_DATE_EPOCH and a snapshot
 * the same bytes on every machine.
 */
import { EnvyError } from '../errors.js';
import { runStreaming } from '../exec.js';
import type { Emulation } from '../runtime/emulation.js';

export const DEFAULT_MIRROR = 'http://deb.debian.org/debian';
const SNAPSHOT_ARCHIVE = 'http://snapshot.debian.org/archive';

/** Suites without -updates and -security pockets. */
const ROLLING_SUITES = new Set(['sid', 'unstable', 'experimental', 'rc-buggy']);

export interface DebianBase {
  suite: string;
  /** snapshot.debian.org timestamp, e.g. 20240601T000000Z. */
  snapshot?: string;
  mirror?: string;
}

export interface BootstrapOptions {
  /** Debian architecture (amd64, arm64); default: the host's. */
  arch?: string;
  /** Seconds since the epoch; clamps mtimes for reproducible output. */
  sourceDateEpoch?: number;
  onLine?: (line: string) => void;
  signal?: AbortSignal;
  /**
   * `arch` is not the host's: its maintainer scripts run under qemu-user (runtime/emulation.ts), and
   * `keepId` is the build's keep-id map (uid:gid), whose owner the finished tarball gets. mmdebstrap's
   * work dir goes under `tmpDir` (in the store: what a killed bootstrap leaves, owned by subordinate
   * ids, is swept through the user namespace, which /tmp would keep for good).
   */
  foreign?: { emulation: Emulation; keepId: string; tmpDir: string };
}

/** The apt sources for a base, one `deb ...` line each (mmdebstrap writes them into the image too). */
export function sourcesFor(base: DebianBase): string[] {
  if (base.snapshot !== undefined && !/^\d{8}T\d{6}Z$/.test(base.snapshot)) {
    throw new EnvyError('CONFIG_INVALID', `base.snapshot "${base.snapshot}" is not a snapshot.debian.org timestamp`, {
      hint: 'use the form 20240601T000000Z',
    });
  }
  const main = base.snapshot ? `${SNAPSHOT_ARCHIVE}/debian/${base.snapshot}/` : (base.mirror ?? DEFAULT_MIRROR);
  const lines = [`deb ${main} ${base.suite} main`];
  if (!ROLLING_SUITES.has(base.suite)) {
    lines.push(`deb ${main} ${base.suite}-updates main`);
    const security = base.snapshot
      ? `${SNAPSHOT_ARCHIVE}/debian-security/${base.snapshot}/`
      : base.mirror
        ? base.mirror.replace(/\/debian\/?$/, '/debian-security')
        : 'http://deb.debian.org/debian-security';
    lines.push(`deb ${security} ${base.suite}-security main`);
  }
  return lines;
}

export function debianArch(nodeArch: string = process.arch): string {
  const map: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'armhf', ia32: 'i386', ppc64: 'ppc64el', s390x: 's390x', riscv64: 'riscv64' };
  const arch = map[nodeArch];
  if (!arch) throw new EnvyError('HOST', `no Debian architecture for ${nodeArch}`);
  return arch;
}

export function mmdebstrapArgs(base: DebianBase, output: string, options: BootstrapOptions = {}): string[] {
  // A foreign architecture bootstraps as root inside envy's user namespace (see bootstrapForeign).
  const mode = options.foreign ? 'root' : 'unshare';
  const args = [`--mode=${mode}`, '--variant=minbase', `--architectures=${options.arch ?? debianArch()}`, '--format=tar'];
  if (options.foreign) {
    args.push(
      // envy checked the emulation itself (emulationFor); mmdebstrap's own check needs arch-test installed.
      '--skip=check/qemu',
      // Under qemu-user every fsync and every maintainer script is dear. dpkg's fsyncs buy nothing here (a
      // failed bootstrap is thrown away), and the option is removed from the image at the end.
      '--dpkgopt=force-unsafe-io',
      '--customize-hook=rm -f "$1/etc/dpkg/dpkg.cfg.d/99mmdebstrap"',
      // /usr merged up front (mmdebstrap's merged-usr hook, usr-is-merged) instead of by usrmerge's
      // conversion script, which would pull perl into the image and run under emulation.
      '--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr',
    );
  }
  if (base.snapshot) {
    // Snapshot Release files are past their Valid-Until by design.
    args.push('--aptopt=Acquire::Check-Valid-Until "false"');
  }
  // Keep the image small and its apt usable: no recommends by default, lists kept for later installs.
  args.push('--aptopt=APT::Install-Recommends "false"', '--skip=cleanup/apt/lists');
  return [...args, base.suite, output, ...sourcesFor(base)];
}

/** Bootstrap `base` into the tarball `output` (uncompressed). */
export async function bootstrapDebian(base: DebianBase, output: string, options: BootstrapOptions = {}): Promise<void> {
  const env: Record<string, string> = {};
  if (options.sourceDateEpoch !== undefined) env.SOURCE_DATE_EPOCH = String(options.sourceDateEpoch);
  if (options.foreign) return bootstrapForeign(base, output, options, options.foreign, env);
  await runStreaming('mmdebstrap', mmdebstrapArgs(base, output, options), {
    env,
    onLine: options.onLine,
    cancelSignal: options.signal,
    errorCode: 'BUILD',
    hint: 'mmdebstrap needs network to the Debian mirror and subordinate ids (envy doctor checks both)',
  });
}

/**
 * Another architecture's base. mmdebstrap's unshare mode makes a user namespace of its own, a child of
 * the host's, where envy's binfmt_misc registration is not seen; and chrootless mode fails on bookworm's
 * usrmerge. So mmdebstrap runs in root mode inside envy-ns's user namespace (full subordinate map, a
 * mount namespace of its own, qemu-user registered there), which mmdebstrap supports ("root mode inside
 * an unshared user namespace"). Files in the tarball get the owners of that namespace, as in unshare
 * mode; the tarball itself is handed to the keep-id (the host user) so the store can take it.
 */
async function bootstrapForeign(base: DebianBase, output: string, options: BootstrapOptions, foreign: NonNullable<BootstrapOptions['foreign']>, env: Record<string, string>): Promise<void> {
  // Loaded here: plan/ renders Dockerfiles from this module's sources and needs none of the runtime.
  const [{ binfmtArgs }, { ensureHelper }] = await Promise.all([import('../runtime/emulation.js'), import('../runtime/namespace/helper.js')]);
  const script = 'mmdebstrap "$@" && chown "$ENVY_KEEP_ID" "$ENVY_OUTPUT"';
  const args = ['userns', '--keep-id', foreign.keepId, ...binfmtArgs(foreign.emulation), '--', '/bin/sh', '-c', script, 'mmdebstrap', ...mmdebstrapArgs(base, output, options)];
  await runStreaming(ensureHelper(), args, {
    env: { ...env, ENVY_KEEP_ID: foreign.keepId, ENVY_OUTPUT: output, TMPDIR: foreign.tmpDir },
    onLine: options.onLine,
    cancelSignal: options.signal,
    errorCode: 'BUILD',
    hint: `bootstrapping ${options.arch ?? 'a foreign architecture'} under qemu-user (${foreign.emulation.interpreter}) failed: see the lines above`,
  });
}
