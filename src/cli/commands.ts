/**
 * The command table. Handlers import their command module on demand; yargs only
 * parses and dispatches. Each command module exports `run(args): Promise<number>`.
 */
import yargs, { type Argv } from 'yargs';
import { EnvyError } from '../errors.js';
import { setDebugSink } from '../exec.js';

export interface GlobalArgs {
  file?: string;
  debug: boolean;
  quiet: boolean;
}

export async function runCli(argv: string[], version: string): Promise<number> {
  // `envy logs -f` follows, as tail, docker and journalctl do; elsewhere -f is --file, which logs
  // still takes in its long form.
  const command = commandIndex(argv);
  if (argv[command] === 'logs') argv = argv.map((arg, i) => (i > command && arg === '-f' ? '--follow' : arg));
  let exitCode = 0;
  const setExit = (code: number): void => {
    exitCode = code;
  };
  const showingHelp = argv.length === 0 || argv.some((a) => a === '--help' || a === '-h');
  if (argv.includes('--debug')) setDebugSink((line) => process.stderr.write(`[debug] ${line}\n`));

  const cli: Argv = yargs(argv)
    .scriptName('envy')
    .usage('envy <command> [options]\n\nDeclarative, rootless dev environments from env.yaml.')
    .version(version)
    .alias('version', 'V')
    .help()
    .alias('help', 'h')
    .option('file', {
      alias: 'f',
      type: 'string',
      describe: 'Path to env.yaml (default: found by walking up from the current directory)',
      global: true,
    })
    .option('debug', { type: 'boolean', default: false, describe: 'Show external commands and stack traces', global: true })
    .option('quiet', { alias: 'q', type: 'boolean', default: false, describe: 'Print only errors', global: true })
    .command(
      'init',
      'Write a starter env.yaml in the current directory',
      (y) =>
        y
          .option('template', { alias: 't', type: 'string', default: 'default', describe: 'Template name (envy init --list shows them)' })
          .option('name', { type: 'string', describe: 'Environment name (default: the directory name)' })
          .option('list', { type: 'boolean', default: false, describe: 'List the available templates' })
          .option('force', { type: 'boolean', default: false, describe: 'Overwrite an existing env.yaml' }),
      async (args) => setExit(await (await import('./init.js')).run(args)),
    )
    .command(
      'plan',
      'Show the build plan compiled from env.yaml',
      (y) =>
        y
          // No defaults: yargs counts a defaulted option as given when checking conflicts.
          .option('dockerfile', { type: 'boolean', describe: 'Render the plan as an equivalent Dockerfile' })
          .option('json', { type: 'boolean', describe: 'Print the plan as JSON (for tools)' })
          .option('frozen', { type: 'boolean', default: false, describe: 'Fail if env.lock disagrees with env.yaml' })
          .conflicts('dockerfile', 'json'),
      async (args) => setExit(await (await import('./plan.js')).run(args)),
    )
    .command(
      'build',
      'Build the image env.yaml describes (cached steps are instant) and update env.lock',
      (y) =>
        y
          .option('frozen', { type: 'boolean', default: false, describe: 'Fail if env.lock disagrees with env.yaml; never write env.lock' })
          .option('progress', { choices: ['auto', 'tty', 'plain', 'quiet'] as const, default: 'auto' as const, describe: 'Progress display' }),
      async (args) => setExit(await (await import('./build.js')).run(args)),
    )
    .command(
      'up',
      'Build what changed and start the environment (idempotent)',
      (y) =>
        y
          .option('frozen', { type: 'boolean', default: false, describe: 'Fail if env.lock disagrees with env.yaml; never write env.lock' })
          .option('progress', { choices: ['auto', 'tty', 'plain', 'quiet'] as const, default: 'auto' as const, describe: 'Progress display' })
          .option('watch', { type: 'boolean', default: false, describe: 'Stay in the foreground and re-apply env.yaml on every save (Ctrl-C leaves the environment running)' }),
      async (args) => setExit(await (await import('./up.js')).run(args)),
    )
    .command(
      'exec [command..]',
      'Run a command in the environment (starting it if it is down); its exit code is passed through',
      (y) =>
        y
          .positional('command', { type: 'string', array: true, describe: 'The command and its arguments (after --)' })
          .option('env', { alias: 'e', type: 'string', array: true, nargs: 1, describe: 'Set KEY=VALUE in the command\'s environment' })
          .option('workdir', { alias: 'w', type: 'string', describe: 'Working directory inside (default: workdir from env.yaml)' })
          .option('root', { type: 'boolean', default: false, describe: 'Run as root inside the environment' })
          .parserConfiguration({ 'populate--': true, 'unknown-options-as-args': true }),
      async (args) => setExit(await (await import('./exec.js')).run(args as never)),
    )
    .command(
      'shell',
      'Open an interactive login shell in the environment',
      (y) => y.option('root', { type: 'boolean', default: false, describe: 'Open it as root' }),
      async (args) => setExit(await (await import('./exec.js')).runShell(args)),
    )
    .command(
      'ssh-config',
      'Print an OpenSSH Host entry for the environment (for ~/.ssh/config, VS Code Remote-SSH, Gateway)',
      (y) => y.option('host', { type: 'string', describe: 'Host name of the entry (default: envy-NAME)' }),
      async (args) => setExit(await (await import('./attach.js')).runSshConfig(args)),
    )
    .command(
      'attach',
      'Run the environment\'s sshd on stdin/stdout (the ProxyCommand of envy ssh-config)',
      (y) => y.option('stdio', { type: 'boolean', default: false, describe: 'Speak SSH on stdin/stdout' }),
      async (args) => setExit(await (await import('./attach.js')).run(args)),
    )
    .command(
      'down',
      'Stop the environment; --rm also deletes its writable layer and volumes',
      (y) => y.option('rm', { type: 'boolean', default: false, describe: 'Remove the environment too' }),
      async (args) => setExit(await (await import('./down.js')).run(args)),
    )
    .command(
      'status',
      'List this user\'s environments and their state',
      (y) => y.option('json', { type: 'boolean', default: false, describe: 'Machine-readable output' }),
      async (args) => setExit(await (await import('./status.js')).run(args)),
    )
    .command(
      'logs [service]',
      'Show the output of the environment\'s services (all of them interleaved, or one); -f follows',
      (y) =>
        y
          .positional('service', { type: 'string', describe: 'The service (default: all, each line prefixed with its name)' })
          .option('follow', { type: 'boolean', default: false, describe: 'Keep printing new output (-f)' })
          .option('tail', { alias: 'n', type: 'number', describe: 'Only the last N lines' })
          .option('hooks', { type: 'boolean', default: false, describe: 'The output of hooks.onCreate and hooks.postStart instead' })
          .option('vm', { type: 'boolean', default: false, describe: "The VM's serial console (backend: vm) instead" }),
      async (args) => setExit(await (await import('./logs.js')).run(args)),
    )
    // The per-environment service supervisor that `envy up` starts; not for people.
    .command(
      '__supervise <id>',
      false,
      (y) => y.positional('id', { type: 'string', demandOption: true }),
      async (args) => setExit(await (await import('../env/supervisor.js')).runSupervisor(args.id)),
    )
    .command(
      'sync',
      'Show the state of a watch-synced workspace; --flush waits until every change is applied',
      (y) =>
        y
          .option('flush', { type: 'boolean', default: false, describe: 'Wait until everything pending is applied' })
          .option('timeout', { type: 'number', describe: 'With --flush: give up after this many seconds' })
          .option('json', { type: 'boolean', default: false, describe: 'Machine-readable output' }),
      async (args) => setExit(await (await import('./sync.js')).run(args)),
    )
    // The per-environment sync process that `envy up` starts (workspace.sync: watch); not for people.
    .command(
      '__sync <id>',
      false,
      (y) => y.positional('id', { type: 'string', demandOption: true }),
      async (args) => setExit(await (await import('./sync.js')).runDaemon({ id: args.id })),
    )
    .command(
      'export',
      'Write the built image as an OCI layout or a docker-archive (podman load, docker load, skopeo)',
      (y) =>
        y
          .option('oci', { type: 'string', describe: 'Write an OCI image layout into this (new or empty) directory' })
          .option('docker-archive', { type: 'string', describe: 'Write a docker-archive tarball to this file' })
          .option('tag', { type: 'string', describe: 'Image name (default: localhost/NAME:latest)' })
          .option('progress', { choices: ['auto', 'tty', 'plain', 'quiet'] as const, default: 'auto' as const, describe: 'Progress display' })
          .conflicts('oci', 'docker-archive'),
      async (args) => setExit(await (await import('./export.js')).run(args)),
    )
    .command(
      'devcontainer',
      'Write .devcontainer/devcontainer.json (Dev Containers spec) with the built image saved next to it',
      (y) =>
        y
          .option('force', { type: 'boolean', default: false, describe: 'Replace an existing devcontainer.json' })
          .option('load', { choices: ['podman', 'docker'] as const, describe: 'Also load the image into podman or docker' })
          .option('progress', { choices: ['auto', 'tty', 'plain', 'quiet'] as const, default: 'auto' as const, describe: 'Progress display' }),
      async (args) => setExit(await (await import('./devcontainer.js')).run(args)),
    )
    .command(
      'gc',
      'Remove images, layers and blobs that no environment or recent build uses',
      (y) =>
        y
          .option('grace', { type: 'number', default: 600, describe: 'Keep anything newer than this many seconds (builds in flight)' })
          .option('json', { type: 'boolean', default: false, describe: 'Machine-readable output' }),
      async (args) => setExit(await (await import('./gc.js')).run(args)),
    )
    .command(
      'doctor',
      'Check that this host can run envy and say how to fix what is missing',
      (y) => y.option('json', { type: 'boolean', default: false, describe: 'Machine-readable output' }),
      async (args) => setExit(await (await import('./doctor.js')).run(args)),
    )
    .demandCommand(1, 'Name a command (envy --help lists them)')
    .recommendCommands()
    .strict()
    // yargs renders (and caches) the whole help text before every command, and wrapping it to the
    // terminal costs ~40 ms of string-width work: wrap only when help is what was asked for.
    .wrap(showingHelp ? Math.min(100, process.stdout.columns || 100) : null)
    .fail((message, error) => {
      if (error) throw error;
      throw new EnvyError('USAGE', message ?? 'invalid command line', { hint: 'envy --help lists commands and options' });
    });

  await cli.parseAsync();
  return exitCode;
}

/** Where the command name is: the first word that is not an option or the value of -f/--file. */
function commandIndex(argv: string[]): number {
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '-f' || arg === '--file') i++;
    else if (!arg.startsWith('-')) return i;
  }
  return -1;
}
