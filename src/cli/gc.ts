/** `envy gc`: remove images, layers and blobs no environment or recent build uses, and say what it freed. */
import { removeInUserNamespace } from '../build/userns.js';
import { LayerStore } from '../image/store.js';
import { hostIdentity } from '../runtime/namespace/identity.js';
import { formatBytes } from './ui/events.js';

export async function run(args: { grace: number; quiet: boolean; json: boolean }): Promise<number> {
  const identity = hostIdentity();
  // Layers hold files of subordinate owners: only root in the user namespace can delete them.
  const store = LayerStore.open();
  const result = await store.gc({ graceMs: args.grace * 1000, removeTree: (path) => removeInUserNamespace(identity, [path]) });
  // VM disks made from images that are gone, unless an environment's disk still builds on one.
  const { gcVmImages } = await import('../runtime/vm/image.js');
  const { vmBackingKeys } = await import('../runtime/vm/runtime.js');
  const vm = gcVmImages((key) => store.hasImage(key), vmBackingKeys());
  result.bytesFreed += vm.bytesFreed;
  if (args.json) process.stdout.write(`${JSON.stringify({ ...result, vmImages: vm.removed }, null, 2)}\n`);
  else if (!args.quiet) {
    process.stdout.write(
      `removed ${result.images.length} images, ${result.layers.length} layers, ${result.blobs.length} blobs${vm.removed.length ? `, ${vm.removed.length} VM disks` : ''}; freed ${formatBytes(result.bytesFreed)}\n`,
    );
  }
  return 0;
}
