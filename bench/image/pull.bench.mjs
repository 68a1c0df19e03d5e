// Issue 4 anchor: a registry pull of a multi-layer image from a local docker-registry, envy vs skopeo;
// target: envy no slower.
//
// What is compared. envy's pull ends with the layers unpacked in its store with their owners (root in
// the user namespace, the layer worker), ready to run. `skopeo copy` to an `oci:` dir only downloads and
// verifies blobs; its unpacking equivalent is `skopeo copy` to `containers-storage:` (the store podman
// runs from), which downloads, verifies and unpacks every layer with its owners, rootlessly in a user
// namespace, as envy does. So the anchor is skopeo → containers-storage; skopeo → oci: dir (no
// unpacking) is shown for context. Both run as the same unprivileged user, the way envy and podman are
// used (as root the bench runs them as `envtest`, or $BENCH_USER). envy runs through pullImage with the
// build's unpacker (src/build/userns.ts), from a bundled driver, in a fresh store each run; skopeo into
// a fresh storage root. Runs alternate so all cases see the same machine load.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hasProgram } from '../lib.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const RUNS = Number(process.env.BENCH_RUNS ?? 7);
const asRoot = process.getuid() === 0;
const user = asRoot ? (process.env.BENCH_USER ?? 'envtest') : execFileSync('id', ['-un']).toString().trim();

for (const program of ['docker-registry', 'skopeo', 'zstd']) {
  if (!hasProgram(program)) {
    console.log(`skipped: ${program} is not installed (Debian: apt-get install docker-registry skopeo zstd)`);
    process.exit(0);
  }
}
if (asRoot && spawnSync('id', ['-u', user], { stdio: 'ignore' }).status !== 0) {
  console.log(`skipped: running as root and there is no unprivileged user ${user}`);
  process.exit(0);
}

const work = mkdtempSync(join(tmpdir(), 'envy-bench-pull-'));
chmodSync(work, 0o755);
// The driver lives in dist/ so that it finds the layer worker and the namespace helper next to it.
const driver = join(root, 'dist', `.bench-pull-driver-${process.pid}.mjs`);
const helper = join(root, 'dist/envy-ns');
let registry;
try {
  const { build } = await import('esbuild');
  await build({
    stdin: {
      resolveDir: root,
      loader: 'ts',
      contents: `
        import { randomBytes } from 'node:crypto';
        import { pullImage } from './src/image/registry.ts';
        import { LayerStore } from './src/image/store.ts';
        import { removeInUserNamespace, UnpackSession } from './src/build/userns.ts';
        import { busyboxLayers, writeImage, writeIndex } from './test/e2e/image/fixtures.ts';
        const [mode, a, b] = process.argv.slice(2);
        if (mode === 'setup') {
          const text = (n) => Array.from({ length: n }, (_, i) => 'line ' + i + ' ' + randomBytes(8).toString('hex')).join('\\n');
          const layers = [
            ...busyboxLayers(),
            { compression: 'gzip', entries: [{ name: 'opt/blob.bin', content: randomBytes(24_000_000) }] },
            { compression: 'gzip', entries: Array.from({ length: 3000 }, (_, i) => ({ name: 'usr/share/doc/p' + (i % 60) + '/f' + i, content: text(40) })) },
            { compression: 'zstd', entries: [{ name: 'usr/lib/big.txt', content: text(400_000) }] },
          ];
          const image = await writeImage(a, layers);
          writeIndex(a, [{ image, tag: 'bench' }]);
        } else {
          // What the build does for a base image (src/build/executor.ts).
          const identity = { uid: process.getuid(), gid: process.getgid() };
          const session = await UnpackSession.start(identity);
          try {
            await pullImage(a, LayerStore.open(b), { chown: true, unpack: session.unpack, removeTree: (path) => removeInUserNamespace(identity, [path]) });
          } finally {
            await session.close();
          }
        }
      `,
    },
    outfile: driver,
    bundle: true,
    format: 'esm',
    platform: 'node',
    target: 'node20',
    logLevel: 'error',
    banner: { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" },
  });

  const layout = join(work, 'layout');
  execFileSync(process.execPath, [driver, 'setup', layout]);

  const port = await new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
  writeFileSync(
    join(work, 'registry.yml'),
    `version: 0.1\nlog: {level: error}\nstorage: {filesystem: {rootdirectory: ${join(work, 'storage')}}}\nhttp: {addr: 127.0.0.1:${port}}\n`,
  );
  registry = spawn('docker-registry', ['serve', join(work, 'registry.yml')], { stdio: 'ignore' });
  const host = `127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    try {
      await fetch(`http://${host}/v2/`);
      break;
    } catch {
      if (i > 200) throw new Error('docker-registry did not start');
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  execFileSync('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `oci:${layout}:bench`, `docker://${host}/bench:v1`]);
  const size = execFileSync('du', ['-sb', join(work, 'storage')]).toString().split('\t')[0];

  const home = join(work, 'home');
  const runtimeDir = join(work, 'run');
  execFileSync('mkdir', ['-p', home, runtimeDir]);
  chmodSync(runtimeDir, 0o700);
  if (asRoot) execFileSync('chown', ['-R', `${user}:${user}`, home, runtimeDir]);
  const envBase = ['env', '-i', `HOME=${home}`, `XDG_RUNTIME_DIR=${runtimeDir}`, 'PATH=/usr/bin:/bin:/usr/sbin:/sbin'];
  const asUser = (argv) => (asRoot ? ['setpriv', `--reuid=${user}`, `--regid=${user}`, '--init-groups', ...envBase, ...argv] : [...envBase, ...argv]);
  const run = (argv) => {
    const result = spawnSync(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    if (result.status !== 0) throw new Error(`${argv.join(' ')} failed: ${result.stderr}`);
  };
  const time = (argv) => {
    const start = process.hrtime.bigint();
    run(argv);
    return Number(process.hrtime.bigint() - start) / 1e6;
  };
  // Unpacked trees hold files of subordinate owners: only the user's namespace can remove them.
  const wipe = (dir) => run(asUser([helper, 'userns', '--', 'rm', '-rf', dir]));
  const cases = [
    {
      name: 'envy pull (download + verify + unpack with owners)',
      dir: join(home, 'store'),
      argv: (dir) => [process.execPath, driver, 'pull', `${host}/bench:v1`, dir],
    },
    {
      name: 'skopeo copy → containers-storage (download + verify + unpack with owners)',
      dir: join(home, 'containers'),
      argv: (dir) => ['skopeo', 'copy', '--quiet', '--src-tls-verify=false', `docker://${host}/bench:v1`, `containers-storage:[overlay@${dir}+${runtimeDir}/containers]localhost/bench:v1`],
    },
    {
      name: 'skopeo copy → oci: dir (download + verify, no unpacking)',
      dir: join(home, 'oci'),
      argv: (dir) => ['skopeo', 'copy', '--quiet', '--src-tls-verify=false', `docker://${host}/bench:v1`, `oci:${dir}:bench`],
    },
  ];
  const samples = cases.map(() => []);
  for (let round = 0; round < RUNS + 1; round++) {
    cases.forEach((c, i) => {
      wipe(c.dir);
      const ms = time(asUser(c.argv(c.dir)));
      if (round > 0) samples[i].push(ms); // the first round warms caches
    });
  }
  for (const c of cases) wipe(c.dir);
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const anchor = median(samples[1]);
  console.log(`image: 6 layers (gzip + zstd, one of 3,000 small files), ${(Number(size) / 1e6).toFixed(1)} MB in the registry; ${RUNS} runs each, alternating, as ${user}\n`);
  console.log('| pull | median ms | min ms | × skopeo → containers-storage |');
  console.log('|---|---:|---:|---:|');
  cases.forEach((c, i) => console.log(`| ${c.name} | ${median(samples[i]).toFixed(0)} | ${Math.min(...samples[i]).toFixed(0)} | ${(median(samples[i]) / anchor).toFixed(2)} |`));
} finally {
  registry?.kill('SIGTERM');
  rmSync(driver, { force: true });
  rmSync(work, { recursive: true, force: true });
}
