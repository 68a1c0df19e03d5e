/**
 * Whether an environment's init runs. The helper writes `PID STARTTIME` (field 22 of
 * /proc/PID/stat) to the pid file; a pid that is gone, a zombie, or now another process
 * (after a reboot or pid reuse) all read as stopped.
 */
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { environmentPaths } from '../../state/environments.js';

export interface InitRecord {
  pid: number;
  startTime: string;
}

export function pidFile(id: string): string {
  return join(environmentPaths(id).run, 'init.pid');
}

export function readInitRecord(id: string): InitRecord | undefined {
  try {
    const [pid, startTime] = readFileSync(pidFile(id), 'utf8').trim().split(/\s+/);
    const record = { pid: Number(pid), startTime: startTime ?? '' };
    return Number.isInteger(record.pid) && record.pid > 0 ? record : undefined;
  } catch {
    return undefined;
  }
}

/** The process's state letter and start time, or undefined when it does not exist. */
function procStat(pid: number): { state: string; startTime: string } | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm (field 2) may hold spaces or ')': the rest starts after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { state: fields[0] ?? '?', startTime: fields[19] ?? '' };
  } catch {
    return undefined;
  }
}

/** True while the recorded init is this very process and not yet dead (zombies are dead). */
export function isInitAlive(record: InitRecord): boolean {
  const stat = procStat(record.pid);
  return stat !== undefined && stat.startTime === record.startTime && stat.state !== 'Z' && stat.state !== 'X';
}

export function runningInit(id: string): InitRecord | undefined {
  const record = readInitRecord(id);
  return record && isInitAlive(record) ? record : undefined;
}

export function forgetInit(id: string): void {
  rmSync(pidFile(id), { force: true });
}
