import { expect, test } from 'vitest';
import { AptDownloadProgress } from '../../../src/build/apt-progress.js';

// As apt-get 2.6 (bookworm) prints them without a terminal; the index downloads come first.
const output = [
  'Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]',
  'Fetched 6591 kB in 3s (2172 kB/s)',
  'Reading package lists...',
  'Need to get 2,606 kB/16.5 MB of archives.',
  'After this operation, 61.2 MB of additional disk space will be used.',
  'Get:1 http://deb.debian.org/debian-security bookworm-security/main amd64 python3.11-minimal amd64 3.11.2-6+deb12u9 [2055 kB]',
  'Get:2 http://deb.debian.org/debian bookworm/main amd64 python3-minimal amd64 3.11.2-1+b1 [26.3 kB]',
  'Get:3 http://deb.debian.org/debian-security bookworm-security/main amd64 python3.11 amd64 3.11.2-6+deb12u9 [515 kB]',
  'Get:4 http://deb.debian.org/debian bookworm/main amd64 libpython3-stdlib amd64 3.11.2-1+b1 [9312 B]',
  'Fetched 2606 kB in 1s (2110 kB/s)',
  'Selecting previously unselected package python3.11-minimal.',
];

test('archive downloads add up to the total apt announced; index downloads before it do not count', () => {
  const progress = new AptDownloadProgress();
  const seen = output.map((line) => progress.line(line)).filter((p) => p !== undefined);
  expect(seen).toEqual([
    { done: 0, total: 2_606_000 },
    { done: 2_055_000, total: 2_606_000 },
    { done: 2_081_300, total: 2_606_000 },
    { done: 2_596_300, total: 2_606_000 },
    { done: 2_605_612, total: 2_606_000 },
    { done: 2_606_000, total: 2_606_000 },
  ]);
  // After "Fetched" nothing more counts (dpkg's own lines follow).
  expect(progress.line('Get:9 http://x y z [1 kB]')).toBeUndefined();
});

test('nothing to fetch (all in the .deb cache) reports nothing', () => {
  const progress = new AptDownloadProgress();
  expect(progress.line('Need to get 0 B/16.5 MB of archives.')).toBeUndefined();
  expect(progress.line('Get:1 http://deb.debian.org/debian bookworm/main amd64 jq amd64 1.6-2.1 [135 kB]')).toBeUndefined();
});

test('a size that overshoots the total (rounded units) is clamped to it', () => {
  const progress = new AptDownloadProgress();
  progress.line('Need to get 1.0 MB of archives.');
  expect(progress.line('Get:1 http://deb.debian.org/debian bookworm/main amd64 big amd64 1 [1049 kB]')).toEqual({ done: 1_000_000, total: 1_000_000 });
});
