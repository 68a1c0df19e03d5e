/**
 * Package requests as env.yaml writes them (`curl`, `typescript@5`,
 * `requests>=2`) and the same request pinned to the version env.lock resolved.
 */
export type PackageManager = 'apt' | 'npm' | 'pip';

/** The bare package name of a request, or undefined when it names no registry package (a URL, a path, a git spec). */
export function packageName(manager: PackageManager, request: string): string | undefined {
  switch (manager) {
    case 'apt':
      // `name=version`, `name/release`, `name:arch` (the arch qualifier is part of what to install).
      return /^([a-z0-9][a-z0-9+.-]*(?::[a-z0-9-]+)?)(?:[=/].*)?$/.exec(request)?.[1];
    case 'npm': {
      const match = /^((?:@[a-z0-9][\w.-]*\/)?[a-z0-9][\w.-]*)(?:@.*)?$/i.exec(request);
      return match?.[1];
    }
    case 'pip':
      // PEP 508: name, optional [extras], then a version specifier or marker.
      return /^([A-Za-z0-9][A-Za-z0-9._-]*(?:\[[^\]]*\])?)\s*(?:[=<>!~;].*)?$/.exec(request)?.[1];
  }
}

/** The request pinned to `version`, in the manager's own syntax; unpinnable requests stay as written. */
export function pinnedRequest(manager: PackageManager, request: string, version: string | undefined): string {
  if (version === undefined) return request;
  const name = packageName(manager, request);
  if (name === undefined) return request;
  const separator = manager === 'apt' ? '=' : manager === 'npm' ? '@' : '==';
  return `${name}${separator}${version}`;
}
