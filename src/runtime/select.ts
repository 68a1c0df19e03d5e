/** The Runtime for an environment's backend. The VM runtime is loaded only for VM environments. */
import { NamespaceRuntime } from './namespace/runtime.js';
import type { Runtime } from './types.js';

export async function runtimeFor(backend: 'namespace' | 'vm'): Promise<Runtime> {
  if (backend === 'vm') {
    const { VmRuntime } = await import('./vm/runtime.js');
    return new VmRuntime();
  }
  return new NamespaceRuntime();
}
