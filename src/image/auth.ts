/**
 * Registry credentials and challenges. Credentials are read where docker and
 * podman keep them: $REGISTRY_AUTH_FILE, containers' auth.json
 * ($XDG_RUNTIME_DIR/containers, ~/.config/containers), then docker's
 * config.json ($DOCKER_CONFIG or ~/.docker). Only the `auths` base64 entries
 * are read; credential helpers (`credsStore`) are external programs envy does not run.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { EnvyError } from '../errors.js';
import { DOCKER_HUB } from './reference.js';

export interface Credentials {
  username: string;
  password: string;
  /** The file they came from (named in errors). */
  source: string;
}

export function credentialFiles(env: NodeJS.ProcessEnv = process.env): string[] {
  const files: string[] = [];
  if (env.REGISTRY_AUTH_FILE) files.push(env.REGISTRY_AUTH_FILE);
  if (env.XDG_RUNTIME_DIR) files.push(join(env.XDG_RUNTIME_DIR, 'containers/auth.json'));
  const home = env.HOME || homedir();
  files.push(join(env.XDG_CONFIG_HOME || join(home, '.config'), 'containers/auth.json'));
  files.push(join(env.DOCKER_CONFIG || join(home, '.docker'), 'config.json'));
  return files;
}

/** The registry an `auths` key names: keys may be `host`, `host:port`, `https://host/v1/` or a `host/namespace` prefix. */
function keyRegistry(key: string): string {
  const host = key.replace(/^https?:\/\//, '').split('/')[0]!.toLowerCase();
  return host === 'index.docker.io' || host === 'registry-1.docker.io' ? DOCKER_HUB : host;
}

export function findCredentials(registry: string, env: NodeJS.ProcessEnv = process.env): Credentials | undefined {
  for (const file of credentialFiles(env)) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    let config: { auths?: Record<string, { auth?: string; username?: string; password?: string }> };
    try {
      config = JSON.parse(text) as typeof config;
    } catch (error) {
      throw new EnvyError('CONFIG_READ', `${file} is not valid JSON: ${(error as Error).message}`, {
        hint: 'fix or remove the file (docker login / podman login write it)',
      });
    }
    for (const [key, entry] of Object.entries(config.auths ?? {})) {
      if (keyRegistry(key) !== registry) continue;
      if (entry.auth) {
        const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
        const colon = decoded.indexOf(':');
        if (colon <= 0) {
          throw new EnvyError('CONFIG_READ', `${file}: the auth entry for ${key} is not base64 of user:password`, { hint: 'log in again with docker login or podman login' });
        }
        return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1), source: file };
      }
      if (entry.username && entry.password) return { username: entry.username, password: entry.password, source: file };
    }
  }
  return undefined;
}

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parse a WWW-Authenticate header: `Bearer realm="...",service="...",scope="..."`. */
export function parseChallenge(header: string): Challenge | undefined {
  const match = /^\s*([A-Za-z]+)\s*(.*)$/s.exec(header);
  if (!match) return undefined;
  const params: Record<string, string> = {};
  const pattern = /([A-Za-z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?\s*/gy;
  const rest = match[2] ?? '';
  pattern.lastIndex = 0;
  let param: RegExpExecArray | null;
  while ((param = pattern.exec(rest)) !== null) {
    params[param[1]!.toLowerCase()] = param[2] !== undefined ? param[2].replace(/\\(.)/g, '$1') : (param[3] ?? '');
    if (pattern.lastIndex >= rest.length) break;
  }
  return { scheme: match[1]!.toLowerCase(), params };
}

export function basicAuthorization(credentials: Pick<Credentials, 'username' | 'password'>): string {
  return `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}`;
}
