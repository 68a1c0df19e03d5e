/**
 * Names for in-progress work inside the store. A temp name carries its owner's
 * pid and process start time, so the next envy can tell leftovers of a killed
 * process (swept) from work another live process is doing right now (kept).
 */
import { randomBytes } from 'node:crypto';
import { isAlive, processStartTime } from '../state/lock.js';

export const TEMP_PREFIX = '.tmp-';

export function tempName(purpose: string): string {
  const start = processStartTime(process.pid) ?? '0';
  return `${TEMP_PREFIX}${purpose}-${process.pid}-${start}-${randomBytes(4).toString('hex')}`;
}

/** Whether a temp name belongs to a process that is still running (unparseable names count as dead). */
export function tempOwnerAlive(name: string): boolean {
  const match = /^\.tmp-[\w]+-(\d+)-(\d+)-[0-9a-f]+/.exec(name);
  if (!match) return false;
  return isAlive({ pid: Number(match[1]), startTime: match[2]! });
}
