// Registry pull of a multi-layer image from a local docker-registry: envy's pullImage (download,
// verify, unpack into the store) vs `skopeo copy` of the same image to an OCI dir (download and
// verify only, no unpacking). Each run starts from an empty store / empty dir; runs alternate so
// both see the same machine load. Anchor (issue 4): envy no slower than skopeo.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hasProgram } from '../lib.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const RUNS = Number(process.env.BENCH_RUNS ?? 7);

for (const program of ['docker-registry', 'skopeo', 'zstd']) {
  if (!hasProgram(program)) {
    console.log(`skipped: ${program} is not installed (Debian: apt-get install docker-registry skopeo zstd)`);
    process.exit(0);
  }
}

const work = mkdtempSync(join(tmpdir(), 'envy-bench-pull-'));
let registry;
try {
  // One bundle with a setup mode (writes the test image as an OCI layout) and a pull mode.
  const { build } = await import('esbuild');
  const driver = join(work, 'driver.mjs');
  await build({
    stdin: {
      resolveDir: root,
      loader: 'ts',
      contents: `
        import { randomBytes } from 'node:crypto';
        import { pullImage } from './src/image/registry.ts';
        import { LayerStore } from './src/image/store.ts';
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
          process.stdout.write(image.layerDigests.map((d) => d.slice(7)).join(' '));
        } else {
          await pullImage(a, LayerStore.open(b));
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
  const layerHexes = execFileSync(process.execPath, [driver, 'setup', layout]).toString().trim();

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

  const time = (argv) => {
    const start = process.hrtime.bigint();
    const result = spawnSync(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    if (result.status !== 0) throw new Error(`${argv.join(' ')} failed: ${result.stderr}`);
    return Number(process.hrtime.bigint() - start) / 1e6;
  };
  const cases = [
    { name: 'envy pullImage (download + verify + unpack)', dir: join(work, 'store'), argv: (dir) => [process.execPath, driver, 'pull', `${host}/bench:v1`, dir] },
    { name: 'skopeo copy → oci: dir (download + verify)', dir: join(work, 'oci'), argv: (dir) => ['skopeo', 'copy', '--quiet', '--src-tls-verify=false', `docker://${host}/bench:v1`, `oci:${dir}:bench`] },
    {
      // Context: what envy does, done with the standard tools (GNU tar sniffs gzip and zstd).
      name: 'skopeo copy + tar -x of each layer',
      dir: join(work, 'oci-x'),
      argv: (dir) => [
        'sh',
        '-c',
        `skopeo copy --quiet --src-tls-verify=false docker://${host}/bench:v1 oci:${dir}:bench && for l in ${layerHexes}; do mkdir -p ${dir}/rootfs/$l && tar -xf ${dir}/blobs/sha256/$l -C ${dir}/rootfs/$l || exit 1; done`,
      ],
    },
  ];
  const samples = cases.map(() => []);
  for (let run = 0; run < RUNS + 1; run++) {
    cases.forEach((c, i) => {
      rmSync(c.dir, { recursive: true, force: true });
      const ms = time(c.argv(c.dir));
      if (run > 0) samples[i].push(ms); // the first round warms caches
    });
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const base = median(samples[1]);
  console.log(`image: ${layerHexes.split(' ').length} layers (gzip + zstd), ${(Number(size) / 1e6).toFixed(1)} MB in the registry; ${RUNS} runs each, alternating\n`);
  console.log('| pull | median ms | min ms | × skopeo |');
  console.log('|---|---:|---:|---:|');
  cases.forEach((c, i) => console.log(`| ${c.name} | ${median(samples[i]).toFixed(0)} | ${Math.min(...samples[i]).toFixed(0)} | ${(median(samples[i]) / base).toFixed(2)} |`));
} finally {
  registry?.kill('SIGTERM');
  rmSync(work, { recursive: true, force: true });
}
