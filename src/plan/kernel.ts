/**
 * The kernel step's script (build executor and Dockerfile share it). Debian's kernel package is
 * fetched and unpacked, not installed: `apt-get install` would run initramfs-tools and depmod for
 * an initramfs envy does not use (envy brings its own, src/runtime/vm/initramfs.ts). The
 * metapackage (linux-image-amd64) resolves to the real image package by its dependency; the last
 * line reports what was unpacked, in the marker format the executor reads into env.lock.
 */
import type { Arch, EnvSpec } from '../config/types.js';
import { EnvyError } from '../errors.js';
import type { KernelFile, KernelStep } from './types.js';

export const KERNEL_MARKER = 'envy-resolved\tkernel\t';

function quote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

/** Where a kernel file goes in the image, and the marker that makes it the one the VM boots. */
export function kernelFileTarget(file: KernelFile): string {
  return `/boot/vmlinuz-${file.release}`;
}
export const KERNEL_FILE_MARKER = '/boot/.envy-kernel';

/** The kernel file step's script: the file comes from the project at `from` (the build binds it read-only). */
export function kernelFileScript(file: KernelFile, from: string): string {
  const target = kernelFileTarget(file);
  return ['mkdir -p /boot', `cp ${quote(`${from}/${file.src}`)} ${quote(target)}`, `chmod 0644 ${quote(target)}`, `echo ${quote(file.release)} > ${KERNEL_FILE_MARKER}`].join('\n');
}

/** One command per line: the Dockerfile joins them with `&&`, the executor runs them under `set -e`. */
export function kernelScript(step: KernelStep): string {
  if (step.package === undefined) throw new EnvyError('INTERNAL', `kernel step ${step.label} has no package`);
  const resolve = step.pinned
    ? `real=${quote(step.pinned.package)} && version=${quote(step.pinned.version)}`
    : `real=$(apt-cache depends --important ${quote(step.package)} | sed -n 's/^ *Depends: \\(linux-image-[0-9][^ ]*\\)$/\\1/p' | head -n1) && real=\${real:-${quote(step.package)}} && version=$(apt-cache policy "$real" | sed -n 's/^ *Candidate: //p')`;
  return [
    'export DEBIAN_FRONTEND=noninteractive',
    'apt-get update -qq -o Dpkg::Use-Pty=0',
    resolve,
    // The archives dir is envy's shared apt cache during builds: a rebuild does not fetch 70 MB again.
    'cd /var/cache/apt/archives && deb="${real}_$(echo "$version" | sed \'s/:/%3a/\')_$(dpkg --print-architecture).deb" && { [ -s "$deb" ] || apt-get download -q -o APT::Sandbox::User=root "$real=$version"; }',
    'rm -rf /var/tmp/envy-kernel && mkdir -p /var/tmp/envy-kernel && dpkg-deb -x "/var/cache/apt/archives/$deb" /var/tmp/envy-kernel',
    // Merged /usr: /lib is a link to usr/lib, and it must stay one.
    'tar -C /var/tmp/envy-kernel -cf - . | tar -C / --keep-directory-symlink -xf -',
    `printf '${KERNEL_MARKER.replace(/\t/g, '\\t')}%s\\t%s\\n' "$real" "$version"`,
    'cd / && rm -rf /var/tmp/envy-kernel /var/cache/apt/*.bin',
  ].join('\n');
}

/** Debian's kernel flavour per architecture: linux-image-amd64, linux-image-arm64. */
export function kernelFlavour(arch: Arch): string {
  return arch === 'aarch64' ? 'arm64' : 'amd64';
}

/**
 * The kernel package a VM plan installs, or undefined for the namespace backend and for a kernel
 * file (backend.kernel as a path). backend.kernel `6.1.0-18` pins linux-image-6.1.0-18-amd64.
 */
export function kernelPackage(spec: EnvSpec): string | undefined {
  if (spec.backend.type !== 'vm' || spec.backend.kernelFile !== undefined) return undefined;
  const flavour = kernelFlavour(spec.backend.arch);
  const wanted = spec.backend.kernel;
  if (wanted === undefined) return `linux-image-${flavour}`;
  if (!/^[0-9][0-9a-z.+~-]*$/.test(wanted)) {
    throw new EnvyError('CONFIG_INVALID', `backend.kernel: "${wanted}" is neither a Debian kernel version (like 6.1.0-18) nor a path`, {
      hint: 'write a version such as 6.1.0-18, or a path to a kernel file such as vm/vmlinux',
    });
  }
  return `linux-image-${wanted.replace(new RegExp(`-${flavour}$`), '')}-${flavour}`;
}

