/**
 * An arm64 guest on an x86_64 host under TCG: qemu-system-aarch64 -machine virt -cpu cortex-a57
 * boots Debian's arm64 kernel with envy's arm64 init and agent. Without qemu-user binfmt an arm64
 * image cannot be built by running steps (nothing arm64 executes on the host), so the rootfs is
 * assembled from arm64 .debs fetched with apt's foreign-architecture options and unpacked with
 * dpkg-deb (busybox-static and the kernel), then booted through VmRuntime.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { envyRoot, runAsUser, testUser, userTempDir } from '../harness.js';

let temp: { path: string; remove: () => void };
let driver: string;

async function asUser(script: string, timeoutMs = 300_000): Promise<string> {
  const result = await runAsUser('/bin/sh', ['-c', script], { timeoutMs });
  if (result.code !== 0) throw new Error(`failed (${result.code}): ${script}\n${result.stderr.slice(-2000)}`);
  return result.stdout;
}

describe.skipIf(!existsSync('/usr/bin/qemu-system-aarch64'))('backend: vm, arm64 guest under TCG', () => {
  beforeAll(async () => {
    temp = userTempDir('envy-vm-arm64-');
    const { build } = await import('esbuild');
    // Beside package.json: the runtime finds dist/ (init, agent, layer worker) from its own location.
    driver = join(envyRoot(), `.vm-driver-${process.pid}.mjs`);
    await build({
      entryPoints: [join(import.meta.dirname, 'vm-driver.ts')],
      outfile: driver,
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      logLevel: 'warning',
      // tar-stream (CommonJS) requires Node built-ins, which an ESM bundle can only do through createRequire.
      banner: { js: "import { createRequire } from 'node:module'; const require = createRequire(import.meta.url);" },
    });
    execFileSync('chmod', ['a+r', driver]);
    const d = temp.path;
    writeFileSync(
      join(d, 'sources.list'),
      [
        'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main',
        'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main',
        '',
      ].join('\n'),
    );
    const apt = [
      '-o APT::Architecture=arm64 -o APT::Architectures::=arm64',
      `-o Dir::State::Lists=${d}/apt/lists -o Dir::Cache=${d}/apt/cache -o Dir::State::status=${d}/apt/status`,
      `-o Dir::Etc::SourceList=${d}/sources.list -o Dir::Etc::SourceParts=/nonexistent -o Debug::NoLocking=1 -o APT::Sandbox::User=${testUser()}`,
    ].join(' ');
    const applets = execFileSync('/usr/bin/busybox', ['--list']).toString().trim().split('\n').filter((a) => a !== 'busybox').join(' ');
    await asUser(
      [
        'set -e',
        `mkdir -p ${d}/apt/lists/partial ${d}/apt/cache/archives/partial ${d}/debs ${d}/rootfs && touch ${d}/apt/status`,
        `apt-get ${apt} -qq update`,
        `kernel=$(apt-cache ${apt} depends --important linux-image-arm64 | sed -n 's/^ *Depends: \\(linux-image-[0-9][^ ]*\\)$/\\1/p' | head -n1)`,
        `cd ${d}/debs && apt-get ${apt} -qq download busybox-static "$kernel"`,
        `for deb in ${d}/debs/*.deb; do dpkg-deb -x "$deb" ${d}/rootfs; done`,
        `cd ${d}/rootfs && mkdir -p bin sbin usr/bin proc sys dev tmp run root etc var/tmp home && { [ -e bin/busybox ] || ln -s ../usr/bin/busybox bin/busybox; }`,
        `for a in ${applets}; do [ -e bin/$a ] || ln -s busybox bin/$a; done`,
        `echo 'root:x:0:0:root:/root:/bin/sh' > etc/passwd && echo 'root:x:0:' > etc/group`,
        `tar -C ${d}/rootfs -cf ${d}/rootfs.tar .`,
      ].join('\n'),
    );
  }, 600_000);

  afterAll(async () => {
    await runAsUser(join(envyRoot(), 'dist/envy-ns'), ['userns', '--', 'rm', '-rf', temp.path]).catch(() => undefined);
    temp?.remove();
    rmSync(driver, { force: true });
  });

  test('uname -m in the guest says aarch64, with the arm64 kernel', async () => {
    const [uid, gid] = execFileSync('sh', ['-c', `id -u ${testUser()}; id -g ${testUser()}`]).toString().trim().split('\n');
    const result = await runAsUser(process.execPath, [driver, join(temp.path, 'rootfs.tar'), 'aarch64', uid!, gid!, testUser(), '--', '/bin/sh', '-c', 'uname -m; uname -r; id -u'], {
      env: { ENVY_HOME: join(temp.path, 'home') },
      timeoutMs: 600_000,
    });
    expect(result.stderr).not.toContain('ENVY_ERROR');
    expect(result.code, result.stderr).toBe(0);
    const [machine, release, id] = result.stdout.trim().split('\n');
    expect(machine).toBe('aarch64');
    expect(release).toMatch(/-arm64$/);
    expect(id).toBe(uid);
    expect(result.stderr).toMatch(/boot-ms \d+ .*"arch":"aarch64".*"accel":"tcg"/);
  }, 620_000);
});
