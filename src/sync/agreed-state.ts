/**
 * Two-way sync's memory: for every path, what both sides last agreed on. A side "changed" a path when
 * it differs from this record; a conflict is both sides changing the same path. Persisted atomically
 * so a restart does not mistake old agreement for fresh edits. If the newest record was lost in a crash
 * the older one makes more paths look changed on both sides, which yields conflict copies, never a
 * silently dropped write.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { EnvyError } from '../errors.js';
import { writeFileAtomic } from '../state/atomic.js';
import type { EntryType } from './transport.js';

export interface SideStamp {
  size: number;
  mtimeMs: number;
}

export interface AgreedEntry {
  type: EntryType;
  mode: number;
  /** Content digest, files only. */
  hash?: string;
  linkTarget?: string;
  /** What each side's file looked like when agreed, so an unchanged file needs no hashing. */
  source?: SideStamp;
  target?: SideStamp;
}

interface AgreedFile {
  version: 1;
  entries: Record<string, AgreedEntry>;
}

export const AGREED_STATE_FILE = 'agreed-state.json';

export class AgreedState {
  private readonly entries = new Map<string, AgreedEntry>();
  private dirty = false;

  constructor(private readonly file: string) {}

  static async load(stateDir: string): Promise<AgreedState> {
    const state = new AgreedState(join(stateDir, AGREED_STATE_FILE));
    let text: string;
    try {
      text = await readFile(state.file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return state;
      throw error;
    }
    let parsed: AgreedFile;
    try {
      parsed = JSON.parse(text) as AgreedFile;
    } catch (error) {
      throw new EnvyError('STATE', `sync: ${state.file} is not valid JSON`, {
        hint: 'delete it; the next sync treats every differing file as a conflict and keeps both copies',
        cause: error,
      });
    }
    if (parsed.version !== 1 || typeof parsed.entries !== 'object' || parsed.entries === null) {
      throw new EnvyError('STATE', `sync: ${state.file} has an unknown format`, {
        hint: 'delete it; the next sync treats every differing file as a conflict and keeps both copies',
      });
    }
    for (const [path, entry] of Object.entries(parsed.entries)) state.entries.set(path, entry);
    return state;
  }

  get(path: string): AgreedEntry | undefined {
    return this.entries.get(path);
  }

  set(path: string, entry: AgreedEntry): void {
    this.entries.set(path, entry);
    this.dirty = true;
  }

  delete(path: string): void {
    if (this.entries.delete(path)) this.dirty = true;
  }

  get size(): number {
    return this.entries.size;
  }

  get isDirty(): boolean {
    return this.dirty;
  }

  save(): void {
    if (!this.dirty) return;
    const data: AgreedFile = { version: 1, entries: Object.fromEntries(this.entries) };
    writeFileAtomic(this.file, JSON.stringify(data));
    this.dirty = false;
  }
}
