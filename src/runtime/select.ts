/** The Runtime for an environment's backend. The VM runtime is loaded only for VM environments. */
import { writeSync } from 'node:fs';
import { PassThrough, Writable } from 'node:stream';
import { NamespaceRuntime } from './namespace/runtime.js';
import type { Runtime } from './types.js';

export async function runtimeFor(backend: 'namespace' | 'vm'): Promise<Runtime> {
  if (backend === 'vm') {
    const { VmRuntime } = await import('./vm/runtime.js');
    return new VmRuntime();
  }
  return new NamespaceRuntime();
}

/** A runtime of `backend` whose processes write stdout and stderr to `fd` and read no stdin (hook logs). */
export async function runtimeWritingTo(backend: 'namespace' | 'vm', fd: number): Promise<Runtime> {
  if (backend === 'vm') {
    const { VmRuntime } = await import('./vm/runtime.js');
    // Synchronous writes: the caller closes fd as soon as the process has exited.
    const out = new Writable({
      write(chunk: Buffer, _encoding, done) {
        writeSync(fd, chunk);
        done();
      },
    });
    const stdin = new PassThrough();
    stdin.end();
    return new VmRuntime({ stdio: { stdin, stdout: out, stderr: out } });
  }
  return new NamespaceRuntime({ stdio: ['inherit', fd, fd] });
}
