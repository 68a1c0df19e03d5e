import { describe, expect, test } from 'vitest';
import { checkPlatform, platformOf } from '../../../src/build/executor.js';

describe("a build's platform is the plan's architecture, not the host's", () => {
  test('aarch64 is linux/arm64/v8, x86_64 linux/amd64', () => {
    expect(platformOf('aarch64')).toEqual({ os: 'linux', architecture: 'arm64', variant: 'v8' });
    expect(platformOf('x86_64')).toEqual({ os: 'linux', architecture: 'amd64' });
  });

  test('a base of another architecture is refused, naming both; the same one (any variant) is kept as found', () => {
    expect(() => checkPlatform({ os: 'linux', architecture: 'amd64' }, platformOf('aarch64'), 'debian:bookworm')).toThrow(
      'base image debian:bookworm is for linux/amd64, but this env builds for linux/arm64',
    );
    expect(checkPlatform({ os: 'linux', architecture: 'arm64' }, platformOf('aarch64'), 'x')).toEqual({ os: 'linux', architecture: 'arm64' });
    expect(checkPlatform(undefined, platformOf('aarch64'), 'x')).toEqual(platformOf('aarch64'));
  });
});
