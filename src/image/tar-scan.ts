/**
 * Reading an uncompressed tar archive (docker save, podman save, envy export) by its headers alone, and
 * what identifies the image in it without reading the layers' bytes.
 */
import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { sniffCompression } from './media-types.js';

/** Members up to this size are documents (manifests, configs, tiny layers): read whole, kept in memory. */
export const DOCUMENT_MAX = 1 << 20;

/** A regular-file member of an uncompressed tar archive: where its bytes are in the file. */
export interface ArchiveMember {
  name: string;
  offset: number;
  size: number;
}

const TAR_BLOCK = 512;

/**
 * The regular-file members of an uncompressed tar file, read from their headers alone (a seek per member,
 * never the data). Undefined for anything this reader does not take apart with certainty — a header
 * whose checksum is wrong, PAX or GNU long-name headers, sparse files, base-256 sizes — which then goes
 * through the streaming reader instead. docker save, podman save and envy export write plain ustar.
 */
export function scanTar(fd: number): { members: ArchiveMember[]; skipped: string[] } | undefined {
  const header = Buffer.alloc(TAR_BLOCK);
  const members: ArchiveMember[] = [];
  const skipped: string[] = [];
  let offset = 0;
  for (;;) {
    if (readSync(fd, header, 0, TAR_BLOCK, offset) < TAR_BLOCK) return undefined;
    if (header.every((byte) => byte === 0)) return { members, skipped };
    if (header.toString('latin1', 257, 262) !== 'ustar') return undefined;
    let sum = 0;
    for (let i = 0; i < TAR_BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : header[i]!;
    if (parseInt(header.toString('latin1', 148, 156).replace(/\0.*$/s, '').trim(), 8) !== sum) return undefined;
    const sizeField = header.toString('latin1', 124, 136).replace(/\0.*$/s, '').trim();
    if (!/^[0-7]*$/.test(sizeField)) return undefined;
    const size = parseInt(sizeField || '0', 8);
    const type = String.fromCharCode(header[156]!);
    const field = (start: number, length: number): string => header.toString('utf8', start, start + length).replace(/\0.*$/s, '');
    const prefix = field(345, 155);
    const name = prefix ? `${prefix}/${field(0, 100)}` : field(0, 100);
    if (type === '0' || type === '\0') members.push({ name, offset: offset + TAR_BLOCK, size });
    else if (type === '5' || type === '1' || type === '2' || type === '7') skipped.push(name);
    else return undefined;
    offset += TAR_BLOCK + Math.ceil(size / TAR_BLOCK) * TAR_BLOCK;
  }
}

/**
 * What an image archive holds, as a digest, read without the layers' bytes: every document member
 * (manifests, configs, tiny layers: up to DOCUMENT_MAX) by name, size and content, every bigger member
 * (a layer) by name and size. The documents name each layer by digest (a config's diff_ids, a manifest's
 * blob digests), and the import checks every layer against them, so an image in the store under this
 * key is exactly the one the archive describes; hashing the whole archive (223 MB for Debian) cost
 * ~0.25 s of every cold build. Undefined when the archive is compressed or not plain ustar: hash the file.
 */
export function archiveIdentity(path: string): string | undefined {
  const fd = openSync(path, 'r');
  try {
    const head = Buffer.alloc(4);
    if (readSync(fd, head, 0, 4, 0) < 4 || sniffCompression(head) !== 'none') return undefined;
    const scanned = scanTar(fd);
    if (!scanned) return undefined;
    const hash = createHash('sha256');
    for (const member of scanned.members) {
      if (member.size > DOCUMENT_MAX) {
        hash.update(`${JSON.stringify(['layer', member.name, member.size])}\n`);
        continue;
      }
      const bytes = Buffer.alloc(member.size);
      if (readSync(fd, bytes, 0, member.size, member.offset) !== member.size) return undefined;
      hash.update(`${JSON.stringify(['document', member.name, member.size, createHash('sha256').update(bytes).digest('hex')])}\n`);
    }
    return `sha256:${hash.digest('hex')}`;
  } finally {
    closeSync(fd);
  }
}
