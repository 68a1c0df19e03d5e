/**
 * Host variables that build steps see without env.yaml naming them: the proxy variables (as Docker
 * passes its predefined build args) and the package managers' index settings. They say where packages
 * come from on this machine (a corporate proxy, an Artifactory mirror), never what gets installed:
 * versions come from env.yaml and env.lock. So they are kept out of step keys, and a build behind a
 * mirror reuses the layers of a build without one.
 */
export const BUILD_PASSTHROUGH_VARIABLES: readonly string[] = [
  ...['http_proxy', 'https_proxy', 'ftp_proxy', 'no_proxy', 'all_proxy'].flatMap((name) => [name, name.toUpperCase()]),
  'PIP_INDEX_URL',
  'PIP_EXTRA_INDEX_URL',
  'PIP_TRUSTED_HOST',
  'PIP_FIND_LINKS',
  'NPM_CONFIG_REGISTRY',
  'npm_config_registry',
];

/** The pass-through variables set (non-empty) in `hostEnv`. */
export function buildPassthroughEnv(hostEnv: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of BUILD_PASSTHROUGH_VARIABLES) {
    const value = hostEnv[name];
    if (value !== undefined && value !== '') env[name] = value;
  }
  return env;
}
