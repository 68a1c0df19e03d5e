/**
 * env.yaml as a Dev Container (containers.dev, devcontainer.json): for editors that speak that spec
 * rather than SSH. The image is envy's own build, exported as a docker-archive next to the file and
 * named by its content (`localhost/envy-NAME:KEY12`), so a stale archive can never pass for a new one.
 * Pure: the CLI builds, exports and writes (cli/devcontainer.ts).
 */
import type { EnvSpec, MountSpec } from '../config/types.js';
import { EnvyError } from '../errors.js';

/** The subset of the Dev Container spec envy writes (https://containers.dev/implementors/json_reference/). */
export interface DevContainerJson {
  name: string;
  image: string;
  remoteUser: string;
  containerUser: string;
  updateRemoteUserUID: boolean;
  workspaceFolder: string;
  workspaceMount: string;
  containerEnv?: Record<string, string>;
  mounts?: string[];
  runArgs?: string[];
  forwardPorts?: number[];
  portsAttributes?: Record<string, { label: string; protocol?: 'http' | 'https' }>;
  postCreateCommand?: string;
  postStartCommand?: string;
  postAttachCommand?: string;
}

export const ARCHIVE_NAME = 'envy-image.tar';

export function imageReference(name: string, imageKey: string): string {
  return `localhost/envy-${name}:${imageKey.slice(0, 12)}`;
}

/** Several hook commands in order, stopping at the first failure, as envy runs them. */
function commandLine(commands: string[]): string | undefined {
  if (commands.length === 0) return undefined;
  return commands.length === 1 ? commands[0] : commands.map((c) => `(${c})`).join(' && ');
}

/** A --mount style string (docker/podman run --mount); a value with a comma cannot be expressed. */
function mountString(parts: Record<string, string | undefined>): string {
  for (const value of Object.values(parts)) {
    if (value?.includes(',')) {
      throw new EnvyError('CONFIG_INVALID', `mounts: ${value} contains a comma, which a Dev Container mount string cannot express`, { hint: 'rename the path, or drop the mount from env.yaml' });
    }
  }
  return Object.entries(parts)
    .filter((entry): entry is [string, string] => entry[1] !== undefined)
    .map(([k, v]) => (v === '' ? k : `${k}=${v}`))
    .join(',');
}

function devMount(spec: EnvSpec, mount: MountSpec, bindSource: (source: string) => string): string {
  if (mount.type === 'volume') {
    return mountString({ source: `envy-${spec.name}-${mount.name}`, target: mount.target, type: 'volume', ...(mount.readonly ? { readonly: '' } : {}) });
  }
  if (mount.type === 'bind') {
    return mountString({ source: bindSource(mount.source), target: mount.target, type: 'bind', ...(mount.readonly ? { readonly: '' } : {}) });
  }
  return mountString({ target: mount.target, type: 'tmpfs', ...(mount.size !== undefined ? { 'tmpfs-size': String(mount.size) } : {}) });
}

export interface DevContainerInput {
  spec: EnvSpec;
  imageKey: string;
  /** The environment user (name) the image was built with. */
  user: string;
  /** Host path of a bind mount's source (relative ones resolved against the project). */
  bindSource: (source: string) => string;
}

export function devcontainerJson(input: DevContainerInput): DevContainerJson {
  const { spec } = input;
  const json: DevContainerJson = {
    name: spec.name,
    image: imageReference(spec.name, input.imageKey),
    remoteUser: input.user,
    containerUser: input.user,
    // The image's user has the host user's uid (envy's keep-id), so files in the workspace stay the user's.
    updateRemoteUserUID: true,
    workspaceFolder: spec.workdir,
    workspaceMount: mountString({ source: '${localWorkspaceFolder}', target: spec.workspace.path, type: 'bind' }),
  };
  if (Object.keys(spec.env).length > 0) json.containerEnv = { ...spec.env };
  const mounts = spec.mounts.map((m) => devMount(spec, m, input.bindSource));
  if (mounts.length > 0) json.mounts = mounts;
  const runArgs: string[] = [];
  // envy's default: the environment shares the host's network, so its ports are the host's loopback ports.
  if (spec.network === 'host') runArgs.push('--network=host');
  else runArgs.push('--network=none');
  if (spec.resources.memory !== undefined) runArgs.push(`--memory=${spec.resources.memory}b`);
  if (spec.resources.cpus !== undefined) runArgs.push(`--cpus=${spec.resources.cpus}`);
  if (spec.resources.pids !== undefined) runArgs.push(`--pids-limit=${spec.resources.pids}`);
  json.runArgs = runArgs;
  const tcp = spec.ports.filter((p) => p.protocol === 'tcp');
  if (tcp.length > 0) {
    json.forwardPorts = tcp.map((p) => p.container);
    json.portsAttributes = Object.fromEntries(tcp.map((p) => [String(p.container), { label: p.host === p.container ? `${spec.name}:${p.container}` : `${spec.name}:${p.container} (envy: host ${p.host})` }]));
  }
  const postCreate = commandLine(spec.hooks.onCreate);
  const postStart = commandLine(spec.hooks.postStart);
  const postAttach = commandLine(spec.hooks.postAttach);
  if (postCreate) json.postCreateCommand = postCreate;
  if (postStart) json.postStartCommand = postStart;
  if (postAttach) json.postAttachCommand = postAttach;
  return json;
}

/** devcontainer.json is JSONC: a leading comment says where it came from and how to refresh it. */
export function renderDevcontainer(json: DevContainerJson, archive: string): string {
  return [
    '// Generated by `envy devcontainer` from env.yaml; re-run it with --force after changing env.yaml.',
    `// The image is envy's build, saved as ${archive}: load it first with`,
    `//   podman load -i .devcontainer/${archive}   (or: docker load -i .devcontainer/${archive})`,
    JSON.stringify(json, null, 2),
    '',
  ].join('\n');
}
