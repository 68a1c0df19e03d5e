// Issue 4/5 anchors: a no-op `envy up` (all cached, already running; target median < 300 ms) and
// `envy exec -- true` into the running environment (target <= 1.5x `node -e 0`), on a host-base project
// and on env.example.yaml (Debian). Run as root it runs everything as the unprivileged `envtest` user.
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { printTable, timeCommands } from '../lib.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const asRoot = process.getuid() === 0;
const user = asRoot ? 'envtest' : execFileSync('id', ['-un']).toString().trim();
const home = asRoot ? '/home/envtest' : process.env.HOME;
const work = mkdtempSync(join(tmpdir(), 'envy-bench-life-'));
chmodSync(work, 0o755);
// user:group, not just user: root in the user namespace may only override permissions on inodes whose uid and gid are both mapped.
if (asRoot) execFileSync('chown', [`${user}:${user}`, work]);
const prefix = asRoot
  ? `setpriv --reuid=${user} --regid=${user} --init-groups env -i HOME=${home} PATH=/usr/bin:/bin:/usr/sbin:/sbin CI=true ENVY_HOME=${work}/home`
  : `env CI=true ENVY_HOME=${work}/home`;
const envy = (dir, args) => `${prefix} sh -c 'cd ${dir} && exec ${process.execPath} ${join(root, 'bin/envy.js')} ${args}'`;
const sh = (command) => execFileSync('sh', ['-c', command], { stdio: ['ignore', 'ignore', 'inherit'] });

const projects = {
  host: 'name: bench-host\nbase: {host: true}\nsetup: ["echo ok > /opt/ok"]\n',
  example: readFileSync(join(root, 'env.example.yaml'), 'utf8'),
};
try {
  const commands = [{ name: 'node -e 0', command: `${prefix} ${process.execPath} -e 0` }];
  for (const [name, text] of Object.entries(projects)) {
    const dir = join(work, name);
    execFileSync('mkdir', ['-p', dir]);
    writeFileSync(join(dir, 'env.yaml'), text);
    if (asRoot) execFileSync('chown', ['-R', `${user}:${user}`, dir]);
    sh(envy(dir, 'up --quiet'));
    commands.push({ name: `envy up (no change, ${name})`, command: envy(dir, 'up --quiet') });
    commands.push({ name: `envy exec -- true (${name})`, command: envy(dir, 'exec -- true') });
  }
  // The `sh -c cd` wrapper costs a fork+exec; time it so the ratios can be read net of it.
  commands.push({ name: 'sh -c cd + node -e 0', command: `${prefix} sh -c 'cd ${work} && exec ${process.execPath} -e 0'` });
  printTable(timeCommands(commands, { runs: 20, warmup: 3 }), 'sh -c cd + node -e 0');
} finally {
  for (const name of Object.keys(projects)) {
    try {
      sh(envy(join(work, name), 'down --rm --quiet'));
    } catch {
      // best effort: the environment may not have come up
    }
  }
  sh(`${prefix} ${join(root, 'dist/envy-ns')} userns -- rm -rf ${work}/home`);
  rmSync(work, { recursive: true, force: true });
}
