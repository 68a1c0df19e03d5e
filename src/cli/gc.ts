/** `envy gc`: remove images, layers and blobs no environment or recent build uses, and say what it freed. */
import { removeInUserNamespace } from '../build/userns.js';
import { LayerStore } from '../image/store.js';
import { hostIdentity } from '../runtime/namespace/identity.js';
import { formatBytes } from './ui/events.js';

export async function run(args: { grace: number; quiet: boolean; json: boolean }): Promise<number> {
  const identity = hostIdentity();
  // Layers hold files of subordinate owners: only root in the user namespace can delete them.
  const result = await LayerStore.open().gc({ graceMs: args.grace * 1000, removeTree: (path) => removeInUserNamespace(identity, [path]) });
  if (args.json) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  else if (!args.quiet) {
    process.stdout.write(
      `removed ${result.images.length} images, ${result.layers.length} layers, ${result.blobs.length} blobs; freed ${formatBytes(result.bytesFreed)}\n`,
    );
  }
  return 0;
}
