/**
 * The part of VM image preparation that needs root in the user namespace (layer-worker job
 * `vm-disk`): the image's layers are owned by subordinate ids, and only there do they read as the
 * owners the image means. The layers are stacked read-only with overlayfs in a private mount
 * namespace, mke2fs copies the merged tree into an ext4 image (`-d`: no root, no loop device) with
 * those owners, and the kernel and the modules the initramfs needs are copied out beside it.
 * Everything produced is handed to the invoking user (qemu runs as them).
 */
import { copyFileSync, lchownSync, lstatSync, mkdirSync, readdirSync, rmdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { EnvyError } from '../../errors.js';
import { run } from '../../exec.js';
import { findImageKernel, moduleLoadOrder } from './kernel.js';
import { requireProgram } from './tools.js';

export interface VmDiskResult {
  kernelVersion: string;
  /** Module file names in OUT/modules, in load order. */
  modules: string[];
  /** Bytes the image's files take, and the disk's size. */
  used: number;
  diskSize: number;
}

const MIB = 1024 * 1024;
/** Free space in a fresh VM disk: at least 2 GiB or as much as the image holds (the qcow2 overlay is sparse). */
const MIN_FREE = 2048 * MIB;
const MOUNT_NS_MARK = 'ENVY_VM_DISK_MOUNTNS';

/** `vm-disk OUT UID:GID LOWER...` with the layer dirs top first. */
export async function vmDiskJob(args: string[], self: { node: string; worker: string }): Promise<VmDiskResult> {
  const [out, owner, ...lowers] = args;
  if (!out || !owner || lowers.length === 0) throw new Error('usage: vm-disk OUT UID:GID LOWER...');
  if (process.env[MOUNT_NS_MARK] !== '1') {
    // Node cannot unshare: run this very job again inside a private mount namespace.
    const result = await run(requireProgram('unshare'), ['--mount', '--propagation', 'private', '--', self.node, self.worker, 'vm-disk', ...args], {
      env: { ...process.env, [MOUNT_NS_MARK]: '1' },
      errorCode: 'RUNTIME',
    });
    return JSON.parse(String(result.stdout).trim().split('\n').pop() ?? '') as VmDiskResult;
  }
  mkdirSync(out, { recursive: true });
  const merged = join(out, 'merged');
  let mounted = false;
  let root = lowers[0]!;
  if (lowers.length > 1) {
    mkdirSync(merged);
    await run(requireProgram('mount'), ['-t', 'overlay', 'overlay', '-o', `ro,userxattr,lowerdir=${lowers.join(':')}`, merged], { errorCode: 'RUNTIME' });
    mounted = true;
    root = merged;
  }
  try {
    const kernel = findImageKernel(root);
    if (!kernel) {
      throw new EnvyError('RUNTIME', 'the image has no kernel in /boot (vmlinuz-*)', { hint: 'backend: vm adds a kernel step to the plan; rebuild with envy up' });
    }
    const order = moduleLoadOrder(kernel);
    copyFileSync(kernel.vmlinuz, join(out, 'vmlinuz'));
    mkdirSync(join(out, 'modules'));
    const modules = order.map((file, index) => {
      const name = `${String(index).padStart(2, '0')}-${basename(file)}`;
      copyFileSync(file, join(out, 'modules', name));
      return name;
    });
    const du = await run(requireProgram('du'), ['-s', '--block-size=1', root], { errorCode: 'RUNTIME' });
    const used = Number(String(du.stdout).split(/\s/)[0]);
    const diskSize = Math.ceil((used + Math.max(MIN_FREE, used)) / MIB) * MIB;
    await run(requireProgram('mke2fs'), ['-q', '-F', '-t', 'ext4', '-L', 'envy-root', '-d', root, '-E', 'root_owner=0:0', join(out, 'rootfs.raw'), `${diskSize / MIB}M`], {
      errorCode: 'RUNTIME',
      hint: 'mke2fs -d builds the VM disk from the image (e2fsprogs 1.43 or newer)',
    });
    return { kernelVersion: kernel.version, modules, used, diskSize };
  } finally {
    if (mounted) await run(requireProgram('umount'), [merged]).catch(() => undefined);
    try {
      rmdirSync(merged);
    } catch {
      // never created
    }
    const [uid, gid] = owner.split(':').map(Number) as [number, number];
    const chownTree = (path: string): void => {
      lchownSync(path, uid, gid);
      if (lstatSync(path).isDirectory()) for (const name of readdirSync(path)) chownTree(join(path, name));
    };
    chownTree(out);
  }
}
