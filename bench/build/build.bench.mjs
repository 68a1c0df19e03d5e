// Issue 4 anchors: a cold build of env.example.yaml vs `podman build` of the Dockerfile that
// `envy plan --dockerfile` renders, on the same base, same machine, same run (target: envy no slower);
// and the rebuild after changing one setup step (only it and its descendants rerun), vs podman's
// rebuild with its layer cache.
// Same base: envy bootstraps Debian bookworm once, exports it as a docker-archive, and both builders
// start from that archive (`base: {oci: base.tar}` for envy; `podman load` of it for podman), importing
// it inside the timed cold build. Cold means nothing cached: a fresh ENVY_HOME (no layer
// store, no apt cache), and for podman an emptied image store. Runs alternate so both see the same load.
// Run as root it runs everything as the unprivileged `envtest` user, or $BENCH_USER (rootless numbers are
// the point).
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hasProgram } from '../lib.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const asRoot = process.getuid() === 0;
// BENCH_USER: concurrent benchmark runs on one machine each use their own user (and podman store).
const user = asRoot ? (process.env.BENCH_USER ?? 'envtest') : execFileSync('id', ['-un']).toString().trim();

for (const program of ['podman', 'mmdebstrap']) {
  if (!hasProgram(program)) {
    console.log(`skipped: ${program} is not installed (Debian: apt-get install podman mmdebstrap)`);
    process.exit(0);
  }
}
if (asRoot && spawnSync('id', ['-u', user], { stdio: 'ignore' }).status !== 0) {
  console.log(`skipped: running as root and there is no unprivileged user ${user}`);
  process.exit(0);
}

const work = mkdtempSync(join(tmpdir(), 'envy-bench-build-'));
chmodSync(work, 0o755);
const home = join(work, 'home');
const runtimeDir = join(work, 'run');
mkdirSync(join(home, '.config/containers'), { recursive: true });
mkdirSync(runtimeDir, { mode: 0o700 });
// Rootless podman falls back to vfs (a full copy per layer) without this; runc because crun refuses
// this machine's hybrid cgroup setup (MACHINE-FACTS.md). Host networking for RUN, as envy builds:
// slirp4netns needs /dev/net/tun, which is root-only here.
writeFileSync(join(home, '.config/containers/storage.conf'), '[storage]\ndriver = "overlay"\n');
writeFileSync(join(home, '.config/containers/containers.conf'), '[engine]\nruntime = "runc"\n');
if (asRoot) execFileSync('chown', ['-R', `${user}:${user}`, work]);

const envBase = `HOME=${home} XDG_RUNTIME_DIR=${runtimeDir} PATH=/usr/bin:/bin:/usr/sbin:/sbin CI=true`;
const prefix = asRoot ? `setpriv --reuid=${user} --regid=${user} --init-groups env -i ${envBase}` : `env ${envBase}`;
const helper = join(root, 'dist/envy-ns');
const runQuiet = (command) => {
  const result = spawnSync('sh', ['-c', `${prefix} sh -c '${command.replace(/'/g, `'\\''`)}'`], { stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 28 });
  if (result.status !== 0) throw new Error(`failed (${result.status}): ${command}\n${result.stdout}\n${result.stderr.toString().slice(-3000)}`);
  return result.stdout.toString();
};
const timed = (command) => {
  const start = process.hrtime.bigint();
  runQuiet(command);
  return Number(process.hrtime.bigint() - start) / 1e6;
};
// BENCH_BASELINE=DIR: also time the envy of another checkout (built, e.g. a worktree of main) in the same
// runs, for before -> after figures under the same load.
const baseline = process.env.BENCH_BASELINE;
const envy = (args, envyHome, checkout = root) => `ENVY_HOME=${envyHome} ${process.execPath} ${join(checkout, 'bin/envy.js')} ${args}`;
const wipeEnvyHome = (envyHome) => runQuiet(`${helper} userns -- rm -rf ${envyHome}`);

const project = join(work, 'project');
try {
  // The shared base, made once, outside any timing.
  const seedDir = join(work, 'seed');
  runQuiet(`mkdir -p ${seedDir} ${project} && printf 'name: seed\\nbase: {debian: bookworm}\\n' > ${seedDir}/env.yaml`);
  runQuiet(`cd ${seedDir} && ${envy('build --quiet', join(work, 'seed-home'))} && ${envy(`export --quiet --docker-archive ${project}/base.tar --tag localhost/envy-bench-base:bookworm`, join(work, 'seed-home'))}`);
  wipeEnvyHome(join(work, 'seed-home'));

  const example = readFileSync(join(root, 'env.example.yaml'), 'utf8').replace(/base:\n {2}debian: bookworm\n/, 'base:\n  oci: base.tar\n');
  if (!example.includes('oci: base.tar')) throw new Error('env.example.yaml no longer has the base this bench rewrites');
  // The Dockerfile is rendered from a copy of the project without env.lock: its RUN lines must not change
  // when an envy build writes the lock's pins (podman's cache would miss on an unchanged step).
  const planProject = join(work, 'plan-project');
  runQuiet(`mkdir -p ${planProject} && ln ${project}/base.tar ${planProject}/base.tar`);
  const writeProject = (text) => {
    writeFileSync(join(work, 'env.yaml.next'), text);
    runQuiet(`cp ${work}/env.yaml.next ${project}/env.yaml && cp ${work}/env.yaml.next ${planProject}/env.yaml && cd ${planProject} && ${envy('plan --dockerfile', join(work, 'plan-home'))} > ${project}/Dockerfile`);
  };
  writeProject(example);
  // podman gets the base as a loaded image: `FROM docker-archive:` would import it again on every build
  // and defeat its layer cache. The cold podman time includes the load, as envy's includes the import.
  const podmanDockerfile = () => runQuiet(`cd ${project} && sed -i 's|^FROM docker-archive:base.tar$|FROM localhost/envy-bench-base:bookworm|' Dockerfile && grep -q '^FROM localhost/envy-bench-base:bookworm$' Dockerfile`);
  const podmanLoad = `cd ${project} && podman load --quiet -i base.tar`;
  // No `--format docker` (which the rendered Dockerfile suggests for SHELL): podman 4.3 never reuses its
  // layer cache in that format, and env.example.yaml's Dockerfile has no SHELL.
  const podmanBuild = `cd ${project} && podman build --quiet --network=host -f Dockerfile -t localhost/envy-bench:latest .`;
  const podmanReset = () => runQuiet('podman rmi --all --force >/dev/null 2>&1; podman image prune --all --force >/dev/null 2>&1; true');

  // Untimed warm-up: the first build of a session fetches the .debs through cold caches on the way to
  // the mirror; whichever builder went first paid for that.
  writeProject(example);
  runQuiet(`cd ${project} && ${envy('build --quiet', join(work, 'warmup-home'))} && rm -f env.lock`);
  wipeEnvyHome(join(work, 'warmup-home'));
  const cold = { envy: [], podman: [], baseline: [] };
  const changed = { envy: [], podman: [], baseline: [] };
  const loads = [];
  for (let run = 0; run < RUNS; run++) {
    const envyHome = join(work, `envy-home-${run}`);
    const baselineHome = join(work, `baseline-home-${run}`);
    loads.push(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);
    writeProject(example);
    // The order rotates per run so that no builder always goes first (or always follows podman's I/O).
    const coldBuilds = [
      () => cold.envy.push(timed(`cd ${project} && rm -f env.lock && ${envy('build --quiet', envyHome)}`)),
      () => {
        podmanDockerfile();
        podmanReset();
        cold.podman.push(timed(`${podmanLoad} && ${podmanBuild.replace(/^cd \S+ && /, '')}`));
      },
      ...(baseline ? [() => cold.baseline.push(timed(`cd ${project} && rm -f env.lock && ${envy('build --quiet', baselineHome, baseline)}`))] : []),
    ];
    for (let i = 0; i < coldBuilds.length; i++) coldBuilds[(i + run) % coldBuilds.length]();
    // One setup step changed: envy reruns it and the user step after it; podman its RUN and what follows.
    writeProject(example.replace('make --version | head -n1', `make --version | head -n${run + 2}`));
    podmanDockerfile();
    const changedBuilds = [
      () => changed.envy.push(timed(`cd ${project} && ${envy('build --quiet', envyHome)}`)),
      () => changed.podman.push(timed(podmanBuild)),
      ...(baseline ? [() => changed.baseline.push(timed(`cd ${project} && ${envy('build --quiet', baselineHome, baseline)}`))] : []),
    ];
    for (let i = 0; i < changedBuilds.length; i++) changedBuilds[(i + run) % changedBuilds.length]();
    wipeEnvyHome(envyHome);
    if (baseline) wipeEnvyHome(baselineHome);
  }
  loads.push(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);
  podmanReset();

  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const row = (name, samples, anchor) =>
    `| ${name} | ${(median(samples) / 1000).toFixed(1)} | ${(Math.min(...samples) / 1000).toFixed(1)} | ${(median(samples) / median(anchor)).toFixed(2)} |`;
  console.log(`env.example.yaml on the same Debian bookworm base archive, ${RUNS} runs each, interleaved, as ${user}; load average ${loads.join(' -> ')}\n`);
  console.log('| build | median s | min s | × podman |');
  console.log('|---|---:|---:|---:|');
  console.log(row('envy build, cold', cold.envy, cold.podman));
  if (baseline) console.log(row(`baseline envy (${baseline}), cold`, cold.baseline, cold.podman));
  console.log(row('podman build, cold', cold.podman, cold.podman));
  console.log(row('envy build, one setup step changed', changed.envy, changed.podman));
  if (baseline) console.log(row(`baseline envy (${baseline}), one step changed`, changed.baseline, changed.podman));
  console.log(row('podman build, one RUN changed (layer cache)', changed.podman, changed.podman));
  // The anchor is per run, not per median: each envy build against podman's in the same run.
  const perRun = (samples, anchor) => samples.map((ms, i) => `${(ms / 1000).toFixed(1)}/${(anchor[i] / 1000).toFixed(1)}`).join(' ');
  const noSlower = (samples, anchor) => samples.filter((ms, i) => ms <= anchor[i]).length;
  console.log(`\nper run, envy/podman s: cold ${perRun(cold.envy, cold.podman)} (envy no slower in ${noSlower(cold.envy, cold.podman)} of ${RUNS}); one step changed ${perRun(changed.envy, changed.podman)} (${noSlower(changed.envy, changed.podman)} of ${RUNS})`);
} finally {
  try {
    runQuiet(`podman unshare rm -rf ${home}/.local/share/containers`);
  } catch {
    // podman may never have started
  }
  for (const dir of ['seed-home', 'plan-home', 'warmup-home', ...Array.from({ length: RUNS }, (_, i) => [`envy-home-${i}`, `baseline-home-${i}`]).flat()]) {
    if (existsSync(join(work, dir))) {
      try {
        wipeEnvyHome(join(work, dir));
      } catch {
        // best effort
      }
    }
  }
  rmSync(work, { recursive: true, force: true });
}
