/**
 * Cross-process locks on state (an environment, the store). Node has no flock,
 * so a lock is a file created atomically (link of a written temp file) that holds the owner's pid and the
 * owner's process start time (from /proc/PID/stat, so a reused pid after a crash
 * or reboot is not mistaken for the owner). A lock whose owner is gone is stale
 * and taken over: a SIGKILLed envy never blocks the next one.
 */
import { closeSync, linkSync, mkdirSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { EnvyError } from '../errors.js';

export interface LockOwner {
  pid: number;
  startTime: string;
  purpose: string;
}

/** The kernel's start time of a process (field 22 of /proc/PID/stat), or undefined when it is gone. */
export function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19];
  } catch {
    return undefined;
  }
}

/**
 * The owner still runs: same start time, and not a zombie. A detached process (a supervisor, a sync
 * process) whose parent exited is reaped by PID 1, and in a container that PID 1 may take its time;
 * a zombie holds nothing and does nothing, so it must not keep its lock or read as running.
 */
export function isAlive(owner: Pick<LockOwner, 'pid' | 'startTime'>): boolean {
  try {
    const stat = readFileSync(`/proc/${owner.pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19] === owner.startTime && fields[0] !== 'Z' && fields[0] !== 'X';
  } catch {
    return false;
  }
}

/** SIGTERM a lock's owner, wait up to `graceMs` for it to go, then SIGKILL it. */
export async function terminateOwner(owner: Pick<LockOwner, 'pid' | 'startTime'>, graceMs: number): Promise<void> {
  try {
    process.kill(owner.pid, 'SIGTERM');
  } catch {
    return;
  }
  const deadline = Date.now() + graceMs;
  while (isAlive(owner)) {
    if (Date.now() > deadline) {
      try {
        process.kill(owner.pid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function readOwner(path: string): LockOwner | undefined {
  try {
    const owner = JSON.parse(readFileSync(path, 'utf8')) as LockOwner;
    return typeof owner.pid === 'number' ? owner : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Create the lock with its content in one step: write a private temp file, then link(2) it into place
 * (which, like O_EXCL, fails if the lock exists). A lock file is never seen empty, so a torn lock can
 * only be debris of a crash, and taking it over cannot delete a live owner's fresh lock.
 */
function tryCreate(path: string, owner: LockOwner): boolean {
  const temp = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  const fd = openSync(temp, 'wx', 0o644);
  try {
    writeSync(fd, JSON.stringify(owner));
  } finally {
    closeSync(fd);
  }
  try {
    linkSync(temp, path);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw error;
  } finally {
    unlinkSync(temp);
  }
}

export interface Lock {
  path: string;
  release(): void;
}

export interface AcquireOptions {
  purpose: string;
  /** Called once when the lock is held by someone else and we start waiting. */
  onWait?: (owner: LockOwner) => void;
  /** Give up after this many ms (default: wait forever). */
  timeoutMs?: number;
  pollMs?: number;
}

/**
 * Take the lock if it is free (or its owner is gone) without waiting: for picking one of several
 * equivalent resources (a VM's agent ports), where waiting on a busy one would be wrong.
 */
export function tryAcquireLock(path: string, purpose: string): Lock | undefined {
  mkdirSync(dirname(path), { recursive: true });
  const me: LockOwner = { pid: process.pid, startTime: processStartTime(process.pid) ?? '', purpose };
  for (let attempt = 0; attempt < 3; attempt++) {
    if (tryCreate(path, me)) return held(path, me);
    const owner = readOwner(path);
    if (owner && isAlive(owner)) return undefined;
    try {
      if (readOwner(path)?.pid === owner?.pid) unlinkSync(path);
    } catch {
      // someone else removed it first
    }
  }
  return undefined;
}

function held(path: string, me: LockOwner): Lock {
  let released = false;
  return {
    path,
    release() {
      if (released) return;
      released = true;
      if (readOwner(path)?.pid === me.pid) unlinkSync(path);
    },
  };
}

export async function acquireLock(path: string, options: AcquireOptions): Promise<Lock> {
  mkdirSync(dirname(path), { recursive: true });
  const me: LockOwner = { pid: process.pid, startTime: processStartTime(process.pid) ?? '', purpose: options.purpose };
  const deadline = options.timeoutMs === undefined ? Infinity : Date.now() + options.timeoutMs;
  let announced = false;
  for (;;) {
    if (tryCreate(path, me)) break;
    const owner = readOwner(path);
    if (!owner || !isAlive(owner)) {
      // A half-written lock (crash between create and write) or a dead owner: take it over.
      // Unlink-then-create keeps O_EXCL's guarantee: of several racers, only one create wins.
      try {
        if (readOwner(path)?.pid === owner?.pid) unlinkSync(path);
      } catch {
        // someone else removed it first
      }
      continue;
    }
    if (!announced) {
      announced = true;
      options.onWait?.(owner);
    }
    if (Date.now() >= deadline) {
      throw new EnvyError('BUSY', `${path} is held by envy pid ${owner.pid} (${owner.purpose})`, {
        hint: 'wait for it to finish, or stop it',
      });
    }
    await new Promise((resolve) => setTimeout(resolve, options.pollMs ?? 100));
  }
  return held(path, me);
}
