// backend.kernel as a path to a kernel file: what loading env.yaml accepts and refuses (with the
// file:line of the field), and how the plan keys and names it.
import { mkdirSync, writeFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadSpec } from '../../../src/config/load.js';
import { identifyKernel, kernelRelease } from '../../../src/config/kernel-file.js';
import { EnvyError } from '../../../src/errors.js';
import { compilePlan } from '../../../src/plan/compile.js';
import { renderDockerfile } from '../../../src/plan/dockerfile.js';
import { lockFromSpec, parseLock, renderLock } from '../../../src/plan/lock.js';
import type { KernelStep } from '../../../src/plan/types.js';
import { tempDir } from './helpers.js';
import { HOST_USER } from '../plan/helpers.js';

/** The first bytes of each kernel format as the real files have them, plus a version banner. */
function bzImage(release: string): Buffer {
  const bytes = Buffer.alloc(0x4000);
  bytes.write('HdrS', 0x202, 'latin1');
  bytes.writeUInt16LE(0x1000, 0x20e);
  bytes.write(`${release} (builder@host) #1 SMP\0`, 0x1200, 'latin1');
  return bytes;
}
function elf(machine: number, release: string): Buffer {
  const bytes = Buffer.alloc(0x8000);
  bytes.writeUInt32BE(0x7f454c46, 0);
  bytes.writeUInt16LE(machine, 18);
  bytes.write('Linux version %s (%s)\0', 0x3000, 'latin1');
  bytes.write(`Linux version ${release} (builder@host) #1 SMP\0`, 0x5000, 'latin1');
  return bytes;
}
function arm64Image(release: string): Buffer {
  const bytes = Buffer.alloc(0x8000);
  bytes.write('ARM\x64', 0x38, 'latin1');
  bytes.write(`Linux version ${release} #1\0`, 0x6000, 'latin1');
  return bytes;
}

function project(yaml: string, files: Record<string, Buffer>): string {
  const dir = tempDir();
  writeFileSync(join(dir, 'env.yaml'), yaml);
  for (const [name, bytes] of Object.entries(files)) {
    mkdirSync(join(dir, name, '..'), { recursive: true });
    writeFileSync(join(dir, name), bytes);
  }
  return dir;
}

async function loadError(dir: string): Promise<EnvyError> {
  try {
    await loadSpec('env.yaml', { env: {}, cwd: dir });
  } catch (error) {
    if (error instanceof EnvyError) return error;
    throw error;
  }
  throw new Error('expected env.yaml to be rejected');
}

const VM = (kernel: string, arch = 'x86_64') => `name: demo\nbase: {debian: bookworm}\nbackend:\n  type: vm\n  arch: ${arch}\n  kernel: ${kernel}\n`;

describe('backend.kernel as a kernel file', () => {
  it('identifies bzImage, vmlinux and arm64 Image (plain or gzip) and their releases', () => {
    expect(identifyKernel(bzImage('6.1.0-18-amd64'))).toEqual({ format: 'bzImage', arch: 'x86_64' });
    expect(kernelRelease(bzImage('6.1.0-18-amd64'), 'bzImage')).toBe('6.1.0-18-amd64');
    expect(identifyKernel(elf(62, '6.6.1'))).toEqual({ format: 'elf', arch: 'x86_64' });
    // The format string `Linux version %s` comes first in a real vmlinux: the release is the next one.
    expect(kernelRelease(elf(62, '6.6.1-custom+'), 'elf')).toBe('6.6.1-custom+');
    expect(identifyKernel(elf(183, '6.6.1'))).toMatch(/arm64 vmlinux .*Image/);
    expect(identifyKernel(arm64Image('6.1.0-18-arm64'))).toEqual({ format: 'Image', arch: 'aarch64' });
    expect(identifyKernel(gzipSync(arm64Image('6.1.0-18-arm64')))).toEqual({ format: 'Image.gz', arch: 'aarch64' });
    expect(kernelRelease(gzipSync(arm64Image('6.1.0-18-arm64')), 'Image.gz')).toBe('6.1.0-18-arm64');
    expect(identifyKernel(Buffer.from('#!/bin/sh\necho not a kernel\n'))).toMatch(/^not a kernel envy can boot/);
    expect(identifyKernel(elf(40, 'x'))).toMatch(/ELF file for machine 40/);
  });

  it('refuses a wrong architecture, a non-kernel and a directory at the field, with file:line', async () => {
    const wrongArch = await loadError(project(VM('boot/Image'), { 'boot/Image': arm64Image('6.1.0') }));
    expect(wrongArch.message).toBe('env.yaml:6:11: backend.kernel: boot/Image is an aarch64 kernel (Image), but the VM is x86_64');
    expect(wrongArch.hint).toContain('backend.arch: aarch64');
    const notKernel = await loadError(project(VM('vmlinux'), { vmlinux: Buffer.from('hello\n') }));
    expect(notKernel.message).toMatch(/^env\.yaml:6:11: backend\.kernel: vmlinux is not a kernel envy can boot/);
    const directory = await loadError(project(VM('boot'), { 'boot/x': Buffer.from('') }));
    expect(directory.message).toBe('env.yaml:6:11: backend.kernel: boot is not a file');
    expect(directory.exitCode).toBe(2);
  });

  it('keys the plan by the bytes, copies the file to /boot/vmlinuz-RELEASE, and locks path and digest', async () => {
    const dir = project(VM('vm/vmlinux'), { 'vm/vmlinux': elf(62, '6.6.1-envy') });
    const { spec } = await loadSpec('env.yaml', { env: {}, cwd: dir });
    expect(spec.backend).toMatchObject({ type: 'vm', kernelFile: 'vm/vmlinux' });
    const plan = compilePlan(spec, dir, undefined, { hostUser: HOST_USER });
    const step = plan.steps[1] as KernelStep;
    expect(step).toMatchObject({ kind: 'kernel', file: { src: 'vm/vmlinux', release: '6.6.1-envy' } });
    expect(step.package).toBeUndefined();
    expect(step.file!.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(renderDockerfile(plan, spec)).toContain('COPY --chmod=0644 vm/vmlinux /boot/vmlinuz-6.6.1-envy');
    // Other bytes, another key; the same bytes under another name, the same key.
    writeFileSync(join(dir, 'vm/vmlinux'), elf(62, '6.6.2-envy'));
    const changed = compilePlan(spec, dir, undefined, { hostUser: HOST_USER }).steps[1]!;
    expect(changed.key).not.toBe(step.key);
    writeFileSync(join(dir, 'vm/vmlinux'), elf(62, '6.6.1-envy'));
    expect(compilePlan(spec, dir, undefined, { hostUser: HOST_USER }).steps[1]!.key).toBe(step.key);

    const lock = lockFromSpec(spec);
    expect(lock.kernel).toEqual({ file: 'vm/vmlinux' });
    lock.kernel = { file: 'vm/vmlinux', digest: step.file!.digest };
    const text = renderLock(lock);
    expect(text).toContain('file: "vm/vmlinux"');
    expect(parseLock(text, 'env.lock').kernel).toEqual(lock.kernel);
  });
});
