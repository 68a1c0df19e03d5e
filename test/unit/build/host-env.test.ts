import { describe, expect, test } from 'vitest';
import { buildPassthroughEnv } from '../../../src/build/host-env.js';

describe('buildPassthroughEnv', () => {
  test('passes proxies in both spellings and package index settings, nothing else', () => {
    const env = buildPassthroughEnv({
      http_proxy: 'http://proxy:3128',
      HTTPS_PROXY: 'http://proxy:3128',
      NO_PROXY: 'localhost',
      PIP_INDEX_URL: 'http://mirror/simple/',
      NPM_CONFIG_REGISTRY: 'http://mirror/npm/',
      HOME: '/home/me',
      PATH: '/usr/bin',
      SSH_AUTH_SOCK: '/run/agent',
    });
    expect(env).toEqual({
      http_proxy: 'http://proxy:3128',
      HTTPS_PROXY: 'http://proxy:3128',
      NO_PROXY: 'localhost',
      PIP_INDEX_URL: 'http://mirror/simple/',
      NPM_CONFIG_REGISTRY: 'http://mirror/npm/',
    });
  });

  test('an empty value is the same as unset', () => {
    expect(buildPassthroughEnv({ https_proxy: '', PIP_INDEX_URL: '' })).toEqual({});
  });
});
