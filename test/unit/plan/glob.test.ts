import { mkdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { expandGlob, hasMagic, segmentRegExp } from '../../../src/plan/glob.js';
import { project } from './helpers.js';

describe('segment patterns', () => {
  const cases: [pattern: string, matches: string[], misses: string[]][] = [
    ['*.json', ['package.json', '.json', 'a.b.json'], ['package.jsonc', 'json']],
    ['*', ['a', '.hidden', 'a.b'], []],
    ['file?.txt', ['file1.txt', 'filea.txt'], ['file.txt', 'file10.txt']],
    ['[abc].ts', ['a.ts', 'c.ts'], ['d.ts', 'ab.ts']],
    ['[a-c]x', ['bx'], ['dx']],
    ['[!a-c]x', ['dx', 'Zx'], ['ax']],
    ['[]]', [']'], ['a']],
    ['{src,lib}.d', ['src.d', 'lib.d'], ['test.d', '{src,lib}.d']],
    ['*.{ts,tsx}', ['a.ts', 'b.tsx'], ['c.js']],
    ['{a,{b,c}}', ['a', 'b', 'c'], ['d']],
    ['\\*.txt', ['*.txt'], ['a.txt']],
    ['a+b(c).txt', ['a+b(c).txt'], ['aab(c).txt']],
    ['[unclosed', ['[unclosed'], ['u']],
    ['{unclosed', ['{unclosed'], ['unclosed']],
  ];
  test.each(cases)('%s', (pattern, matches, misses) => {
    const regexp = segmentRegExp(pattern);
    for (const name of matches) expect(regexp.test(name), `${pattern} should match ${name}`).toBe(true);
    for (const name of misses) expect(regexp.test(name), `${pattern} should not match ${name}`).toBe(false);
  });

  test('hasMagic tells literal paths from patterns', () => {
    expect(hasMagic('src/main.ts')).toBe(false);
    expect(hasMagic('src/*.ts')).toBe(true);
    expect(hasMagic('a{b,c}')).toBe(true);
    expect(hasMagic('a[bc]')).toBe(true);
  });
});

describe('expandGlob', () => {
  const dir = project({
    'package.json': '{}',
    'package-lock.json': '{}',
    '.npmrc': 'x',
    'src/a.ts': '',
    'src/b.js': '',
    'src/deep/c.ts': '',
    'src/deep/deeper/d.ts': '',
    'docs/readme.md': '',
  });
  mkdirSync(join(dir, 'empty'));
  symlinkSync('src', join(dir, 'src-link'));
  symlinkSync('.', join(dir, 'src/deep/loop'));

  test.each([
    ['package*.json', ['package-lock.json', 'package.json']],
    ['*rc', ['.npmrc', 'src']],
    ['src/*.ts', ['src/a.ts']],
    ['src/**/*.ts', ['src/a.ts', 'src/deep/c.ts', 'src/deep/deeper/d.ts']],
    ['**/*.md', ['docs/readme.md']],
    ['src/**', ['src']],
    ['src/deep/**/d.ts', ['src/deep/deeper/d.ts']],
    ['*/deep', ['src-link/deep', 'src/deep']],
    ['src/*', ['src/a.ts', 'src/b.js', 'src/deep']],
    ['nothing/*.ts', []],
    ['package.json/*', []],
    ['src/{a.ts,b.js}', ['src/a.ts', 'src/b.js']],
    ['src-link/*.ts', ['src-link/a.ts']],
  ])('%s', (pattern, expected) => {
    expect(expandGlob(dir, pattern)).toEqual(expected);
  });

  test('** does not descend into symlinked directories, so a link loop ends', () => {
    const all = expandGlob(dir, '**/*.ts');
    expect(all).toEqual(['src/a.ts', 'src/deep/c.ts', 'src/deep/deeper/d.ts']);
  });

  test('a lone ** names every top-level entry', () => {
    expect(expandGlob(dir, '**')).toEqual(['.npmrc', 'docs', 'empty', 'package-lock.json', 'package.json', 'src', 'src-link']);
  });
});
