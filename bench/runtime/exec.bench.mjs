// The namespace runtime's cost (issue 3), anchors side by side in one hyperfine run on one busybox
// rootfs: `node -e 0` (the floor of any Node CLI), bwrap, rootless podman (runc), envy-ns directly,
// and NamespaceRuntime through a tiny bundled Node script (cold runOnce, and exec into a running env).
// Targets (ratios in the same run): exec <= 1.5x node; cold <= 2.5x node and >= 3x faster than podman.
// Run as root, it re-runs itself as the unprivileged user ENVY_BENCH_USER (default `envtest`): the point
// is rootless numbers.
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hasProgram, printTable, timeCommands } from '../lib.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const helper = join(root, 'dist/envy-ns');
const BENCH_USER = process.env.ENVY_BENCH_USER ?? 'envtest';

if (process.getuid() === 0) {
  if (spawnSync('id', ['-u', BENCH_USER], { stdio: 'ignore' }).status !== 0) {
    console.log(`skipped: running as root and there is no unprivileged user ${BENCH_USER} to measure a rootless runtime with`);
    process.exit(0);
  }
  // Root's tree may be unreadable to the user (/root is 0700): run a readable copy.
  const copy = mkdtempSync(join(tmpdir(), 'envy-bench-copy-'));
  try {
    for (const part of ['bench', 'dist', 'scripts', 'src', 'node_modules', 'package.json', 'tsconfig.json']) {
      execFileSync('cp', ['-a', join(root, part), copy]);
    }
    execFileSync('chmod', ['-R', 'a+rX', copy]);
    chmodSync(copy, 0o755);
    console.log(`(measured as the unprivileged user ${BENCH_USER})\n`);
    const result = spawnSync('setpriv', [`--reuid=${BENCH_USER}`, `--regid=${BENCH_USER}`, '--init-groups', 'env', '-i',
      `HOME=/home/${BENCH_USER}`, `USER=${BENCH_USER}`, 'PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin',
      process.execPath, join(copy, 'bench/runtime/exec.bench.mjs')], { stdio: 'inherit', cwd: copy });
    process.exitCode = result.status ?? 1;
  } finally {
    rmSync(copy, { recursive: true, force: true });
  }
  process.exit();
}

const dir = mkdtempSync(join(tmpdir(), 'envy-bench-rt-'));
chmodSync(dir, 0o755);
const rootfs = join(dir, 'rootfs');
const envyHome = join(dir, 'state');
const cleanup = () => spawnSync(helper, ['userns', '--', 'rm', '-rf', dir], { stdio: 'ignore' });

try {
  // A busybox rootfs owned by root inside the user namespace, as image layers are.
  execFileSync(helper, ['userns', '--', '/bin/sh', '-c', [
    `mkdir -p ${rootfs}/bin ${rootfs}/etc ${rootfs}/home`,
    `cp /usr/bin/busybox ${rootfs}/bin/`,
    `for a in $(/usr/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox ${rootfs}/bin/$a; done`,
    `echo root:x:0:0:root:/root:/bin/sh > ${rootfs}/etc/passwd`,
  ].join(' && ')], { stdio: 'inherit' });
  mkdirSync(join(dir, 'ws'));

  // The Node side exactly as envy uses it, bundled the way dist/exec-fast.cjs is (one CommonJS file:
  // no node_modules walk, no ES module loader). The same script as an ES module shows the loader's cost.
  const entry = join(dir, 'bench-entry.ts');
  writeFileSync(entry, [
    `import { NamespaceRuntime } from ${JSON.stringify(join(root, 'src/runtime/namespace/runtime.ts'))};`,
    `const [op, json] = process.argv.slice(2);`,
    `const { config, spec } = JSON.parse(json);`,
    `const runtime = new NamespaceRuntime();`,
    `void (async () => {`,
    `  if (op === 'start') await runtime.start(config);`,
    `  else if (op === 'stop') await runtime.stop(config, 1000);`,
    `  else process.exitCode = await runtime[op](config, spec);`,
    `})();`,
  ].join('\n'));
  const { build } = await import('esbuild');
  const { execFastBundleOptions } = await import('../../scripts/bundle-config.mjs');
  const script = join(dir, 'bench-runtime.cjs');
  const moduleScript = join(dir, 'bench-runtime.mjs');
  await build({ ...execFastBundleOptions(root, script), entryPoints: [entry], sourcemap: false });
  await build({ entryPoints: [entry], outfile: moduleScript, bundle: true, platform: 'node', format: 'esm', target: 'node20', logLevel: 'warning' });

  const config = {
    id: 'bench', hostname: 'bench', rootfs: { layers: [rootfs] }, network: 'host', resources: {},
    mounts: [{ type: 'bind', source: join(dir, 'ws'), target: '/workspace' }],
  };
  const spec = { argv: ['true'], env: { PATH: '/bin' }, cwd: '/', root: false, tty: false };
  const json = JSON.stringify({ config, spec });
  const env = { ...process.env, ENVY_NS_HELPER: helper, ENVY_HOME: envyHome };
  const quote = (s) => `'${s.replace(/'/g, `'\\''`)}'`;
  const nodeScript = (op, file = script) => `env ENVY_NS_HELPER=${helper} ENVY_HOME=${envyHome} ${process.execPath} ${file} ${op} ${quote(json)}`;

  execFileSync(process.execPath, [script, 'start', json], { env, stdio: 'inherit' });
  const [pid, start] = execFileSync('cat', [join(envyHome, 'environments/bench/run/init.pid')]).toString().trim().split(' ');
  const direct = `${helper} run --layer ${rootfs} --hostname bench --net host --bind ${join(dir, 'ws')}:/workspace --env PATH=/bin -- true`;

  const commands = [
    { name: 'node -e 0', command: `${process.execPath} -e 0` },
    { name: 'envy exec (NamespaceRuntime.exec via node)', command: nodeScript('exec') },
    { name: 'NamespaceRuntime.exec via node, as an ES module script', command: nodeScript('exec', moduleScript) },
    { name: 'envy cold run (NamespaceRuntime.runOnce via node)', command: nodeScript('runOnce') },
    { name: 'envy-ns exec (helper directly)', command: `${helper} exec --target ${pid}:${start} --env PATH=/bin -- true` },
    { name: 'envy-ns run (helper directly, cold)', command: direct },
  ];
  if (hasProgram('bwrap')) commands.push({ name: 'bwrap', command: `bwrap --unshare-all --ro-bind ${rootfs} / --proc /proc --dev /dev true` });
  else console.log('bwrap: skipped (not installed)');

  // Podman's storage lives in the bench dir, configured through CONTAINERS_STORAGE_CONF: the user's ~ stays untouched.
  const storageConf = join(dir, 'storage.conf');
  writeFileSync(storageConf, `[storage]\ndriver = "overlay"\ngraphroot = "${join(dir, 'podman/graph')}"\nrunroot = "${join(dir, 'podman/run')}"\n`);
  const podman = `env CONTAINERS_STORAGE_CONF=${storageConf} podman run --rm --network=none --runtime runc --rootfs ${rootfs} true`;
  if (!hasProgram('podman')) console.log('podman: skipped (not installed)');
  else {
    const probe = spawnSync('sh', ['-c', podman], { encoding: 'utf8' });
    if (probe.status === 0) commands.push({ name: 'podman run --rm (runc, rootless)', command: podman });
    else console.log(`podman: skipped (it cannot run here: ${(probe.stderr || '').trim().split('\n').pop()})`);
  }

  const results = timeCommands(commands, { runs: 30, warmup: 5, cwd: dir });
  execFileSync(process.execPath, [script, 'stop', json], { env, stdio: 'inherit' });
  printTable(results, 'node -e 0');

  const by = (name) => results.find((r) => r.name.startsWith(name))?.medianMs;
  const node = by('node -e 0');
  const exec = by('envy exec');
  const cold = by('envy cold run');
  const pod = by('podman');
  console.log('\n| target | ratio | goal | met |\n|---|---:|---:|:-:|');
  const row = (what, ratio, goal, ok) => console.log(`| ${what} | ${ratio.toFixed(2)} | ${goal} | ${ok ? 'yes' : 'NO'} |`);
  row('exec into a running env / node -e 0', exec / node, '≤ 1.5', exec / node <= 1.5);
  row('cold run / node -e 0', cold / node, '≤ 2.5', cold / node <= 2.5);
  if (pod !== undefined) row('podman / cold run', pod / cold, '≥ 3', pod / cold >= 3);
} finally {
  cleanup();
  rmSync(dir, { recursive: true, force: true });
}
