/**
 * Boots a VM from a root filesystem tarball through VmRuntime, as the unprivileged test user (the
 * test bundles this file with esbuild): `vm-driver TARBALL ARCH UID GID NAME -- CMD...`.
 * The tarball becomes a store layer (unpacked with its owners in the user namespace) and an image
 * of one layer; the VM starts, runs CMD through the agent (its output on our stdout), and stops.
 * Prints `boot-ms N` to stderr. An EnvyError prints `ENVY_ERROR <message>` and exits 199.
 */
import { PassThrough } from 'node:stream';
import { unpackInUserNamespace } from '../../../src/build/userns.js';
import type { Arch } from '../../../src/config/types.js';
import { isEnvyError } from '../../../src/errors.js';
import { LayerStore } from '../../../src/image/store.js';
import { VmRuntime } from '../../../src/runtime/vm/runtime.js';

const [tarball, arch, uid, gid, name, dashes, ...argv] = process.argv.slice(2);
if (!tarball || !arch || dashes !== '--' || argv.length === 0) throw new Error('usage: vm-driver TARBALL ARCH UID GID NAME -- CMD...');
const identity = { uid: Number(uid), gid: Number(gid), name: name!, home: `/home/${name}` };

try {
  const store = LayerStore.open();
  const layer = await store.addLayer(tarball, {
    label: 'test rootfs',
    createdBy: 'vm-driver',
    chown: true,
    unpack: (source, dest, o) => unpackInUserNamespace(identity, source as string, dest, o.label),
  });
  const image = { key: `vm-driver-${arch}-${layer.diffId.slice(7, 19)}`, source: 'vm-driver', layers: [{ diffId: layer.diffId }], config: { env: [] }, createdAt: new Date().toISOString() };
  await store.writeImage(image);
  const stdin = new PassThrough();
  stdin.end();
  const runtime = new VmRuntime({ message: (line) => process.stderr.write(`${line}\n`), stdio: { stdin, stdout: process.stdout, stderr: process.stderr } });
  runtime.useImage({ image, store, identity, arch: arch as Arch, memory: 512 * 1024 * 1024, cpus: 1, ports: [] });
  const config = { id: `vm-driver-${arch}`, hostname: 'driver', rootfs: { layers: [] }, mounts: [], network: 'none' as const, user: identity, resources: {} };
  try {
    const started = await runtime.start(config);
    process.stderr.write(`boot-ms ${runtime.lastBootMs} ${JSON.stringify(started.vm)}\n`);
    process.exitCode = await runtime.exec(config, { argv, env: { PATH: '/bin:/usr/bin:/sbin:/usr/sbin' }, cwd: '/', root: false, identity, tty: false });
  } finally {
    await runtime.stop(config, 10_000);
  }
} catch (error) {
  if (!isEnvyError(error)) throw error;
  process.stderr.write(`ENVY_ERROR ${error.message}\n${error.details.join('\n')}\n`);
  process.exitCode = 199;
}
