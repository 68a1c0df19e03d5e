/**
 * e2e setup. Runtime tests must prove rootlessness, so when the suite runs as
 * root (CI) it creates an unprivileged user with /etc/subuid and /etc/subgid
 * entries and installs a copy of the built envy where that user can read it.
 * Run as a normal user, tests use that user and the repo's own build.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { TestProject } from 'vitest/node';
import buildOnce from '../build-once.js';

// ENVY_TEST_USER lets concurrent suites (several worktrees on one machine) keep their processes apart.
const TEST_USER = process.env.ENVY_TEST_USER ?? 'envtest';
const repo = resolve(import.meta.dirname, '../..');

function ensureSubordinateRange(file: string, user: string): void {
  const lines = existsSync(file) ? readFileSync(file, 'utf8').split('\n') : [];
  if (lines.some((line) => line.startsWith(`${user}:`))) return;
  // Pick a range above every existing one so two users never overlap.
  const top = lines
    .map((line) => line.split(':'))
    .filter((parts) => parts.length === 3)
    .reduce((max, [, start, count]) => Math.max(max, Number(start) + Number(count)), 100000);
  execFileSync('sh', ['-c', `echo '${user}:${top}:65536' >> ${file}`]);
}

export default function setup(project: TestProject): () => void {
  buildOnce();
  let root = repo;
  let cleanup = (): void => {};
  if (process.getuid?.() === 0) {
    try {
      execFileSync('id', ['-u', TEST_USER], { stdio: 'ignore' });
    } catch {
      execFileSync('useradd', ['-m', '-s', '/bin/bash', TEST_USER], { stdio: 'inherit' });
    }
    ensureSubordinateRange('/etc/subuid', TEST_USER);
    ensureSubordinateRange('/etc/subgid', TEST_USER);
    // The repo may live under /root (mode 0700): install a readable copy of the build.
    root = mkdtempSync(join(tmpdir(), 'envy-e2e-'));
    chmodSync(root, 0o755);
    for (const part of ['bin', 'dist', 'schemas', 'templates', 'package.json', 'env.example.yaml']) {
      if (existsSync(join(repo, part))) cpSync(join(repo, part), join(root, part), { recursive: true });
    }
    execFileSync('chmod', ['-R', 'a+rX', root]);
    cleanup = () => rmSync(root, { recursive: true, force: true });
  }
  const user = process.getuid?.() === 0 ? TEST_USER : execFileSync('id', ['-un']).toString().trim();
  // One ENVY_HOME for the whole run, for the files that build Debian-based images: the bootstrapped
  // base layer and the apt .deb cache are made once per run instead of once per file (~30 s each).
  const debianHome = mkdtempSync(join(tmpdir(), 'envy-e2e-debian-home-'));
  if (process.getuid?.() === 0) execFileSync('chown', [`${TEST_USER}:`, debianHome]);
  chmodSync(debianHome, 0o755);
  project.provide('envyRoot', root);
  project.provide('envyUser', user);
  project.provide('debianHome', debianHome);
  return () => {
    // Layers hold files of subordinate owners: only root, or the user inside its namespace, can remove them.
    if (process.getuid?.() === 0) rmSync(debianHome, { recursive: true, force: true });
    else {
      try {
        execFileSync(join(root, 'dist/envy-ns'), ['userns', '--', 'rm', '-rf', debianHome], { stdio: 'ignore' });
      } catch {
        // No user namespace here (the suites said why): nothing subuid-owned was made either.
        rmSync(debianHome, { recursive: true, force: true });
      }
    }
    cleanup();
  };
}

declare module 'vitest' {
  export interface ProvidedContext {
    envyRoot: string;
    envyUser: string;
    debianHome: string;
  }
}
