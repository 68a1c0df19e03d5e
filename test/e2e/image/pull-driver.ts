/**
 * A separate envy-like process for crash and concurrency tests: `node pull-driver.mjs REF STORE_ROOT [--worker]`.
 * With --worker it pulls as the build does: layers unpacked with their owners by one layer worker in the
 * user namespace (the bundle must then live in an envy dist/ dir, next to the worker and the helper).
 */
import { removeInUserNamespace, UnpackSession } from '../../../src/build/userns.js';
import { pullImage } from '../../../src/image/registry.js';
import { LayerStore } from '../../../src/image/store.js';

const [ref, root, mode] = process.argv.slice(2);
if (mode === '--worker') {
  const identity = { uid: process.getuid!(), gid: process.getgid!() };
  const session = await UnpackSession.start(identity);
  try {
    const result = await pullImage(ref!, LayerStore.open(root!), { chown: true, unpack: session.unpack, removeTree: (path) => removeInUserNamespace(identity, [path]) });
    process.stdout.write(`${result.manifestDigest}\n`);
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n`);
    process.exitCode = 1;
  } finally {
    await session.close();
  }
} else {
  const result = await pullImage(ref!, LayerStore.open(root!));
  process.stdout.write(`${result.manifestDigest}\n`);
}
