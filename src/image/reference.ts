/**
 * Image references as docker and podman read them: `[host[:port]/]path[:tag][@sha256:...]`,
 * with Docker Hub as the default registry and `library/` for its official images.
 */
import { EnvyError } from '../errors.js';
import { isDigest } from './digest.js';

export const DOCKER_HUB = 'docker.io';
/** Docker Hub's API lives on a different host than its name. */
const DOCKER_HUB_API = 'registry-1.docker.io';

export interface ImageReference {
  /** Registry host as written (docker.io for Docker Hub), with :port when given. */
  registry: string;
  /** Repository path on the registry, e.g. library/debian. */
  repository: string;
  tag?: string;
  digest?: string;
}

const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const HOST = /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::\d{1,5})?$/;

function invalid(ref: string, why: string): EnvyError {
  return new EnvyError('CONFIG_INVALID', `image reference "${ref}" is invalid: ${why}`, {
    hint: 'write it as [registry[:port]/]name[:tag][@sha256:<64 hex>], e.g. debian:bookworm or 127.0.0.1:5000/tools@sha256:...',
  });
}

export function parseReference(ref: string): ImageReference {
  const text = ref.trim();
  if (text === '') throw invalid(ref, 'it is empty');
  let rest = text;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at !== -1) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!isDigest(digest)) throw invalid(ref, `"${digest}" is not a sha256 digest`);
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw invalid(ref, `"${tag}" is not a valid tag`);
  }
  const parts = rest.split('/');
  let registry = DOCKER_HUB;
  const first = parts[0]!;
  if (parts.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost' || first.startsWith('['))) {
    if (!HOST.test(first)) throw invalid(ref, `"${first}" is not a registry host`);
    registry = first.toLowerCase();
    parts.shift();
  }
  if (registry === 'index.docker.io' || registry === DOCKER_HUB_API) registry = DOCKER_HUB;
  if (parts.length === 0 || parts.some((part) => part === '')) throw invalid(ref, 'it has an empty path component');
  for (const part of parts) {
    if (!COMPONENT.test(part)) {
      throw invalid(ref, part.toLowerCase() === part ? `"${part}" is not a valid name component` : `"${part}" has uppercase letters`);
    }
  }
  if (registry === DOCKER_HUB && parts.length === 1) parts.unshift('library');
  const repository = parts.join('/');
  if (repository.length > 255) throw invalid(ref, 'the name is longer than 255 characters');
  if (tag === undefined && digest === undefined) tag = 'latest';
  return { registry, repository, ...(tag === undefined ? {} : { tag }), ...(digest === undefined ? {} : { digest }) };
}

/** The canonical text of a reference (docker.io/library/debian:bookworm). */
export function formatReference(ref: ImageReference): string {
  return `${ref.registry}/${ref.repository}${ref.tag ? `:${ref.tag}` : ''}${ref.digest ? `@${ref.digest}` : ''}`;
}

/** What to ask the registry for: the digest when pinned (the tag is then only informative). */
export function referenceTarget(ref: ImageReference): string {
  return ref.digest ?? ref.tag ?? 'latest';
}

/** The host that serves the registry API. */
export function apiHost(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_API : registry;
}

/** Loopback registries are spoken to over plain HTTP; anything else needs TLS unless configured insecure. */
export function isLoopbackRegistry(registry: string): boolean {
  const host = registry.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}
