/**
 * Host checks behind `envy doctor`. Each check probes the real thing (a user
 * namespace, an overlay mount inside one) rather than guessing from versions,
 * and says exactly how to fix what it finds.
 */
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, statSync, statfsSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { tryRun } from '../exec.js';
import { packageRoot } from '../package-root.js';
import { detectCgroupDelegation, rlimitFallback } from '../runtime/namespace/limits.js';
import { emulationFor } from '../runtime/emulation.js';
import { EnvyError } from '../errors.js';
import { stateDir } from '../state/paths.js';

export type Severity = 'required' | 'recommended' | 'optional';

export interface CheckResult {
  id: string;
  title: string;
  /** Whether the check failed matters: required breaks `envy up`; optional only limits a feature. */
  severity: Severity;
  ok: boolean;
  detail: string;
  /** Exact command(s) that fix it. */
  fix?: string;
  /** Debian/Ubuntu package that provides what is missing. */
  aptPackage?: string;
}

export function findInPath(program: string, path = process.env.PATH ?? ''): string | undefined {
  for (const dir of path.split(delimiter).concat(['/usr/sbin', '/sbin'])) {
    if (!dir) continue;
    const candidate = join(dir, program);
    try {
      accessSync(candidate, constants.X_OK);
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

function readProc(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** Parse /etc/subuid-style content and return the first range for the user (by name or uid). */
export function subordinateRange(content: string, user: string, uid: number): { start: number; count: number } | undefined {
  for (const line of content.split('\n')) {
    const [owner, start, count] = line.trim().split(':');
    if ((owner === user || owner === String(uid)) && start && count) {
      const range = { start: Number(start), count: Number(count) };
      if (Number.isInteger(range.start) && Number.isInteger(range.count) && range.count > 0) return range;
    }
  }
  return undefined;
}

function userNamespaceRestriction(): { detail: string; fix: string } | undefined {
  if (readProc('/proc/sys/kernel/unprivileged_userns_clone') === '0') {
    return {
      detail: 'kernel.unprivileged_userns_clone is 0: unprivileged user namespaces are disabled',
      fix: "sudo sysctl -w kernel.unprivileged_userns_clone=1 && echo 'kernel.unprivileged_userns_clone=1' | sudo tee /etc/sysctl.d/90-envy-userns.conf",
    };
  }
  if (readProc('/proc/sys/user/max_user_namespaces') === '0') {
    return {
      detail: 'user.max_user_namespaces is 0',
      fix: "sudo sysctl -w user.max_user_namespaces=28633 && echo 'user.max_user_namespaces=28633' | sudo tee /etc/sysctl.d/90-envy-userns.conf",
    };
  }
  if (readProc('/proc/sys/kernel/apparmor_restrict_unprivileged_userns') === '1') {
    return {
      detail: 'AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1, Ubuntu 23.10+)',
      fix:
        "printf 'abi <abi/4.0>,\\ninclude <tunables/global>\\nprofile envy %s flags=(unconfined) {\\n  userns,\\n}\\n' \"$(command -v node)\" | sudo tee /etc/apparmor.d/envy && sudo apparmor_parser -r /etc/apparmor.d/envy",
    };
  }
  return undefined;
}

async function checkUserNamespaces(): Promise<CheckResult> {
  const base = { id: 'userns', title: 'user namespaces', severity: 'required' as const };
  const restriction = userNamespaceRestriction();
  const unshare = findInPath('unshare');
  if (!unshare) return { ...base, ok: false, detail: restriction?.detail ?? 'cannot probe: unshare (util-linux) is missing', fix: restriction?.fix ?? 'sudo apt-get install -y util-linux', aptPackage: restriction ? undefined : 'util-linux' };
  const probe = await tryRun(unshare, ['--user', '--map-root-user', '--mount', '--pid', '--fork', 'true'], { timeout: 5000 });
  if (probe) return { ...base, ok: true, detail: 'unprivileged user, mount and pid namespaces work' };
  return { ...base, ok: false, detail: restriction?.detail ?? 'unshare --user failed: the kernel refuses unprivileged user namespaces', fix: restriction?.fix ?? 'enable CONFIG_USER_NS and unprivileged user namespaces in the kernel' };
}

function checkSubordinateIds(): CheckResult[] {
  const { username, uid } = userInfo();
  const results: CheckResult[] = [];
  for (const [file, kind] of [['/etc/subuid', 'uids'], ['/etc/subgid', 'gids']] as const) {
    const content = readProc(file) ?? '';
    const range = subordinateRange(content, username, uid);
    results.push({
      id: `sub${kind}`,
      title: `subordinate ${kind}`,
      severity: 'recommended',
      ok: range !== undefined && range.count >= 65536,
      detail: range
        ? `${username} has ${range.count} ${kind} from ${range.start} in ${file}${range.count < 65536 ? ' (fewer than 65536: some packages will fail to install)' : ''}`
        : `no ${file} entry for ${username}: envy falls back to a single-uid map, and packages that chown files fail`,
      fix: `sudo usermod --add-sub${kind.slice(0, 3)}s 100000-165535 ${username}`,
    });
  }
  return results;
}

function checkIdMappers(): CheckResult {
  const missing = ['newuidmap', 'newgidmap'].filter((p) => !findInPath(p));
  const base = { id: 'idmap', title: 'newuidmap/newgidmap', severity: 'recommended' as const };
  if (missing.length > 0) return { ...base, ok: false, detail: `${missing.join(' and ')} missing: only a single-uid map is possible`, fix: 'sudo apt-get install -y uidmap', aptPackage: 'uidmap' };
  const path = findInPath('newuidmap')!;
  const setuid = (statSync(path).mode & 0o4000) !== 0;
  return { ...base, ok: true, detail: `${path}${setuid ? ' (setuid root)' : ' (file capabilities)'}` };
}

async function checkOverlay(): Promise<CheckResult> {
  const base = { id: 'overlay', title: 'overlayfs in a user namespace', severity: 'recommended' as const };
  const unshare = findInPath('unshare');
  if (!unshare) return { ...base, ok: false, detail: 'cannot probe without unshare', fix: 'sudo apt-get install -y util-linux' };
  const dir = mkdtempSync(join(tmpdir(), 'envy-doctor-'));
  try {
    const script = 'mkdir l u w m && mount -t overlay overlay -o lowerdir=l,upperdir=u,workdir=w,userxattr m && touch m/probe && umount m';
    const probe = await tryRun(unshare, ['--user', '--map-root-user', '--mount', 'sh', '-c', script], { cwd: dir, timeout: 5000 });
    if (probe) return { ...base, ok: true, detail: 'kernel overlayfs mounts inside a user namespace (userxattr)' };
    const fuse = findInPath('fuse-overlayfs');
    return {
      ...base,
      ok: false,
      detail: fuse ? 'kernel overlayfs is refused in a user namespace; envy uses fuse-overlayfs (slower)' : 'kernel overlayfs is refused in a user namespace and fuse-overlayfs is missing: envy copies layers (slow, uses disk)',
      fix: fuse ? 'use a kernel >= 5.11 for native rootless overlayfs' : 'sudo apt-get install -y fuse-overlayfs',
      aptPackage: fuse ? undefined : 'fuse-overlayfs',
    };
  } finally {
    await tryRun('sh', ['-c', `chmod -R u+rwx '${dir}'; rm -rf '${dir}'`]);
  }
}

function checkFuseOverlay(): CheckResult {
  const base = { id: 'fuse-overlayfs', title: 'fuse-overlayfs (fallback)', severity: 'optional' as const };
  const path = findInPath('fuse-overlayfs');
  if (!path) return { ...base, ok: false, detail: 'not installed; only needed where kernel overlayfs is refused', fix: 'sudo apt-get install -y fuse-overlayfs', aptPackage: 'fuse-overlayfs' };
  try {
    accessSync('/dev/fuse', constants.R_OK | constants.W_OK);
    return { ...base, ok: true, detail: `${path}, /dev/fuse usable` };
  } catch {
    return { ...base, ok: false, detail: `${path} present but /dev/fuse is not usable by this user`, fix: 'sudo chmod 0666 /dev/fuse' };
  }
}

function checkHelper(): CheckResult {
  const base = { id: 'helper', title: 'envy-ns helper', severity: 'required' as const };
  const path = process.env.ENVY_NS_HELPER ?? join(packageRoot(), 'dist', 'envy-ns');
  try {
    accessSync(path, constants.X_OK);
    return { ...base, ok: true, detail: path };
  } catch {
    const compiler = findInPath(process.env.CC ?? 'cc');
    const rebuild = `(cd ${packageRoot()} && npm run build)`;
    return {
      ...base,
      ok: false,
      detail: `${path} is missing (it is compiled from native/envy-ns.c when envy is installed${compiler ? '' : '; no C compiler was found'})`,
      fix: compiler ? rebuild : `sudo apt-get install -y gcc libc6-dev && ${rebuild}`,
      aptPackage: compiler ? undefined : 'gcc',
    };
  }
}

/**
 * The guest agent for the architecture that is not the host's (arm64 guests on an x86_64 laptop): it
 * needs Debian's cross compiler, which a plain `npm ci` may not find. The host's own is the VM init check's.
 */
function checkCrossAgent(): CheckResult {
  const arch = process.arch === 'arm64' ? 'x86_64' : 'aarch64';
  const base = { id: 'agent-cross', title: `VM guest agent for ${arch} guests`, severity: 'optional' as const };
  const path = join(packageRoot(), 'dist', `envy-agent-${arch}`);
  if (existsSync(path)) return { ...base, ok: true, detail: path };
  const aptPackage = arch === 'aarch64' ? 'gcc-aarch64-linux-gnu libc6-dev-arm64-cross' : 'gcc-x86-64-linux-gnu libc6-dev-amd64-cross';
  return {
    ...base,
    ok: false,
    detail: `${path} is missing: \`backend: vm\` guests of that architecture cannot run commands (the build cross-compiles native/envy-agent.c when it can)`,
    fix: `sudo apt-get install -y ${aptPackage} && (cd ${packageRoot()} && npm run build)`,
    aptPackage,
  };
}

function checkProgram(id: string, title: string, program: string, aptPackage: string, severity: Severity, purpose: string): CheckResult {
  const path = findInPath(program);
  return path
    ? { id, title, severity, ok: true, detail: path }
    : { id, title, severity, ok: false, detail: `${program} not found: ${purpose}`, fix: `sudo apt-get install -y ${aptPackage}`, aptPackage };
}

/** The static guest init (and agent) `npm run build` compiled for the host's architecture. */
function checkVmInit(): CheckResult {
  const arch = process.arch === 'arm64' ? 'aarch64' : 'x86_64';
  const base = { id: 'vm-init', title: `VM guest init and agent (${arch})`, severity: 'optional' as const };
  const missing = [`envy-init-${arch}`, `envy-agent-${arch}`].filter((name) => !existsSync(join(packageRoot(), 'dist', name)));
  if (missing.length === 0) return { ...base, ok: true, detail: `dist/envy-init-${arch}, dist/envy-agent-${arch}` };
  return { ...base, ok: false, detail: `${missing.join(', ')} not built: backend: vm cannot boot (or has no agent)`, fix: 'sudo apt-get install -y gcc libc6-dev && npm run build', aptPackage: 'libc6-dev' };
}

function checkKvm(): CheckResult {
  const base = { id: 'kvm', title: 'KVM for the VM backend', severity: 'optional' as const };
  if (!existsSync('/dev/kvm')) return { ...base, ok: false, detail: 'no /dev/kvm: VMs run under TCG emulation (slow)', fix: 'enable virtualisation in the firmware and load kvm_intel or kvm_amd' };
  if (existsSync('/sys/module/kvm_pvm')) return { ...base, ok: false, detail: '/dev/kvm is kvm_pvm, a software virtualiser that cannot boot stock kernels: VMs use TCG' };
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return { ...base, ok: true, detail: '/dev/kvm is usable' };
  } catch {
    return { ...base, ok: false, detail: '/dev/kvm exists but this user cannot open it: VMs use TCG', fix: `sudo usermod -aG kvm ${userInfo().username} (then log in again)` };
  }
}

function checkExecAddon(): CheckResult {
  const base = { id: 'exec-addon', title: 'envy-node addon (fast exec)', severity: 'optional' as const };
  const helper = process.env.ENVY_NS_HELPER ?? join(packageRoot(), 'dist', 'envy-ns');
  const path = join(dirname(helper), 'envy-node.node');
  if (existsSync(path)) return { ...base, ok: true, detail: `${path}: envy exec becomes the helper instead of spawning it` };
  return {
    ...base,
    ok: false,
    detail: `${path} is missing (built from native/envy-node.c only where Node's headers were found): envy exec spawns the helper, ~10 ms slower`,
    fix: `install Node's headers (official Node builds and Debian's nodejs ship include/node/node_api.h), then (cd ${packageRoot()} && npm run build)`,
  };
}

/**
 * Building an image of the other architecture (an arm64 VM's on x86_64): its build steps run under
 * qemu-user. The registration envy would make is made for real in a throwaway user namespace.
 */
async function checkForeignBuild(): Promise<CheckResult> {
  const arch = process.arch === 'arm64' ? 'x86_64' : 'aarch64';
  const base = { id: 'foreign-build', title: `building ${arch} images (qemu-user)`, severity: 'optional' as const };
  let emulation;
  try {
    emulation = emulationFor(arch);
  } catch (error) {
    if (!(error instanceof EnvyError)) throw error;
    return { ...base, ok: false, detail: error.message, fix: error.hint, ...(error.message.includes('not installed') ? { aptPackage: 'qemu-user-static' } : {}) };
  }
  if (!emulation) return { ...base, ok: true, detail: 'native' };
  if (emulation.via === 'host') return { ...base, ok: true, detail: `the host's binfmt_misc handler (${emulation.interpreter}, F flag)` };
  const helper = process.env.ENVY_NS_HELPER ?? join(packageRoot(), 'dist', 'envy-ns');
  const name = emulation.register.split(':')[1];
  const probe = await tryRun(helper, ['userns', '--binfmt', emulation.register, '--', 'cat', `/proc/sys/fs/binfmt_misc/${name}`], { timeout: 5000 });
  if (probe && /^enabled$/m.test(String(probe.stdout))) return { ...base, ok: true, detail: `${emulation.interpreter}, registered in the build's own user namespace` };
  return { ...base, ok: false, detail: `registering ${emulation.interpreter} in a user namespace failed`, fix: 'sudo apt-get install -y binfmt-support (a host-wide registration with the F flag)' };
}

function checkCgroups(): CheckResult {
  const base = { id: 'cgroups', title: 'resource limits', severity: 'optional' as const };
  // The runtime's own detection, so doctor says exactly what `resources` will get.
  const support = detectCgroupDelegation();
  if (support.kind === 'delegated') return { ...base, ok: true, detail: `cgroup v2 delegated (${support.dir}): memory, pids and cpus limits apply` };
  return {
    ...base,
    ok: false,
    detail: `${support.reason}: resources fall back to rlimits: ${rlimitFallback({ memory: 1, pids: 1, cpus: 1 })}`,
    fix: existsSync('/sys/fs/cgroup/cgroup.controllers')
      ? 'run envy in a cgroup v2 group of your own with the memory and pids controllers enabled for its children (cgroup.subtree_control)'
      : 'boot with systemd.unified_cgroup_hierarchy=1 and a systemd user session, then run envy in a delegated group',
  };
}

function nearestExisting(path: string): string {
  while (!existsSync(path)) path = dirname(path);
  return path;
}

function checkDisk(): CheckResult {
  const base = { id: 'disk', title: 'free disk for the store', severity: 'required' as const };
  const dir = nearestExisting(stateDir());
  const stats = statfsSync(dir);
  const free = Number(stats.bavail) * Number(stats.bsize);
  const gib = (free / 2 ** 30).toFixed(1);
  if (free < 2 ** 30) return { ...base, ok: false, detail: `${gib} GiB free at ${dir}: a Debian base alone needs ~200 MB plus packages`, fix: 'free space, or set ENVY_HOME to a larger disk' };
  return { ...base, ok: true, detail: `${gib} GiB free at ${dir}` };
}

export async function runChecks(): Promise<CheckResult[]> {
  const [userns, overlay, foreign] = await Promise.all([checkUserNamespaces(), checkOverlay(), checkForeignBuild()]);
  return [
    userns,
    ...checkSubordinateIds(),
    checkIdMappers(),
    overlay,
    checkFuseOverlay(),
    checkHelper(),
    checkExecAddon(),
    checkProgram('mmdebstrap', 'mmdebstrap (debian bases)', 'mmdebstrap', 'mmdebstrap', 'recommended', 'needed for `base: {debian: ...}`'),
    checkProgram('zstd', 'zstd (zstd image layers)', 'zstd', 'zstd', 'optional', 'needed to pull zstd-compressed image layers'),
    checkProgram('qemu-x86_64', 'qemu x86_64 (VM backend)', 'qemu-system-x86_64', 'qemu-system-x86', 'optional', 'needed for `backend: vm`'),
    checkProgram('qemu-aarch64', 'qemu aarch64 (arm64 VMs)', 'qemu-system-aarch64', 'qemu-system-arm', 'optional', 'needed for `backend: {type: vm, arch: aarch64}`'),
    checkProgram('qemu-img', 'qemu-img (VM disks)', 'qemu-img', 'qemu-utils', 'optional', 'needed for `backend: vm`'),
    checkProgram('mke2fs', 'mke2fs (VM root disks)', 'mke2fs', 'e2fsprogs', 'optional', 'needed for `backend: vm` (the image becomes an ext4 disk)'),
    checkProgram('xz', 'xz (VM kernels)', 'xz', 'xz-utils', 'optional', 'needed for `backend: vm` (the kernel is unpacked once per image)'),
    checkVmInit(),
    checkProgram('ssh-keygen', 'ssh-keygen (envy ssh-config)', 'ssh-keygen', 'openssh-client', 'optional', 'needed to make the keys of `envy ssh-config` / `envy attach`'),
    checkKvm(),
    checkCrossAgent(),
    foreign,
    checkCgroups(),
    checkDisk(),
  ];
}
