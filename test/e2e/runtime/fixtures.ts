/** Shared setup for the runtime e2e tests: the driver bundle, busybox rootfs, cleanup as the user. */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { envyRoot, runAsUser, testUser, userTempDir, type RunResult } from '../harness.js';
import type { EnvironmentConfig, ProcessSpec } from '../../../src/runtime/types.js';

export const helper = (): string => join(envyRoot(), 'dist/envy-ns');

export interface Workspace {
  dir: string;
  driver: string;
  rootfs: string;
  home: string;
  remove: () => Promise<void>;
}

/** Remove a tree that holds files owned by subordinate ids: only root inside the user's namespace can. */
export async function removeAsUser(path: string): Promise<void> {
  const result = await runAsUser(helper(), ['userns', '--', 'rm', '-rf', path]);
  if (result.code !== 0) throw new Error(`cleanup of ${path} failed: ${result.stderr}`);
}

/** A busybox rootfs owned by root inside the user namespace (host: the first subordinate uid). */
async function makeBusyboxRootfs(dir: string): Promise<string> {
  const rootfs = join(dir, 'rootfs');
  const script = [
    `mkdir -p ${rootfs}/bin ${rootfs}/etc ${rootfs}/root ${rootfs}/home`,
    `cp /usr/bin/busybox ${rootfs}/bin/busybox`,
    // Never link an applet over busybox itself.
    `for a in $(/usr/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox ${rootfs}/bin/$a; done`,
    `echo 'root:x:0:0:root:/root:/bin/sh' > ${rootfs}/etc/passwd`,
    `echo 'root:x:0:' > ${rootfs}/etc/group`,
  ].join(' && ');
  const result = await runAsUser(helper(), ['userns', '--', '/bin/sh', '-c', script]);
  if (result.code !== 0) throw new Error(`rootfs setup failed: ${result.stderr}`);
  return rootfs;
}

export async function makeWorkspace(): Promise<Workspace> {
  const temp = userTempDir('envy-rt-');
  const { build } = await import('esbuild');
  const driver = join(temp.path, 'driver.mjs');
  await build({
    entryPoints: [join(import.meta.dirname, 'driver.ts')],
    outfile: driver,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    logLevel: 'warning',
  });
  execFileSync('chmod', ['a+r', driver]);
  const rootfs = await makeBusyboxRootfs(temp.path);
  const home = join(temp.path, 'home');
  await runAsUser('mkdir', ['-p', home, join(temp.path, 'ws')]);
  return {
    dir: temp.path,
    driver,
    rootfs,
    home,
    remove: async () => {
      await removeAsUser(temp.path);
      temp.remove();
    },
  };
}

export function userIds(): { uid: number; gid: number; name: string } {
  const [uid, gid] = execFileSync('sh', ['-c', `id -u ${testUser()}; id -g ${testUser()}`]).toString().trim().split('\n').map(Number);
  return { uid: uid!, gid: gid!, name: testUser() };
}

export function subuidStart(): { start: number; count: number } {
  const line = readFileSync('/etc/subuid', 'utf8').split('\n').find((l) => l.startsWith(`${testUser()}:`));
  if (!line) throw new Error(`no /etc/subuid entry for ${testUser()}`);
  const [, start, count] = line.split(':');
  return { start: Number(start), count: Number(count) };
}

let counter = 0;

export function baseConfig(ws: Workspace, overrides: Partial<EnvironmentConfig> = {}): EnvironmentConfig {
  counter += 1;
  return {
    id: `test-${process.pid}-${counter}`,
    hostname: 'envybox',
    rootfs: { layers: [ws.rootfs] },
    mounts: [{ type: 'bind', source: join(ws.dir, 'ws'), target: '/workspace' }],
    network: 'host',
    resources: {},
    ...overrides,
  };
}

export function shell(script: string, overrides: Partial<ProcessSpec> = {}): ProcessSpec {
  return { argv: ['/bin/sh', '-c', script], env: { PATH: '/bin', HOME: '/root' }, cwd: '/', root: false, tty: false, ...overrides };
}

export function driverEnv(ws: Workspace): Record<string, string> {
  return { ENVY_NS_HELPER: helper(), ENVY_HOME: join(ws.dir, 'state') };
}

export function drive(ws: Workspace, op: string, input: object, timeoutMs = 60_000): Promise<RunResult> {
  return runAsUser(process.execPath, [ws.driver, op, JSON.stringify(input)], { env: driverEnv(ws), timeoutMs });
}
