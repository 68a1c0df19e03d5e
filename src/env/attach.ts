/**
 * Editors attaching over SSH without a port or a host daemon: `envy ssh-config` prints an OpenSSH
 * Host entry whose ProxyCommand is `envy attach --stdio`, which runs the environment's own sshd in
 * inetd mode (`sshd -i`) as the environment user, over the ProxyCommand's stdin/stdout.
 *
 * sshd runs unprivileged inside the user namespace: as a non-root user it needs no privilege
 * separation user or chroot dir, and can authenticate exactly one user (itself), by key. Its host key,
 * config and authorized_keys live in the environment's state (`inside/`, bind-mounted read-only at
 * ENVY_DIR_INSIDE), so the host key survives restarts and the known_hosts entry envy writes stays valid.
 * The client half (envy's identity key and that known_hosts file) lives in `ssh-client/`, which the
 * environment never sees.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { EnvyError } from '../errors.js';
import { environmentPaths } from '../state/environments.js';
import { writeFileAtomic } from '../state/atomic.js';
import { acquireLock } from '../state/lock.js';

/** Where the environment sees its `inside/` state dir (read-only): sshd's files and profile.sh. */
export const ENVY_DIR_INSIDE = '/run/envy';
const HOST_KEY = 'ssh_host_ed25519_key';
const CLIENT_KEY = 'id_ed25519';

/** Where sshd is looked for inside, in order (Debian, Fedora/Alpine with /usr/local builds last). */
const SSHD_CANDIDATES = ['/usr/sbin/sshd', '/sbin/sshd', '/usr/local/sbin/sshd', '/usr/bin/sshd'];

/** Variables sshd sets itself for the session; overriding them from the image would lie. */
const SESSION_OWNED = new Set(['HOME', 'USER', 'LOGNAME', 'TERM', 'MAIL', 'SSH_AUTH_SOCK', 'DISPLAY']);

export interface AttachPaths {
  /** Host side of ENVY_DIR_INSIDE: host key, sshd_config, authorized_keys, the session and profile scripts. */
  server: string;
  /** envy's client identity and the known_hosts file for this environment's host key. */
  client: string;
  hostKey: string;
  clientKey: string;
  knownHosts: string;
  lock: string;
}

export function attachPaths(id: string): AttachPaths {
  const paths = environmentPaths(id);
  const server = join(paths.root, 'inside');
  const client = join(paths.root, 'ssh-client');
  return {
    server,
    client,
    hostKey: join(server, HOST_KEY),
    clientKey: join(client, CLIENT_KEY),
    knownHosts: join(client, 'known_hosts'),
    lock: join(paths.root, 'ssh.lock'),
  };
}

/** The host alias the entry is known by in known_hosts: the environment id, unique per project. */
export function hostKeyAlias(id: string): string {
  return `envy-${id}`;
}

/**
 * Make the host key and the client key once per environment (kept across down/up; `down --rm` forgets
 * them with the rest), and the known_hosts line that pins the host key. Several ProxyCommands may start
 * at once (editors open parallel connections): a lock makes one of them generate.
 */
export async function ensureKeys(id: string): Promise<AttachPaths> {
  const paths = attachPaths(id);
  if (existsSync(paths.hostKey) && existsSync(paths.clientKey) && existsSync(paths.knownHosts)) return paths;
  mkdirSync(paths.server, { recursive: true, mode: 0o700 });
  mkdirSync(paths.client, { recursive: true, mode: 0o700 });
  const lock = await acquireLock(paths.lock, { purpose: `ssh keys of ${id}` });
  try {
    const { run } = await import('../exec.js');
    const hint = 'envy needs ssh-keygen on the host (apt-get install openssh-client)';
    for (const [file, comment] of [
      [paths.hostKey, `envy host key of ${id}`],
      [paths.clientKey, `envy client key for ${id}`],
    ] as const) {
      if (existsSync(file)) continue;
      // Generate next to the target and rename both halves, public last: a crash leaves no half pair
      // that a later run would trust.
      const temp = `${file}.${process.pid}.tmp`;
      rmSync(temp, { force: true });
      rmSync(`${temp}.pub`, { force: true });
      await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', temp], { errorCode: 'HOST', hint });
      renameSync(`${temp}.pub`, `${file}.pub`);
      renameSync(temp, file);
    }
    const hostPublic = readFileSync(`${paths.hostKey}.pub`, 'utf8').trim().split(/\s+/).slice(0, 2).join(' ');
    writeFileAtomic(paths.knownHosts, `${hostKeyAlias(id)} ${hostPublic}\n`, 0o600);
  } finally {
    lock.release();
  }
  return paths;
}

/**
 * Sourced by login shells from /etc/profile.d (bind-mounted there read-only). /etc/profile resets PATH
 * and PS1, which would drop env.yaml's PATH (toolchains) and the environment's name from the prompt.
 * Debian's bash.bashrc and skeleton .bashrc put `($debian_chroot)` in front of their prompt, so bash
 * shows the name through that variable; other shells get it here.
 */
export const PROFILE_SCRIPT = `# Written by envy: the environment's PATH and a prompt that names it.
if [ -n "\${ENVY_PATH-}" ]; then PATH=$ENVY_PATH; export PATH; fi
if [ -n "\${ENVY_ENV-}" ] && [ -n "\${PS1-}" ]; then
  case "$PS1" in *"($ENVY_ENV)"*|*debian_chroot*) ;; *) PS1="($ENVY_ENV) $PS1" ;; esac
fi
`;

export const PROFILE_INSIDE = '/etc/profile.d/zz-envy.sh';

/** Variables every interactive session gets (envy shell, ssh): see PROFILE_SCRIPT. */
export function shellEnv(envName: string, env: Record<string, string>): Record<string, string> {
  return {
    ENVY_ENV: envName,
    ...(env.PATH ? { ENVY_PATH: env.PATH } : {}),
    debian_chroot: envName,
    PS1: `(${envName}) \\u@\\h:\\w\\$ `,
  };
}

/** Create the state dir the environment sees at ENVY_DIR_INSIDE, with the profile script. */
export function prepareInsideDir(id: string): { dir: string; profile: string } {
  const dir = attachPaths(id).server;
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const profile = join(dir, 'profile.sh');
  writeIfChanged(profile, PROFILE_SCRIPT, 0o644);
  return { dir, profile };
}

export interface SessionSettings {
  /** The environment user (the only one this sshd can log in). */
  user: string;
  /** Environment of processes inside (image env, identity), as `envy exec` gives them. */
  env: Record<string, string>;
  workdir: string;
  shell: string;
  envName: string;
}

/** One sshd_config value, quoted for sshd's argv_split (double quotes, backslash escapes). */
function sshdQuote(value: string): string {
  return `"${value.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

/** sh single-quoting. */
export function shQuote(value: string): string {
  return /^[A-Za-z0-9_./:=@%+-]+$/.test(value) ? value : `'${value.replace(/'/g, `'\\''`)}'`;
}

export function sshdConfig(settings: SessionSettings): string {
  const lines = [
    '# Written by envy attach for `sshd -i` as the environment user; rewritten on every attach.',
    `HostKey ${ENVY_DIR_INSIDE}/${HOST_KEY}`,
    `AuthorizedKeysFile ${ENVY_DIR_INSIDE}/authorized_keys`,
    `AllowUsers ${settings.user}`,
    'AuthenticationMethods publickey',
    'PubkeyAuthentication yes',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    // PAM needs root; the account checks it would do mean nothing for the user sshd itself runs as.
    'UsePAM no',
    // The key files belong to the host user, which is this user inside; nothing else can write them.
    'StrictModes no',
    'PidFile none',
    'UseDNS no',
    'PrintMotd no',
    'PrintLastLog no',
    'PermitUserEnvironment no',
    'AllowTcpForwarding yes',
    'AllowStreamLocalForwarding yes',
    'X11Forwarding no',
    'LogLevel ERROR',
    // internal-sftp needs no sftp-server binary in the image; the session script serves it (below).
    'Subsystem sftp internal-sftp',
    // Every session starts like `envy shell`/`envy exec`: in the workdir, with the environment's variables.
    `ForceCommand /bin/sh ${ENVY_DIR_INSIDE}/session.sh`,
  ];
  const env = { ...settings.env, ...shellEnv(settings.envName, settings.env), SHELL: settings.shell, ENVY_WORKDIR: settings.workdir };
  const pairs = Object.entries(env)
    .filter(([key, value]) => !SESSION_OWNED.has(key) && /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) && !/[\n\r\0]/.test(value))
    .map(([key, value]) => sshdQuote(`${key}=${value}`));
  // sshd takes only the first SetEnv line: every variable goes on that one.
  if (pairs.length > 0) lines.push(`SetEnv ${pairs.join(' ')}`);
  return `${lines.join('\n')}\n`;
}

/**
 * What every session runs (ForceCommand): a login shell, the client's command, or sftp. ForceCommand
 * turns even the internal-sftp subsystem into this script (with SSH_ORIGINAL_COMMAND=internal-sftp),
 * so the script runs the image's sftp-server (openssh-server depends on it on Debian). Editors
 * (VS Code, Gateway) need sftp, so its absence is an error on the client's stderr.
 */
export function sessionScript(settings: SessionSettings): string {
  return [
    '# Written by envy attach: the session of every ssh connection to this environment.',
    `cd ${shQuote(settings.workdir)} 2>/dev/null || cd "$HOME"`,
    'case "$SSH_ORIGINAL_COMMAND" in',
    `  '') exec ${shQuote(settings.shell)} -l ;;`,
    '  internal-sftp|*/sftp-server)',
    '    for p in /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server /usr/libexec/sftp-server /usr/lib/ssh/sftp-server /usr/lib/sftp-server; do',
    '      if [ -x "$p" ]; then exec "$p"; fi',
    '    done',
    "    echo 'envy: no sftp-server in the environment (Debian: add openssh-sftp-server to packages.apt)' >&2",
    '    exit 127 ;;',
    `  *) exec ${shQuote(settings.shell)} -c "$SSH_ORIGINAL_COMMAND" ;;`,
    'esac',
    '',
  ].join('\n');
}

function writeIfChanged(path: string, content: string, mode: number): void {
  try {
    if (readFileSync(path, 'utf8') === content) return;
  } catch {
    // absent: write it
  }
  writeFileAtomic(path, content, mode);
}

/** Write what sshd reads (config, session script, authorized_keys): from the current env.yaml, every attach. */
export function writeServerFiles(id: string, settings: SessionSettings): void {
  const paths = attachPaths(id);
  writeIfChanged(join(paths.server, 'sshd_config'), sshdConfig(settings), 0o600);
  writeIfChanged(join(paths.server, 'session.sh'), sessionScript(settings), 0o644);
  writeIfChanged(join(paths.server, 'authorized_keys'), readFileSync(`${paths.clientKey}.pub`, 'utf8'), 0o600);
}

/**
 * sshd's path inside the running environment, looked up through its init's root (/proc/PID/root),
 * or undefined. `inside/` must also be mounted: environments started before attach existed lack it.
 */
export function findSshd(initPid: number): { sshd?: string; mounted: boolean } {
  const root = `/proc/${initPid}/root`;
  const sshd = SSHD_CANDIDATES.find((p) => existsSync(join(root, p)));
  return { ...(sshd ? { sshd } : {}), mounted: existsSync(join(root, ENVY_DIR_INSIDE, 'sshd_config')) };
}

/** The line of env.yaml where packages.apt is (or where it would go), for the missing-sshd error. */
export function aptLocation(specFile: string): string {
  const lines = readFileSync(specFile, 'utf8').split('\n');
  const apt = lines.findIndex((l) => /^\s+apt\s*:/.test(l));
  if (apt >= 0) return `${specFile}:${apt + 1}: packages.apt`;
  const packages = lines.findIndex((l) => /^packages\s*:/.test(l));
  return packages >= 0 ? `${specFile}:${packages + 1}: packages` : specFile;
}

export function missingSshd(specFile: string, hostBase: boolean): EnvyError {
  if (hostBase) {
    return new EnvyError('CONFIG_INVALID', 'envy attach needs sshd, and this environment borrows the host\'s /usr, which has none', {
      hint: 'install openssh-server on the host (apt-get install openssh-server), or use an image base with openssh-server in packages.apt',
    });
  }
  return new EnvyError('CONFIG_INVALID', `${aptLocation(specFile)}: envy attach needs openssh-server inside the environment`, {
    hint: 'add openssh-server to packages.apt in env.yaml and run envy up',
  });
}

/** The OpenSSH client configuration for one environment. */
export interface HostEntry {
  host: string;
  user: string;
  proxyCommand: string;
  identityFile: string;
  knownHosts: string;
  alias: string;
  comment: string;
}

/** ssh_config quoting: double quotes around a path with spaces; `%` is ssh's token character. */
function sshConfigPath(path: string): string {
  const escaped = path.replace(/%/g, '%%');
  return /\s/.test(escaped) ? `"${escaped}"` : escaped;
}

export function renderHostEntry(entry: HostEntry): string {
  return [
    `# ${entry.comment}`,
    `Host ${entry.host}`,
    `  HostName ${entry.alias}`,
    `  User ${entry.user}`,
    // ssh hands ProxyCommand to /bin/sh after expanding %-tokens.
    `  ProxyCommand ${entry.proxyCommand.replace(/%/g, '%%')}`,
    `  IdentityFile ${sshConfigPath(entry.identityFile)}`,
    '  IdentitiesOnly yes',
    `  HostKeyAlias ${entry.alias}`,
    `  UserKnownHostsFile ${sshConfigPath(entry.knownHosts)}`,
    '  GlobalKnownHostsFile /dev/null',
    '  StrictHostKeyChecking yes',
    '  CheckHostIP no',
    '  ForwardAgent no',
    '  ForwardX11 no',
    '',
  ].join('\n');
}
