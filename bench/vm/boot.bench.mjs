// Issue 7: boot-to-first-exec of a built VM environment (`envy exec -- true` on a stopped env: qemu
// start, kernel, envy-init, agent, provisioning, the command) and exec latency into a running VM.
// Targets: under TCG on this kind of machine, first exec within 4 s of `envy up` on a built image;
// with working KVM under 1 s; exec within 50 ms of a namespace env's `envy exec`.
// Anchors: Firecracker <= 125 ms to init; Lima ~23 s `limactl start`; Vagrant 15-90 s `vagrant up`.
// The first run builds the image (Debian + kernel, minutes); ENVY_BENCH_VM_HOME keeps that state
// between runs. Run as root it runs everything as the unprivileged `envtest` user.
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { printTable, timeCommands } from '../lib.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const asRoot = process.getuid() === 0;
const user = asRoot ? (process.env.ENVY_TEST_USER ?? 'envtest') : execFileSync('id', ['-un']).toString().trim();
const home = asRoot ? `/home/${user}` : process.env.HOME;
const keep = process.env.ENVY_BENCH_VM_HOME;
const work = keep ?? mkdtempSync(join(tmpdir(), 'envy-bench-vm-'));
mkdirSync(work, { recursive: true });
chmodSync(work, 0o755);
if (asRoot) execFileSync('chown', [`${user}:${user}`, work]);
const prefix = asRoot
  ? `setpriv --reuid=${user} --regid=${user} --init-groups env -i HOME=${home} PATH=/usr/bin:/bin:/usr/sbin:/sbin CI=true ENVY_HOME=${work}/home`
  : `env CI=true ENVY_HOME=${work}/home`;
const project = join(work, 'project');
// The reference for exec latency: a namespace env of the same base, measured in the same run.
const nsProject = join(work, 'project-ns');
const envyIn = (dir, args, env = '') => `${prefix} ${env} sh -c 'cd ${dir} && exec ${process.execPath} ${join(root, 'bin/envy.js')} ${args}'`;
const envy = (args, env = '') => envyIn(project, args, env);
const load = () => loadavg().map((n) => n.toFixed(2)).join(' ');
const sh = (command) => execFileSync('sh', ['-c', command], { stdio: ['ignore', 'ignore', 'inherit'] });

console.log(`load average at start: ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`);
try {
  if (!existsSync(join(project, 'env.yaml'))) {
    mkdirSync(project, { recursive: true });
    writeFileSync(join(project, 'env.yaml'), 'name: bench-vm\nbase:\n  debian: bookworm\nbackend:\n  type: vm\n  memory: 1g\n  cpus: 2\n');
    if (asRoot) execFileSync('chown', ['-R', `${user}:${user}`, project]);
  }
  if (!existsSync(join(nsProject, 'env.yaml'))) {
    mkdirSync(nsProject, { recursive: true });
    writeFileSync(join(nsProject, 'env.yaml'), 'name: bench-ns\nbase:\n  debian: bookworm\n');
    if (asRoot) execFileSync('chown', ['-R', `${user}:${user}`, nsProject]);
  }
  const started = Date.now();
  sh(envy('up --quiet'));
  console.log(`first \`envy up\` (build, disk, boot): ${((Date.now() - started) / 1000).toFixed(1)} s (cached after the first run)\n`);
  // Each sample: stop the VM (not timed), then time the exec that boots it, and where the time went:
  // envy-init's console line (kernel start -> init, modules + root, kernel start -> agent) and the
  // runtime's own marks in run/vm.json (from spawning qemu: agent answered, workspace copied, ready).
  const envDir = () => join(work, 'home/environments', readdirSync(join(work, 'home/environments')).find((name) => name.startsWith('bench-vm-')));
  // Booting the kernel (ENVY_VM_SNAPSHOT=0) and resuming the saved boot state, interleaved, so both
  // see the same load. The first `up` above saved the state (or found it).
  const phases = [];
  const samples = [];
  const kernelSamples = [];
  console.log(`load average before the boots: ${load()}`);
  for (let i = 0; i < 6; i++) {
    const resume = i % 2 === 1;
    sh(envy('down'));
    const wallStart = Date.now();
    const t = process.hrtime.bigint();
    sh(envy('exec -- true', resume ? '' : 'ENVY_VM_SNAPSHOT=0'));
    const total = Number(process.hrtime.bigint() - t) / 1e6;
    (resume ? samples : kernelSamples).push(total);
    const consoleLog = readFileSync(join(envDir(), 'logs/vm-console.log'), 'utf8');
    const init = [...consoleLog.matchAll(/(\d+) modules loaded and \S+ mounted in (\d+) ms \(the kernel took (\d+) ms/g)].at(-1);
    const agentAt = [...consoleLog.matchAll(/, (\d+) ms after the kernel started/g)].at(-1);
    const state = JSON.parse(readFileSync(join(envDir(), 'run/vm.json'), 'utf8'));
    // Host-clock marks from the start of `envy exec`: qemu spawned (vm.json), and the sync process's log
    // lines of this boot (ISO times): its start, the guest's sync agent connected, the initial sync done.
    const spawnedAt = Date.parse(state.startedAt) - wallStart;
    const syncLines = readFileSync(join(envDir(), 'logs/sync.log'), 'utf8')
      .split('\n')
      .map((line) => ({ at: Date.parse(line.slice(0, 24)) - wallStart, text: line.slice(25) }))
      .filter((line) => line.at >= 0);
    const mark = (re) => syncLines.find((line) => re.test(line.text))?.at;
    phases.push({
      kernelToInit: Number(init?.[3]),
      modules: Number(init?.[2]),
      kernelToAgent: Number(agentAt?.[1]),
      ...state.bootMs,
      bootState: state.bootState,
      spawnedAt,
      syncStarted: mark(/^sync process started/),
      syncConnected: mark(/^syncing /),
      syncDone: mark(/^initial sync done/),
      total: Math.round(total),
    });
  }
  console.log('boot phases (ms; kernel* from the guest clock, the rest from spawning qemu):');
  for (const p of phases) {
    // A resumed boot (saved boot state, runtime/vm/snapshot.ts) did not boot the kernel: its kernel* marks are the saving boot's.
    const how = p.bootState ? `${p.bootState.use}${p.bootState.ms === undefined ? '' : ` in ${p.bootState.ms} ms`}` : 'no saved state';
    console.log(`  [${how}] kernel->init ${p.kernelToInit}, modules+root ${p.modules}, kernel->agent ${p.kernelToAgent} | qemu spawn->agent answered ${p.answered}, ->workspace copied ${p.copied}, ->ready ${p.ready}`);
    console.log(
      `    from \`envy exec\`: qemu spawned ${p.spawnedAt}, agent answered ${p.spawnedAt + p.answered}, ready ${p.spawnedAt + p.ready}, sync process started ${p.syncStarted ?? '?'}, sync agent connected ${p.syncConnected ?? '?'}, initial sync done ${p.syncDone ?? '?'}, exec returned ${p.total}`,
    );
  }
  console.log(`load average after the boots: ${load()}`);
  const summary = (name, list) => {
    list.sort((x, y) => x - y);
    return { name, medianMs: list[1], meanMs: list.reduce((x, y) => x + y, 0) / list.length, stddevMs: 0 };
  };
  const boots = [summary('envy exec -- true on a stopped VM, resuming the saved boot state', samples), summary('the same booting the kernel (ENVY_VM_SNAPSHOT=0)', kernelSamples)];
  sh(envy('up --quiet'));
  sh(envyIn(nsProject, 'up --quiet'));
  // The C agent client alone (what `envy exec` becomes once Node found the record): the VM's own share.
  const nativeClient = join(root, 'dist/envy-vm-exec');
  const vmState = JSON.parse(readFileSync(join(envDir(), 'run/vm.json'), 'utf8'));
  const [uid, gid] = ['-u', '-g'].map((flag) => execFileSync('id', [flag, user]).toString().trim());
  const clientAlone = existsSync(nativeClient)
    ? [{ name: 'dist/envy-vm-exec -- true alone (running VM)', command: `${prefix} ${nativeClient} --run ${dirname(vmState.agentSocket)} --ports ${vmState.agentPorts} --id ${envDir().split('/').pop()} --uid ${uid} --gid ${gid} -- true` }]
    : [];
  const execs = timeCommands(
    [
      { name: 'node -e 0', command: `${prefix} ${process.execPath} -e 0` },
      { name: 'envy exec -- true (running namespace env)', command: envyIn(nsProject, 'exec -- true') },
      { name: 'envy exec -- true (running VM)', command: envy('exec -- true') },
      // The Node agent client (what the fast path did before native/envy-vm-exec.c, and its fallback).
      { name: 'envy exec -- true (running VM, Node client)', command: envy('exec -- true').replace('sh -c', 'ENVY_VM_EXEC_NODE=1 sh -c') },
      ...clientAlone,
    ],
    { runs: 20, warmup: 3 },
  );
  const ns = execs.find((r) => /namespace/.test(r.name));
  const vm = execs.find((r) => r.name === 'envy exec -- true (running VM)');
  console.log(`load average: ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`);
  console.log(`exec into the VM - exec into the namespace env: ${(vm.medianMs - ns.medianMs).toFixed(1)} ms (target <= 50)`);
  printTable(boots, 'envy exec -- true on a stopped VM (boot to first exec)');
  // CPU time (user + system of the host processes) moves far less than wall time under load.
  printTable(execs, 'node -e 0');
  console.log('targets: first exec <= 4 s after up under TCG, < 1 s with KVM; exec within 50 ms of a namespace env');
  console.log('anchors: Firecracker <= 125 ms to init; Lima ~23 s (limactl start); Vagrant 15-90 s (vagrant up)');
  sh(envy('down'));
  sh(envyIn(nsProject, 'down'));
} finally {
  if (!keep) {
    sh(`${prefix} sh -c 'cd ${project} && ${process.execPath} ${join(root, 'bin/envy.js')} down --rm' || true`);
    sh(`${prefix} sh -c 'cd ${nsProject} && ${process.execPath} ${join(root, 'bin/envy.js')} down --rm' || true`);
    sh(`${prefix} ${join(root, 'dist/envy-ns')} userns -- rm -rf ${work}/home || true`);
    rmSync(work, { recursive: true, force: true });
  }
}
