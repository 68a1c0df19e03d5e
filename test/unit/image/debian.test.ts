import { describe, expect, test } from 'vitest';
import { debianArch, mmdebstrapArgs, sourcesFor } from '../../../src/image/debian.js';

describe('Debian base sources', () => {
  test('a stable suite gets main, -updates and -security from deb.debian.org', () => {
    expect(sourcesFor({ suite: 'bookworm' })).toEqual([
      'deb http://deb.debian.org/debian bookworm main',
      'deb http://deb.debian.org/debian bookworm-updates main',
      'deb http://deb.debian.org/debian-security bookworm-security main',
    ]);
  });

  test('rolling suites have no -updates or -security pockets', () => {
    expect(sourcesFor({ suite: 'sid' })).toEqual(['deb http://deb.debian.org/debian sid main']);
  });

  test('a snapshot pins every pocket to snapshot.debian.org at that time', () => {
    const lines = sourcesFor({ suite: 'bookworm', snapshot: '20240601T000000Z' });
    expect(lines[0]).toBe('deb http://snapshot.debian.org/archive/debian/20240601T000000Z/ bookworm main');
    expect(lines[2]).toBe('deb http://snapshot.debian.org/archive/debian-security/20240601T000000Z/ bookworm-security main');
  });

  test('a custom mirror is used for main and its debian-security sibling', () => {
    expect(sourcesFor({ suite: 'bookworm', mirror: 'http://mirror.example/debian' })[2]).toBe(
      'deb http://mirror.example/debian-security bookworm-security main',
    );
  });

  test('a malformed snapshot is a config error', () => {
    expect(() => sourcesFor({ suite: 'bookworm', snapshot: 'yesterday' })).toThrow(/not a snapshot.debian.org timestamp/);
  });

  test('mmdebstrap runs rootless (unshare), minbase, tar output, Valid-Until off only for snapshots', () => {
    const plain = mmdebstrapArgs({ suite: 'bookworm' }, '/tmp/out.tar', { arch: 'amd64' });
    expect(plain.slice(0, 4)).toEqual(['--mode=unshare', '--variant=minbase', '--architectures=amd64', '--format=tar']);
    expect(plain).toContain('/tmp/out.tar');
    expect(plain.join(' ')).not.toContain('Check-Valid-Until');
    const pinned = mmdebstrapArgs({ suite: 'bookworm', snapshot: '20240601T000000Z' }, '/tmp/out.tar', { arch: 'arm64' });
    expect(pinned).toContain('--aptopt=Acquire::Check-Valid-Until "false"');
    expect(pinned).toContain('--architectures=arm64');
  });

  test('a foreign architecture bootstraps in root mode (inside envy-ns), without mmdebstrap\'s arch-test check', () => {
    const foreign = { emulation: { arch: 'aarch64' as const, via: 'host' as const, interpreter: '/q' }, keepId: '1000:1000', tmpDir: '/tmp' };
    const args = mmdebstrapArgs({ suite: 'bookworm' }, '/tmp/out.tar', { arch: 'arm64', foreign });
    expect(args.slice(0, 5)).toEqual(['--mode=root', '--variant=minbase', '--architectures=arm64', '--format=tar', '--skip=check/qemu']);
    expect(args).toContain('--dpkgopt=force-unsafe-io');
    expect(args).toContain('--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr');
    expect(mmdebstrapArgs({ suite: 'bookworm' }, '/tmp/out.tar', { arch: 'amd64' }).join(' ')).not.toMatch(/unsafe-io|merged-usr/);
  });

  test('Node architectures map to Debian ones', () => {
    expect(debianArch('x64')).toBe('amd64');
    expect(debianArch('arm64')).toBe('arm64');
    expect(() => debianArch('mips')).toThrow(/no Debian architecture/);
  });
});
