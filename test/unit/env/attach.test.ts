/**
 * The text `envy attach` hands to sshd and `envy ssh-config` hands to ssh: quoting that survives
 * sshd's argv_split and /bin/sh, one SetEnv line (sshd keeps only the first), and the client entry.
 */
import { execFileSync } from 'node:child_process';
import { describe, expect, test } from 'vitest';
import { PROFILE_SCRIPT, renderHostEntry, sessionScript, shellEnv, shQuote, sshdConfig } from '../../../src/env/attach.js';

const settings = {
  user: 'dev',
  env: { PATH: '/opt/bin:/usr/bin:/bin', QUOTED: 'a "b" \\c', TERM: 'dumb', HOME: '/nope', 'BAD-NAME': 'x', MULTI: 'one\ntwo' },
  workdir: "/work space/it's",
  shell: '/bin/bash',
  envName: 'demo',
};

describe('sshd_config for sshd -i as the environment user', () => {
  const text = sshdConfig(settings);
  test('key-only login of exactly the environment user, no PAM, internal sftp, the session script forced', () => {
    for (const line of ['AllowUsers dev', 'AuthenticationMethods publickey', 'PasswordAuthentication no', 'UsePAM no', 'Subsystem sftp internal-sftp', 'ForceCommand /bin/sh /run/envy/session.sh', 'HostKey /run/envy/ssh_host_ed25519_key']) {
      expect(text.split('\n')).toContain(line);
    }
  });
  test('all variables on one SetEnv line, quoted for argv_split; session-owned, invalid and multi-line ones left out', () => {
    const setenv = text.split('\n').filter((l) => l.startsWith('SetEnv'));
    expect(setenv).toHaveLength(1);
    expect(setenv[0]).toContain('"PATH=/opt/bin:/usr/bin:/bin"');
    expect(setenv[0]).toContain('"QUOTED=a \\"b\\" \\\\c"');
    expect(setenv[0]).toContain('"ENVY_PATH=/opt/bin:/usr/bin:/bin"');
    expect(setenv[0]).toContain('"debian_chroot=demo"');
    expect(setenv[0]).toContain('"SHELL=/bin/bash"');
    expect(setenv[0]).not.toMatch(/TERM=|HOME=|BAD-NAME|MULTI/);
  });
});

describe('the session script', () => {
  test('is valid sh that enters the workdir (quoted) and serves shell, command and sftp', () => {
    const script = sessionScript(settings);
    execFileSync('sh', ['-n'], { input: script });
    expect(script).toContain(`cd '/work space/it'\\''s'`);
    expect(script).toContain(`exec /bin/bash -c "$SSH_ORIGINAL_COMMAND"`);
    expect(script).toMatch(/internal-sftp\|\*\/sftp-server\)/);
  });
  test('the profile script marks a plain prompt once and restores PATH', () => {
    // Sourced twice (a nested login shell): still one mark.
    const out = execFileSync('sh', ['-c', `PS1='$ '; ENVY_ENV=demo; ENVY_PATH=/x:/y; PATH=/bin:/usr/bin; eval "$0"; eval "$0"; printf '%s|%s' "$PS1" "$PATH"`, PROFILE_SCRIPT], { encoding: 'utf8' });
    expect(out).toBe('(demo) $ |/x:/y');
    expect(shellEnv('demo', { PATH: '/p' })).toMatchObject({ ENVY_ENV: 'demo', ENVY_PATH: '/p', debian_chroot: 'demo' });
  });
});

describe('the ssh_config entry', () => {
  test('quotes paths for ssh_config and doubles % (ssh token) in the ProxyCommand', () => {
    const entry = renderHostEntry({
      host: 'envy-demo',
      user: 'dev',
      proxyCommand: [ '/usr/bin/node', '/opt/my envy/bin/envy.js', 'attach', '--stdio', '--file', '/p/100%/env.yaml'].map(shQuote).join(' '),
      identityFile: '/home/me/state dir/id_ed25519',
      knownHosts: '/home/me/kh',
      alias: 'envy-demo-1234abcd',
      comment: 'demo',
    });
    expect(entry).toMatch(/^Host envy-demo$/m);
    expect(entry).toContain(`  ProxyCommand /usr/bin/node '/opt/my envy/bin/envy.js' attach --stdio --file /p/100%%/env.yaml`);
    expect(entry).toContain('  IdentityFile "/home/me/state dir/id_ed25519"');
    expect(entry).toMatch(/^ {2}StrictHostKeyChecking yes$/m);
    expect(entry).toMatch(/^ {2}HostKeyAlias envy-demo-1234abcd$/m);
    // ssh itself accepts it: -G prints the resolved configuration without connecting.
    const dir = execFileSync('mktemp', ['-d'], { encoding: 'utf8' }).trim();
    execFileSync('sh', ['-c', `cat > '${dir}/config'`], { input: entry });
    const resolved = execFileSync('ssh', ['-G', '-F', `${dir}/config`, 'envy-demo'], { encoding: 'utf8' });
    execFileSync('rm', ['-rf', dir]);
    expect(resolved).toMatch(/^user dev$/m);
    expect(resolved).toMatch(/^hostkeyalias envy-demo-1234abcd$/m);
    expect(resolved).toMatch(/^proxycommand .*attach --stdio/m);
  });
});
