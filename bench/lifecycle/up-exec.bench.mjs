// Issue 4/5 anchors: a no-op `envy up` (all cached, already running; target median < 300 ms) and
// `envy exec -- true` into the running environment (target <= 1.5x `node -e 0`), on a host-base project,
// the same with a supervised service, and on env.example.yaml (Debian). Against them, rootless podman
// on a running busybox container: `podman start` (already running: its no-op) and `podman exec true`.
// Run as root it runs everything as the unprivileged user (ENVY_BENCH_USER, default `envtest`).
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hasProgram, printTable, timeCommands } from '../lib.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const asRoot = process.getuid() === 0;
const user = asRoot ? (process.env.ENVY_BENCH_USER ?? 'envtest') : execFileSync('id', ['-un']).toString().trim();
const home = asRoot ? `/home/${user}` : process.env.HOME;
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
  services: 'name: bench-svc\nbase: {host: true}\nservices:\n  idle:\n    run: exec sleep 100000\n    ready: "true"\n',
  example: readFileSync(join(root, 'env.example.yaml'), 'utf8'),
};
/**
 * A running busybox container in podman storage under the bench dir (the user's ~ stays untouched),
 * the closest podman has to a started environment; [] with a note when podman cannot run here.
 */
let podman;
function podmanAnchors() {
  if (!hasProgram('podman')) {
    console.log('podman: skipped (not installed)');
    return [];
  }
  const rootfs = join(work, 'rootfs');
  sh(`${prefix} ${join(root, 'dist/envy-ns')} userns -- /bin/sh -c 'mkdir -p ${rootfs}/bin ${rootfs}/etc && cp /usr/bin/busybox ${rootfs}/bin/ && for a in $(/usr/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox ${rootfs}/bin/$a; done && echo root:x:0:0:root:/root:/bin/sh > ${rootfs}/etc/passwd'`);
  writeFileSync(join(work, 'storage.conf'), `[storage]\ndriver = "overlay"\ngraphroot = "${work}/podman/graph"\nrunroot = "${work}/podman/run"\n`);
  podman = `${prefix} CONTAINERS_STORAGE_CONF=${work}/storage.conf podman --runtime runc --cgroup-manager cgroupfs --events-backend file`;
  const probe = spawnSync('sh', ['-c', `${podman} run -d --name envy-bench --network host --rootfs ${rootfs} sleep 100000`], { encoding: 'utf8' });
  if (probe.status !== 0) {
    console.log(`podman: skipped (it cannot run here: ${(probe.stderr || '').trim().split('\n').pop()})`);
    podman = undefined;
    return [];
  }
  return [
    { name: 'podman start (running container)', command: `${podman} start envy-bench` },
    { name: 'podman exec true', command: `${podman} exec envy-bench true` },
  ];
}

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
  commands.push(...podmanAnchors());
  // The `sh -c cd` wrapper costs a fork+exec; time it so the ratios can be read net of it.
  commands.push({ name: 'sh -c cd + node -e 0', command: `${prefix} sh -c 'cd ${work} && exec ${process.execPath} -e 0'` });
  const results = timeCommands(commands, { runs: 20, warmup: 3 });
  printTable(results, 'sh -c cd + node -e 0');
  const by = (name) => results.find((r) => r.name === name)?.medianMs;
  if (podman) {
    console.log('\n| envy vs podman (medians) | ratio |\n|---|---:|');
    for (const name of Object.keys(projects)) {
      console.log(`| envy up (no change, ${name}) / podman start | ${(by(`envy up (no change, ${name})`) / by('podman start (running container)')).toFixed(2)} |`);
      console.log(`| envy exec -- true (${name}) / podman exec true | ${(by(`envy exec -- true (${name})`) / by('podman exec true')).toFixed(2)} |`);
    }
  }
} finally {
  // `system migrate` also ends rootless podman's pause process, which would outlive the bench.
  if (podman) spawnSync('sh', ['-c', `${podman} rm -f -t 0 envy-bench; ${podman} system migrate`], { stdio: 'ignore' });
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
