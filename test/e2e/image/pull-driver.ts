/** A separate envy-like process for crash and concurrency tests: `node pull-driver.mjs REF STORE_ROOT`. */
import { pullImage } from '../../../src/image/registry.js';
import { LayerStore } from '../../../src/image/store.js';

const [ref, root] = process.argv.slice(2);
const result = await pullImage(ref!, LayerStore.open(root!));
process.stdout.write(`${result.manifestDigest}\n`);
