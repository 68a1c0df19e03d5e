import { describe, expect, it } from 'vitest';
import { limitsWarning, rlimitFallback } from '../../../src/runtime/namespace/limits.js';
import type { EnvironmentConfig } from '../../../src/runtime/types.js';

const config = (resources: EnvironmentConfig['resources'], id = 'limits'): EnvironmentConfig => ({
  id,
  hostname: id,
  rootfs: { layers: ['/layer'] },
  mounts: [],
  network: 'host',
  resources,
});

describe('what resources get without cgroup delegation', () => {
  it('names exactly the limits that were asked for and what each falls back to', () => {
    expect(rlimitFallback({ cpus: 2 })).toBe('cpus is not enforced');
    expect(rlimitFallback({ memory: 1, pids: 1, cpus: 1 })).toBe('memory is approximated with RLIMIT_DATA per process, pids with RLIMIT_NPROC, cpus is not enforced');
  });

  it('warns once per message, with the reason, and not at all when delegated or unasked', () => {
    const none = { kind: 'none' as const, reason: 'no unified cgroup v2 hierarchy' };
    expect(limitsWarning(config({ memory: 1 << 20 }, 'a'), none)).toBe(
      'envy: warning: cgroup limits are unavailable (no unified cgroup v2 hierarchy): memory is approximated with RLIMIT_DATA per process\n',
    );
    expect(limitsWarning(config({ memory: 1 << 20 }, 'b'), none)).toBeUndefined();
    expect(limitsWarning(config({}), none)).toBeUndefined();
    expect(limitsWarning(config({ pids: 5 }), { kind: 'delegated', dir: '/sys/fs/cgroup/x' })).toBeUndefined();
  });
});
