/**
 * The installed envy package's root (where templates/, schemas/ and dist/ live).
 * Code runs either bundled (dist/main.js, chunks in dist/chunks/) or from src/
 * under vitest, so walk up from this module to the package.json named "envy".
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let cached: string | undefined;

export function packageRoot(): string {
  if (cached) return cached;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest)) {
      try {
        if ((JSON.parse(readFileSync(manifest, 'utf8')) as { name?: string }).name === 'envy') return (cached = dir);
      } catch {
        // A broken package.json above us is not ours; keep walking.
      }
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`cannot find envy's package root above ${fileURLToPath(import.meta.url)}`);
    dir = parent;
  }
}
