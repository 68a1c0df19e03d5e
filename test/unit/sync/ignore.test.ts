// The ignore matcher against gitignore(5)'s documented semantics, table-driven.
import { describe, expect, it } from 'vitest';
import { IgnoreMatcher, SYNC_TEMP_PREFIX } from '../../../src/sync/ignore.js';

type Case = [path: string, isDir: boolean, ignored: boolean];

function check(matcher: IgnoreMatcher, cases: Case[]): void {
  const wrong = cases.filter(([path, isDir, expected]) => matcher.ignores(path, isDir) !== expected);
  expect(wrong.map(([path, isDir, expected]) => `${path}${isDir ? '/' : ''} should ${expected ? '' : 'not '}be ignored`)).toEqual([]);
}

function rootRules(text: string): IgnoreMatcher {
  const matcher = new IgnoreMatcher();
  matcher.setIgnoreFile('', '.gitignore', text);
  return matcher;
}

describe('gitignore patterns', () => {
  it('a pattern without a slash matches a name at any depth', () => {
    check(rootRules('*.log\nfoo\n'), [
      ['a.log', false, true],
      ['dir/sub/b.log', false, true],
      ['a.logx', false, false],
      ['foo', false, true],
      ['x/foo', true, true],
      ['x/foo/inner.txt', false, true],
      ['foobar', false, false],
    ]);
  });

  it('a trailing slash matches directories only', () => {
    check(rootRules('build/\n'), [
      ['build', true, true],
      ['build', false, false],
      ['src/build', true, true],
      ['src/build/out.o', false, true],
    ]);
  });

  it('a leading or middle slash anchors the pattern to the ignore file directory', () => {
    check(rootRules('/root.txt\ndoc/frotz\n'), [
      ['root.txt', false, true],
      ['sub/root.txt', false, false],
      ['doc/frotz', false, true],
      ['a/doc/frotz', false, false],
    ]);
  });

  it('* and ? do not cross slashes; character classes work', () => {
    check(rootRules('a/*.c\nfile?.txt\n[abc]x\n[!0-9]y\n'), [
      ['a/b.c', false, true],
      ['a/b/c.c', false, false],
      ['file1.txt', false, true],
      ['file12.txt', false, false],
      ['bx', false, true],
      ['dx', false, false],
      ['ay', false, true],
      ['5y', false, false],
    ]);
  });

  it('leading **/ matches in all directories', () => {
    check(rootRules('**/foo\n**/foo/bar\n'), [
      ['foo', false, true],
      ['a/b/foo', false, true],
      ['bar', false, false],
      ['x/foo/bar', false, true],
    ]);
  });

  it('trailing /** matches everything inside, not the directory itself', () => {
    const matcher = rootRules('abc/**\n');
    check(matcher, [
      ['abc/x', false, true],
      ['abc/x/y', false, true],
      ['abc', false, false],
    ]);
  });

  it('/**/ matches zero or more directories', () => {
    check(rootRules('a/**/b\n'), [
      ['a/b', false, true],
      ['a/x/b', false, true],
      ['a/x/y/b', false, true],
      ['a/x/y/c', false, false],
    ]);
  });

  it('other consecutive asterisks behave like one', () => {
    check(rootRules('x**y\n'), [
      ['xy', false, true],
      ['xaby', false, true],
      ['xa/by', false, false],
    ]);
  });

  it('negation re-includes; the last matching pattern wins', () => {
    check(rootRules('*.log\n!keep.log\n'), [
      ['a.log', false, true],
      ['keep.log', false, false],
      ['d/keep.log', false, false],
    ]);
    check(rootRules('!keep.log\n*.log\n'), [['keep.log', false, true]]);
  });

  it('a file cannot be re-included when its parent directory is excluded', () => {
    check(rootRules('out/\n!out/keep.txt\n'), [
      ['out/keep.txt', false, true],
      ['out', true, true],
    ]);
    // Excluding the contents (not the directory) leaves room to re-include.
    check(rootRules('out/*\n!out/keep.txt\n'), [
      ['out/keep.txt', false, false],
      ['out/other.txt', false, true],
    ]);
  });

  it('comments, blank lines, escapes and trailing spaces', () => {
    check(rootRules('# comment\n\n\\#hash\n\\!bang\ntrail   \nspace\\ \n'), [
      ['# comment', false, false],
      ['#hash', false, true],
      ['!bang', false, true],
      ['trail', false, true],
      ['space ', false, true],
      ['space', false, false],
    ]);
  });

  it('CRLF line endings', () => {
    check(rootRules('*.tmp\r\nnode_modules/\r\n'), [
      ['a.tmp', false, true],
      ['node_modules', true, true],
    ]);
  });
});

describe('nested ignore files and sources', () => {
  it('patterns in a nested .gitignore are relative to its directory and override outer ones', () => {
    const matcher = new IgnoreMatcher();
    matcher.setIgnoreFile('', '.gitignore', '*.gen\n');
    matcher.setIgnoreFile('pkg', '.gitignore', '/local.txt\n!keep.gen\n');
    check(matcher, [
      ['pkg/local.txt', false, true],
      ['local.txt', false, false],
      ['pkg/sub/local.txt', false, false],
      ['pkg/keep.gen', false, false],
      ['pkg/sub/keep.gen', false, false],
      ['keep.gen', false, true],
      ['pkg/other.gen', false, true],
    ]);
  });

  it('workspace.ignore patterns are the baseline; .gitignore and .envyignore override them', () => {
    const matcher = new IgnoreMatcher(['*.secret', 'data/']);
    matcher.setIgnoreFile('', '.gitignore', '!public.secret\n');
    check(matcher, [
      ['a.secret', false, true],
      ['public.secret', false, false],
      ['data', true, true],
      ['data/x', false, true],
    ]);
  });

  it('.envyignore overrides .gitignore in the same directory (re-include a git-ignored .env)', () => {
    const matcher = new IgnoreMatcher();
    matcher.setIgnoreFile('', '.gitignore', '.env\nnode_modules/\n');
    matcher.setIgnoreFile('', '.envyignore', '!.env\n*.heavy\n');
    check(matcher, [
      ['.env', false, false],
      ['node_modules', true, true],
      ['x.heavy', false, true],
    ]);
  });

  it('dropping an ignore file drops its rules', () => {
    const matcher = new IgnoreMatcher();
    matcher.setIgnoreFile('', '.gitignore', 'dist/\n');
    expect(matcher.ignores('dist/a.js', false)).toBe(true);
    matcher.setIgnoreFile('', '.gitignore', null);
    expect(matcher.ignores('dist/a.js', false)).toBe(false);
  });

  it('.git is synced unless a pattern says otherwise; envy temp files never are', () => {
    const matcher = new IgnoreMatcher();
    check(matcher, [
      ['.git', true, false],
      ['.git/HEAD', false, false],
      [`${SYNC_TEMP_PREFIX}abc`, false, true],
      [`deep/dir/${SYNC_TEMP_PREFIX}abc`, false, true],
    ]);
  });
});
