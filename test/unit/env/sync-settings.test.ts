import { describe, expect, test } from 'vitest';
import type { WorkspaceSpec } from '../../../src/config/types.js';
import { syncSettings } from '../../../src/env/workspace-sync.js';
import type { MountRequest } from '../../../src/runtime/types.js';

const workspace = { path: '/workspace', sync: 'bind', direction: 'two-way', ignore: ['node_modules'] } as unknown as WorkspaceSpec;
const mounts: MountRequest[] = [
  { type: 'bind', source: '/project', target: '/workspace', vm: 'sync' },
  { type: 'bind', source: '/state/volumes/cache', target: '/cache', readonly: false, vm: 'sync' },
  { type: 'bind', source: '/home/u/data', target: '/data', readonly: true, vm: 'sync' },
  // A file bind: copied at boot, not synced.
  { type: 'bind', source: '/home/u/.gitconfig', target: '/home/dev/.gitconfig', readonly: false },
  { type: 'tmpfs', target: '/tmp' },
];

describe('syncSettings', () => {
  test('a VM keeps its volumes and directory binds live beside the workspace: two-way, one-way when read-only', () => {
    expect(syncSettings('/project', workspace, 'vm', mounts)).toEqual({
      source: '/project',
      direction: 'two-way',
      ignore: ['node_modules'],
      guest: '/workspace',
      mounts: [
        { source: '/state/volumes/cache', guest: '/cache', direction: 'two-way' },
        { source: '/home/u/data', guest: '/data', direction: 'one-way' },
      ],
    });
  });

  test('a namespace environment syncs only its workspace (its mounts are bind mounts)', () => {
    expect(syncSettings('/project', workspace, 'namespace', mounts)).toEqual({ source: '/project', direction: 'two-way', ignore: ['node_modules'] });
  });

  test('a VM without other synced mounts records none', () => {
    expect(syncSettings('/project', workspace, 'vm', mounts.slice(0, 1))).not.toHaveProperty('mounts');
  });
});
