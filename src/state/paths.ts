/** Per-user state locations (XDG base directories). */
import { homedir } from 'node:os';
import { join } from 'node:path';

function xdg(variable: string, fallback: string): string {
  const value = process.env[variable];
  // The spec says relative values are invalid and must be ignored.
  return value && value.startsWith('/') ? value : join(homedir(), fallback);
}

/** Root of envy's persistent state: store, environments, locks. ENVY_HOME overrides (tests, CI). */
export function stateDir(): string {
  const override = process.env.ENVY_HOME;
  if (override && override.startsWith('/')) return override;
  return join(xdg('XDG_DATA_HOME', '.local/share'), 'envy');
}

/** Disposable caches (apt .debs, downloads). */
export function cacheDir(): string {
  const override = process.env.ENVY_HOME;
  if (override && override.startsWith('/')) return join(override, 'cache');
  return join(xdg('XDG_CACHE_HOME', '.cache'), 'envy');
}

/** Runtime sockets and pid files; prefer XDG_RUNTIME_DIR (tmpfs, cleared on reboot). */
export function runDir(): string {
  const override = process.env.ENVY_HOME;
  if (override && override.startsWith('/')) return join(override, 'run');
  const runtime = process.env.XDG_RUNTIME_DIR;
  return runtime && runtime.startsWith('/') ? join(runtime, 'envy') : join(stateDir(), 'run');
}
