// `npm run bench`: runs every bench/**/*.bench.mjs in turn (or those matching argv filters),
// after building dist/. Each benchmark prints its own table with its anchors side by side.
import { execFileSync, spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const filters = process.argv.slice(2);

function find(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? find(join(dir, entry.name)) : entry.name.endsWith('.bench.mjs') ? [join(dir, entry.name)] : [],
  );
}

execFileSync(process.execPath, [join(root, 'scripts/build.mjs')], { stdio: 'inherit' });
let failed = 0;
for (const file of find(join(root, 'bench')).sort()) {
  const name = relative(root, file);
  if (filters.length > 0 && !filters.some((f) => name.includes(f))) continue;
  console.log(`\n## ${name}\n`);
  const result = spawnSync(process.execPath, [file], { stdio: 'inherit', cwd: root });
  if (result.status !== 0) {
    failed++;
    console.log(`(${name} exited with ${result.status ?? result.signal})`);
  }
}
process.exitCode = failed > 0 ? 1 : 0;
