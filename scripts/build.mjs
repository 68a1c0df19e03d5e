// Builds the CLI bundle (dist/) and the native namespace helper.
// Bundling matters for start-up: one file parses faster than hundreds of
// node_modules lookups, and ink/React sit in a lazily loaded chunk.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bundleOptions, execFastBundleOptions } from './bundle-config.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');

let esbuild;
try {
  esbuild = await import('esbuild');
} catch {
  // Installed as a dependency without devDependencies: dist/ ships prebuilt.
  if (existsSync(join(dist, 'main.js'))) process.exit(0);
  console.error('envy build: esbuild is missing; run `npm ci` in the envy checkout');
  process.exit(1);
}

// Build beside dist/ and swap it in whole: tests and other shells may be running the CLI meanwhile.
const staging = join(root, `.dist-${process.pid}`);
rmSync(staging, { recursive: true, force: true });
mkdirSync(staging, { recursive: true });

const { version } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
await esbuild.build(
  bundleOptions(root, {
    entryPoints: { main: join(root, 'src/cli/main.ts'), 'layer-worker': join(root, 'src/build/layer-worker.ts') },
    outdir: staging,
    define: { ENVY_VERSION: JSON.stringify(version) },
  }),
);

// `envy exec` into a running environment: one CommonJS file that bin/envy.js requires before the ESM
// loader exists (src/cli/exec-fast.ts says why).
await esbuild.build(execFastBundleOptions(root, join(staging, 'exec-fast.cjs')));

const helperSource = join(root, 'native/envy-ns.c');
if (existsSync(helperSource)) {
  const cc = process.env.CC ?? 'cc';
  try {
    execFileSync(cc, ['-O2', '-Wall', '-Wextra', '-Werror', '-std=gnu11', '-o', join(staging, 'envy-ns'), helperSource], { stdio: 'inherit' });
  } catch (error) {
    console.error(`envy build: could not compile native/envy-ns.c with ${cc} (${error.message.split('\n')[0]}); ` +
      'install a C compiler (Debian/Ubuntu: sudo apt-get install -y gcc libc6-dev) and run `npm run build`');
    rmSync(staging, { recursive: true, force: true });
    process.exit(1);
  }
}

// `envy exec` into a running VM becomes this client of the guest agent (native/envy-vm-exec.c), as it
// becomes envy-ns for a namespace environment. Without it the exec runs through Node's agent client.
const vmExecSource = join(root, 'native/envy-vm-exec.c');
if (existsSync(vmExecSource)) {
  const cc = process.env.CC ?? 'cc';
  try {
    execFileSync(cc, ['-O2', '-Wall', '-Wextra', '-Werror', '-std=gnu11', '-o', join(staging, 'envy-vm-exec'), vmExecSource], { stdio: ['ignore', 'inherit', 'pipe'] });
  } catch (error) {
    const reason = error.code === 'ENOENT' ? `${cc} is not installed` : (error.stderr?.toString().trim() || error.message.split('\n')[0]);
    console.error(`envy build: note: no dist/envy-vm-exec (${reason}); envy exec into a VM runs through Node instead (slower)`);
  }
}

// The Node-API addon that lets `envy exec` become the helper (native/envy-node.c). Node's headers come
// with the official binaries (PREFIX/include/node) and Debian's nodejs; without them `envy exec` spawns
// the helper instead, which works, ~10 ms slower.
const addonSource = join(root, 'native/envy-node.c');
if (existsSync(addonSource)) {
  const cc = process.env.CC ?? 'cc';
  const headers = [join(dirname(process.execPath), '../include/node'), '/usr/include/node', '/usr/local/include/node']
    .find((dir) => existsSync(join(dir, 'node_api.h')));
  try {
    if (!headers) throw new Error('no node_api.h beside this Node or in /usr/include/node');
    execFileSync(cc, ['-O2', '-Wall', '-Wextra', '-Werror', '-std=gnu11', '-shared', '-fPIC', '-I', headers, '-o', join(staging, 'envy-node.node'), addonSource], { stdio: ['ignore', 'inherit', 'pipe'] });
  } catch (error) {
    const reason = error.code === 'ENOENT' ? `${cc} is not installed` : (error.stderr?.toString().trim() || error.message.split('\n')[0]);
    console.error(`envy build: note: no dist/envy-node.node (${reason}); envy exec spawns the helper instead of becoming it (~10 ms slower)`);
  }
}

// The VM backend's stage-1 init (PID 1 of the guest's initramfs), static, one per guest architecture.
// A missing compiler only disables VMs of that architecture: envy says so when such a VM boots.
const initSource = join(root, 'native/envy-init.c');
if (existsSync(initSource)) {
  const hostArch = process.arch === 'arm64' ? 'aarch64' : 'x86_64';
  const compilers = { x86_64: hostArch === 'x86_64' ? (process.env.CC ?? 'cc') : 'x86_64-linux-gnu-gcc', aarch64: hostArch === 'aarch64' ? (process.env.CC ?? 'cc') : 'aarch64-linux-gnu-gcc' };
  for (const [arch, cc] of Object.entries(compilers)) {
    try {
      execFileSync(cc, ['-O2', '-Wall', '-Wextra', '-Werror', '-std=gnu11', '-static', '-s', '-o', join(staging, `envy-init-${arch}`), initSource], { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (error) {
      const why = error.code === 'ENOENT' ? `${cc} is not installed` : String(error.stderr ?? error.message).split('\n')[0];
      console.error(`envy build: note: no ${arch} VM init (${why}); ` +
        (arch === hostArch ? 'install gcc and libc6-dev' : `install gcc-${arch === 'aarch64' ? 'aarch64' : 'x86-64'}-linux-gnu and libc6-dev-${arch === 'aarch64' ? 'arm64' : 'amd64'}-cross`) +
        ` for backend: vm with arch ${arch}`);
    }
  }
}

// The VM guest agent: static, so one binary drops into any image (docs/vm-agent.md). The aarch64 build
// needs Debian's cross compiler; without it the VM backend can still boot x86_64 guests.
const agentSource = join(root, 'native/envy-agent.c');
if (existsSync(agentSource)) {
  const agentFlags = ['-O2', '-Wall', '-Wextra', '-Werror', '-std=gnu11', '-static', '-s'];
  const targets = [
    { arch: 'x86_64', cc: process.env.CC_X86_64 ?? (process.arch === 'x64' ? (process.env.CC ?? 'cc') : 'x86_64-linux-gnu-gcc'), pkg: 'gcc-x86-64-linux-gnu libc6-dev-amd64-cross' },
    { arch: 'aarch64', cc: process.env.CC_AARCH64 ?? (process.arch === 'arm64' ? (process.env.CC ?? 'cc') : 'aarch64-linux-gnu-gcc'), pkg: 'gcc-aarch64-linux-gnu libc6-dev-arm64-cross' },
  ];
  for (const { arch, cc, pkg } of targets) {
    try {
      execFileSync(cc, [...agentFlags, '-o', join(staging, `envy-agent-${arch}`), agentSource], { stdio: ['ignore', 'inherit', 'pipe'] });
    } catch (error) {
      const reason = error.code === 'ENOENT' ? `${cc} is not installed` : (error.stderr?.toString().trim() || error.message.split('\n')[0]);
      console.error(`envy build: skipped the ${arch} guest agent (${reason}); VM guests of that architecture need it: ` +
        `sudo apt-get install -y ${pkg} && npm run build`);
    }
  }
}

const old = join(root, `.dist-old-${process.pid}`);
try {
  renameSync(dist, old);
} catch (error) {
  if (error.code !== 'ENOENT') throw error;
}
renameSync(staging, dist);
rmSync(old, { recursive: true, force: true });
