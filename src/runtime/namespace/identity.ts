/**
 * Who the invoking user is, and which subordinate ids /etc/subuid and /etc/subgid give them.
 * The helper reads the same files to build the map; this copy is for warnings and diagnostics.
 */
import { readFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import type { Identity } from '../types.js';

/** The keep-id identity: the host user's uid, gid and name, with a home under /home like Podman. */
export function hostIdentity(): Identity {
  const info = userInfo();
  return { uid: info.uid, gid: info.gid, name: info.username, home: `/home/${info.username}` };
}

export interface SubordinateRange {
  start: number;
  count: number;
}

/** The user's ranges in an /etc/subuid-style file (entries name the user or their numeric id). */
export function subordinateRanges(file: string, user: string, id: number): SubordinateRange[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  const ranges: SubordinateRange[] = [];
  for (const line of text.split('\n')) {
    const [owner, start, count] = line.trim().split(':');
    if (owner === undefined || start === undefined || count === undefined) continue;
    if (owner !== user && owner !== String(id)) continue;
    const range = { start: Number(start), count: Number(count) };
    if (Number.isInteger(range.start) && Number.isInteger(range.count) && range.count > 0) ranges.push(range);
  }
  return ranges;
}

/** True when both files give the user a range: the full map (and apt/dpkg inside) is possible. */
export function hasFullIdMap(identity: Identity = hostIdentity()): boolean {
  return (
    subordinateRanges('/etc/subuid', identity.name, identity.uid).length > 0 &&
    subordinateRanges('/etc/subgid', identity.name, identity.gid).length > 0
  );
}
