/** File-watch sync: the engine, its transport interface, the local transport and the ignore rules. */
export { SyncEngine } from './engine.js';
export type { ConflictRecord, SyncDirection, SyncEngineEvents, SyncEngineOptions, SyncState, SyncStatus } from './engine.js';
export { LocalTransport } from './local-transport.js';
export { IgnoreMatcher, IGNORE_FILE_NAMES, SYNC_TEMP_PREFIX } from './ignore.js';
export { isWatchLimitError, watchLimitWarning } from './watcher.js';
export { STREAM_THRESHOLD_BYTES } from './transport.js';
export type { ChangeEvent, ChangeKind, DirEntry, EntryInfo, EntryType, SyncTransport, WatchHandle, WatchOptions, WriteOptions } from './transport.js';
