/**
 * npm and pip package steps for real: Debian's npm and pip inside the build install from package
 * indexes served on 127.0.0.1 by this test (an npm registry's packument + tarball routes and a PEP 503
 * simple index), reached through NPM_CONFIG_REGISTRY and PIP_INDEX_URL passed from the host like a
 * corporate mirror would be. The resolved versions land in env.lock, and a rebuild after a newer
 * version was published keeps the locked one.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { debianHome, envy, runAsUser, userTempDir, type RunResult } from '../harness.js';

let project: { path: string; remove: () => void };
let home: { path: string; remove: () => void };
let scratch: string;
let server: Server;
let base = '';

/** What the indexes serve: url path -> body; published versions are added while the test runs. */
const routes = new Map<string, { type: string; body: Buffer }>();
const npmVersions = new Map<string, Record<string, unknown>>();
const pipFiles: string[] = [];

const run = (args: string[], timeoutMs = 600_000): Promise<RunResult> =>
  envy(args, {
    cwd: project.path,
    env: { ENVY_HOME: home.path, CI: 'true', NPM_CONFIG_REGISTRY: `${base}/npm/`, PIP_INDEX_URL: `${base}/simple/` },
    timeoutMs,
  });

function ok(result: RunResult): RunResult {
  if (result.code !== 0) throw new Error(`exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`);
  return result;
}

/** Publish `name@version` (a CLI printing its version) as an npm tarball made by `npm pack`. */
function publishNpm(name: string, version: string): void {
  const dir = mkdtempSync(join(scratch, 'npm-'));
  const bin = `${name}.js`;
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name, version, bin: { [name]: bin }, license: 'MIT' }));
  writeFileSync(join(dir, bin), `#!/usr/bin/env node\nconsole.log('${name} ${version}');\n`, { mode: 0o755 });
  const file = execFileSync('npm', ['pack', '--silent', '--pack-destination', dir], { cwd: dir, env: { ...process.env, npm_config_update_notifier: 'false' } })
    .toString()
    .trim()
    .split('\n')
    .pop()!;
  const tarball = readFileSync(join(dir, file));
  const path = `/npm/${name}/-/${name}-${version}.tgz`;
  routes.set(path, { type: 'application/octet-stream', body: tarball });
  npmVersions.set(`${name}@${version}`, {
    name,
    version,
    bin: { [name]: bin },
    dist: {
      tarball: `${base}${path}`,
      shasum: createHash('sha1').update(tarball).digest('hex'),
      integrity: `sha512-${createHash('sha512').update(tarball).digest('base64')}`,
    },
  });
  const versions = Object.fromEntries([...npmVersions.values()].filter((v) => v.name === name).map((v) => [v.version as string, v]));
  routes.set(`/npm/${name}`, { type: 'application/json', body: Buffer.from(JSON.stringify({ name, 'dist-tags': { latest: version }, versions })) });
}

/** Publish a pure-Python wheel `name==version` whose module prints its version. */
function publishPip(name: string, version: string): void {
  const module = name.replace(/-/g, '_');
  const wheel = `${module}-${version}-py3-none-any.whl`;
  const out = join(scratch, wheel);
  const script = [
    'import sys, zipfile',
    'out, module, name, version = sys.argv[1:]',
    'info = f"{module}-{version}.dist-info"',
    'files = {',
    '  f"{module}/__init__.py": f"VERSION = {version!r}\\n",',
    '  f"{info}/METADATA": f"Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n",',
    '  f"{info}/WHEEL": "Wheel-Version: 1.0\\nGenerator: envy-test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",',
    '}',
    'files[f"{info}/RECORD"] = "".join(f"{p},,\\n" for p in [*files, f"{info}/RECORD"])',
    'with zipfile.ZipFile(out, "w") as z:',
    '  for path, text in files.items(): z.writestr(path, text)',
  ].join('\n');
  execFileSync('python3', ['-c', script, out, module, name, version]);
  const body = readFileSync(out);
  routes.set(`/files/${wheel}`, { type: 'application/octet-stream', body });
  pipFiles.push(`<a href="${base}/files/${wheel}#sha256=${createHash('sha256').update(body).digest('hex')}">${wheel}</a>`);
  routes.set(`/simple/${name}/`, { type: 'text/html', body: Buffer.from(`<!DOCTYPE html><html><body>${pipFiles.join('\n')}</body></html>`) });
}

async function writeSpec(npm: string[]): Promise<void> {
  const spec = [
    'name: packages',
    'base: {debian: bookworm}',
    'packages:',
    '  apt: [nodejs, npm, python3-pip]',
    `  npm: [${npm.join(', ')}]`,
    '  pip: [envy-probe]',
    '',
  ].join('\n');
  await runAsUser('sh', ['-c', 'cat > "$1"', 'sh', join(project.path, 'env.yaml')], { input: spec });
}

describe('npm and pip package steps against indexes on 127.0.0.1', () => {
  beforeAll(async () => {
    project = userTempDir('envy-packages-');
    // The run's shared home: the Debian base and the .deb cache are made once per run (harness.ts).
    home = { path: debianHome(), remove: () => {} };
    scratch = mkdtempSync(join(tmpdir(), 'envy-indexes-'));
    mkdirSync(scratch, { recursive: true });
    server = createServer((request, response) => {
      // npm asks for scoped and unscoped names URL-encoded; the test's names need no decoding.
      const route = routes.get((request.url ?? '').split('?')[0]!);
      if (!route) return void response.writeHead(404).end();
      response.writeHead(200, { 'content-type': route.type, 'content-length': route.body.length }).end(route.body);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    base = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
    publishNpm('envy-probe-cli', '1.2.0');
    publishPip('envy-probe', '1.2.0');
    await writeSpec(['envy-probe-cli']);
  });
  afterAll(async () => {
    await run(['down', '--rm'], 60_000).catch(() => undefined);
    // A build's own server requests are done once `up` returned; closeAllConnections ends keep-alives.
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    rmSync(scratch, { recursive: true, force: true });
    project?.remove();
  });

  test('up installs both, and env.lock records the versions the indexes gave', async () => {
    ok(await run(['up']));
    expect(ok(await run(['exec', '--', 'envy-probe-cli'])).stdout.trim()).toBe('envy-probe-cli 1.2.0');
    expect(ok(await run(['exec', '--', 'python3', '-c', 'import envy_probe; print(envy_probe.VERSION)'])).stdout.trim()).toBe('1.2.0');
    const lock = parse(readFileSync(join(project.path, 'env.lock'), 'utf8')) as { packages: Record<string, Record<string, string>> };
    expect(lock.packages.npm).toEqual({ 'envy-probe-cli': '1.2.0' });
    expect(lock.packages.pip).toEqual({ 'envy-probe': '1.2.0' });
    expect(lock.packages.apt?.nodejs).toMatch(/^\d/);
  }, 900_000);

  test('a rerun of the npm step after a newer release keeps the version env.lock pins', async () => {
    publishNpm('envy-probe-cli', '1.3.0');
    publishNpm('envy-probe-extra', '2.0.0');
    // Adding a package reruns the npm step (apt stays cached); the pinned one must not float to 1.3.0.
    await writeSpec(['envy-probe-cli', 'envy-probe-extra']);
    const up = ok(await run(['up']));
    expect(up.stdout + up.stderr).toMatch(/apt: nodejs npm python3-pip: cached/);
    expect(ok(await run(['exec', '--', 'envy-probe-cli'])).stdout.trim()).toBe('envy-probe-cli 1.2.0');
    expect(ok(await run(['exec', '--', 'envy-probe-extra'])).stdout.trim()).toBe('envy-probe-extra 2.0.0');
    const lock = parse(readFileSync(join(project.path, 'env.lock'), 'utf8')) as { packages: Record<string, Record<string, string>> };
    expect(lock.packages.npm).toEqual({ 'envy-probe-cli': '1.2.0', 'envy-probe-extra': '2.0.0' });
  }, 600_000);
});
