/**
 * Runs one NamespaceRuntime call as the unprivileged test user (the e2e test bundles this
 * file with esbuild, since the user cannot load TypeScript): `driver OP JSON`.
 * The workload's exit code becomes ours; an EnvyError prints `ENVY_ERROR <message>` and exits 199.
 */
import { isEnvyError } from '../../../src/errors.js';
import { NamespaceRuntime } from '../../../src/runtime/namespace/runtime.js';
import type { EnvironmentConfig, ProcessSpec } from '../../../src/runtime/types.js';

const [op, json] = process.argv.slice(2);
const input = JSON.parse(json ?? '{}') as { config: EnvironmentConfig; process?: ProcessSpec; graceMs?: number };
const runtime = new NamespaceRuntime();

try {
  switch (op) {
    case 'runOnce':
      process.exitCode = await runtime.runOnce(input.config, input.process!);
      break;
    case 'exec':
      process.exitCode = await runtime.exec(input.config, input.process!);
      break;
    case 'start':
      process.stdout.write(`${JSON.stringify(await runtime.start(input.config))}\n`);
      break;
    case 'stop':
      await runtime.stop(input.config, input.graceMs ?? 1000);
      break;
    case 'status':
      process.stdout.write(`${JSON.stringify(await runtime.status(input.config))}\n`);
      break;
    default:
      throw new Error(`unknown op ${op}`);
  }
} catch (error) {
  if (!isEnvyError(error)) throw error;
  process.stderr.write(`ENVY_ERROR ${error.message}${error.hint ? ` (hint: ${error.hint})` : ''}\n`);
  process.exitCode = 199;
}
