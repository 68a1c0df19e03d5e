import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { build } from 'esbuild';
import { describe, expect, it } from 'vitest';
// @ts-expect-error: plain .mjs without types, shared with scripts/build.mjs
import { bundleOptions } from '../../../scripts/bundle-config.mjs';
import { tempDir } from './helpers.js';

const root = resolve(import.meta.dirname, '../../..');

describe('the loader bundled the way scripts/build.mjs bundles the CLI', () => {
  // vitest runs the sources through Node's module loader; the shipped CLI is an esbuild bundle whose
  // CommonJS interop differs (ajv's named export is missing there), so the bundle is tested too.
  it('loads a good file and explains a bad one', async () => {
    const dir = tempDir();
    writeFileSync(
      join(dir, 'entry.ts'),
      `import { loadSpec } from ${JSON.stringify(join(root, 'src/config/load.ts'))};
const good = await loadSpec(${JSON.stringify(join(root, 'env.example.yaml'))}, { env: {} });
let bad = '';
try { await loadSpec(process.argv[2], { env: {}, cwd: ${JSON.stringify(dir)} }); } catch (error) { bad = error.message; }
console.log(JSON.stringify({ name: good.spec.name, bad }));
`,
    );
    writeFileSync(join(dir, 'env.yaml'), 'name: demo\nbase: {host: true}\nnetwork: hots\n');
    await build(bundleOptions(root, { entryPoints: { main: join(dir, 'entry.ts') }, outdir: join(dir, 'dist') }));
    const result = spawnSync(process.execPath, [join(dir, 'dist/main.js'), 'env.yaml'], { cwd: dir, encoding: 'utf8', timeout: 30_000 });
    expect(result.stderr).toBe('');
    expect(JSON.parse(result.stdout)).toEqual({
      name: 'example',
      bad: 'env.yaml:3:10: network: expected one of host, none, private; got "hots"',
    });
  });
});
