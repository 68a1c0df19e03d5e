/**
 * `envy attach --stdio` (the ProxyCommand of `envy ssh-config`): start the environment if needed and
 * run its sshd in inetd mode on this process's stdin/stdout. `envy ssh-config`: print the Host entry.
 */
import { realpathSync } from 'node:fs';
import { EnvyError } from '../errors.js';
import { HOST_BASE_LABEL } from '../build/executor.js';
import { NamespaceRuntime } from '../runtime/namespace/runtime.js';
import { runningInit } from '../runtime/namespace/state.js';
import { environmentId } from '../state/environments.js';
import { loadProject } from './project.js';

function settingsFor(spec: { name: string; workdir: string; user: { shell: string } }, identity: { name: string }, env: Record<string, string>) {
  return { user: identity.name, env, workdir: spec.workdir, shell: spec.user.shell, envName: spec.name };
}

export async function run(args: { file?: string; stdio: boolean }): Promise<number> {
  if (!args.stdio) {
    throw new EnvyError('USAGE', 'envy attach speaks SSH on stdin/stdout and is meant to be a ProxyCommand: run it as envy attach --stdio', {
      hint: 'envy ssh-config prints a Host entry for ~/.ssh/config that uses it',
    });
  }
  const [{ ensureRunning, processEnv }, { createReporter }, attach] = await Promise.all([
    import('../env/environment.js'),
    import('./ui/reporter.js'),
    import('../env/attach.js'),
  ]);
  const project = await loadProject(args.file);
  // stdout carries the SSH protocol: progress of a build or start goes to stderr only (ssh shows it).
  const reporter = await createReporter({ mode: 'plain', stream: process.stderr });
  const runtime = new NamespaceRuntime();
  let env;
  try {
    env = await ensureRunning(project, reporter, runtime);
  } finally {
    await reporter.close();
  }
  const id = env.record.id;
  await attach.ensureKeys(id);
  attach.writeServerFiles(id, settingsFor(project.spec, env.identity, processEnv(env.image, env.identity, false)));
  const init = runningInit(id);
  if (!init) throw new EnvyError('RUNTIME', `environment ${id} stopped while attaching`, { hint: 'envy up shows why' });
  const found = attach.findSshd(init.pid);
  if (!found.sshd) throw attach.missingSshd(project.source.file, Boolean(env.image.config.labels?.[HOST_BASE_LABEL]));
  if (!found.mounted) {
    throw new EnvyError('RUNTIME', `environment ${project.spec.name} was started by an older envy without ${attach.ENVY_DIR_INSIDE}`, {
      hint: 'restart it once: envy down && envy up',
    });
  }
  // sshd re-executes itself by its absolute path; -e keeps its log on stderr, which ssh shows.
  return runtime.exec(env.config, {
    argv: [found.sshd, '-i', '-e', '-f', `${attach.ENVY_DIR_INSIDE}/sshd_config`],
    env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8' },
    cwd: '/',
    root: false,
    identity: env.identity,
    tty: false,
  });
}

export async function runSshConfig(args: { file?: string; host?: string }): Promise<number> {
  const [attach, { planIdentity }, { compilePlan }] = await Promise.all([import('../env/attach.js'), import('../env/build.js'), import('../plan/compile.js')]);
  const project = await loadProject(args.file);
  const id = environmentId(project.source.dir, project.spec.name);
  const identity = planIdentity(compilePlan(project.spec, project.source.dir, project.lock));
  const paths = await attach.ensureKeys(id);
  const envy = [process.execPath, realpathSync(process.argv[1] ?? 'envy')];
  // An editor launched from the desktop has none of this shell's variables: pin where the state lives.
  const pinned = ['ENVY_HOME', 'XDG_DATA_HOME', 'XDG_CACHE_HOME'].filter((k) => process.env[k]?.startsWith('/')).map((k) => `${k}=${process.env[k]}`);
  const proxy = [...(pinned.length > 0 ? ['/usr/bin/env', ...pinned] : []), ...envy, 'attach', '--stdio', '--file', project.source.file].map(attach.shQuote).join(' ');
  const host = args.host ?? `envy-${project.spec.name}`;
  if (!/^[A-Za-z0-9._-]+$/.test(host)) throw new EnvyError('USAGE', `--host ${host}: use letters, digits, '.', '_' and '-' only`);
  process.stdout.write(
    attach.renderHostEntry({
      host,
      user: identity.name,
      proxyCommand: proxy,
      identityFile: paths.clientKey,
      knownHosts: paths.knownHosts,
      alias: attach.hostKeyAlias(id),
      comment: `envy environment ${project.spec.name} (${project.source.dir}): add to ~/.ssh/config, then ssh ${host}`,
    }),
  );
  return 0;
}
