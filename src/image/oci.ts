/** The OCI image-spec documents envy reads and writes, and the one place their fields are interpreted. */
import { EnvyError } from '../errors.js';
import { isDigest } from './digest.js';
import type { ImageConfig, Platform } from './store.js';

export interface OciDescriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: { os: string; architecture: string; variant?: string };
}

export interface OciIndex {
  schemaVersion: 2;
  mediaType?: string;
  manifests: OciDescriptor[];
  annotations?: Record<string, string>;
}

export interface OciManifest {
  schemaVersion: 2;
  mediaType?: string;
  config: OciDescriptor;
  layers: OciDescriptor[];
  annotations?: Record<string, string>;
}

export interface OciImageConfig {
  created?: string;
  architecture?: string;
  os?: string;
  variant?: string;
  config?: {
    Env?: string[] | null;
    Cmd?: string[] | null;
    Entrypoint?: string[] | null;
    WorkingDir?: string;
    User?: string;
    Labels?: Record<string, string> | null;
  };
  rootfs?: { type?: string; diff_ids?: string[] };
  history?: { created?: string; created_by?: string; empty_layer?: boolean; comment?: string }[];
}

export interface ParsedConfig {
  diffIds: string[];
  config: ImageConfig;
  platform?: Platform;
}

/** What envy needs from an image config, checked against the manifest's layer list. */
export function parseImageConfig(raw: OciImageConfig, manifest: Pick<OciManifest, 'layers'> | { layers: unknown[] }, where: string): ParsedConfig {
  const diffIds = raw.rootfs?.diff_ids;
  if (!Array.isArray(diffIds) || !diffIds.every(isDigest)) {
    throw new EnvyError('IMAGE', `${where}: the config has no valid rootfs.diff_ids`, { hint: 'the image config is malformed' });
  }
  if (diffIds.length !== manifest.layers.length) {
    throw new EnvyError('IMAGE', `${where}: the manifest lists ${manifest.layers.length} layers but the config ${diffIds.length} diff_ids`, {
      hint: 'the image is malformed',
    });
  }
  const c = raw.config ?? {};
  const config: ImageConfig = { env: c.Env ?? [] };
  if (typeof raw.created === 'string' && !Number.isNaN(Date.parse(raw.created))) config.created = raw.created;
  if (c.Cmd) config.cmd = c.Cmd;
  if (c.Entrypoint) config.entrypoint = c.Entrypoint;
  if (c.WorkingDir) config.workdir = c.WorkingDir;
  if (c.User) config.user = c.User;
  if (c.Labels && Object.keys(c.Labels).length > 0) config.labels = c.Labels;
  const platform = raw.os && raw.architecture ? { os: raw.os, architecture: raw.architecture, ...(raw.variant ? { variant: raw.variant } : {}) } : undefined;
  return { diffIds, config, ...(platform ? { platform } : {}) };
}
