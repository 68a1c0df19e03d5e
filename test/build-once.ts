/** Build dist/ (bundle + native helper) once per test run: CLI and e2e tests run the real binary. */
import { execFileSync } from 'node:child_process';
import { resolve } from 'node:path';

// vitest runs a project's global setup before the root one, and the e2e setup copies dist/ for the
// unprivileged user: both call this, and the first call builds.
export default function buildOnce(): void {
  if (process.env.ENVY_TEST_BUILT === '1') return;
  execFileSync(process.execPath, [resolve(import.meta.dirname, '../scripts/build.mjs')], { stdio: 'inherit' });
  process.env.ENVY_TEST_BUILT = '1';
}
