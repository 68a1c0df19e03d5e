/**
 * env.yaml → devcontainer.json, checked against the Dev Containers spec's own definitions of the fields
 * envy writes (transcribed from containers.dev's devContainer.base.schema.json: types, port and mount
 * shapes, lifecycle command forms), with unknown fields refused so a typo cannot slip through.
 */
import { Ajv2020 } from 'ajv/dist/2020.js';
import { describe, expect, test } from 'vitest';
import { devcontainerJson, imageReference, renderDevcontainer } from '../../../src/env/devcontainer.js';
import { loadText } from '../config/helpers.js';

const command = { type: ['string', 'array', 'object'], items: { type: 'string' }, additionalProperties: { type: ['string', 'array'], items: { type: 'string' } } };
const SPEC_SUBSET = {
  type: 'object',
  required: ['image'],
  additionalProperties: false,
  properties: {
    name: { type: 'string' },
    image: { type: 'string' },
    workspaceFolder: { type: 'string' },
    workspaceMount: { type: 'string' },
    runArgs: { type: 'array', items: { type: 'string' } },
    remoteUser: { type: 'string' },
    containerUser: { type: 'string' },
    updateRemoteUserUID: { type: 'boolean' },
    containerEnv: { type: 'object', additionalProperties: { type: 'string' } },
    mounts: { type: 'array', items: { type: 'string' } },
    forwardPorts: { type: 'array', items: { oneOf: [{ type: 'integer', minimum: 0, maximum: 65535 }, { type: 'string', pattern: '^([a-z0-9-]+):(\\d{1,5})$' }] } },
    portsAttributes: {
      type: 'object',
      additionalProperties: false,
      patternProperties: {
        '(^\\d+(-\\d+)?$)|(.+)': {
          type: 'object',
          additionalProperties: false,
          properties: { label: { type: 'string' }, protocol: { enum: ['http', 'https'] }, onAutoForward: { type: 'string' } },
        },
      },
    },
    postCreateCommand: command,
    postStartCommand: command,
    postAttachCommand: command,
  },
};
const validate = new Ajv2020({ allErrors: true, strict: false }).compile(SPEC_SUBSET);

async function generate(yaml: string) {
  const { spec } = await loadText(yaml);
  return devcontainerJson({ spec, imageKey: 'a'.repeat(12) + 'b'.repeat(52), user: 'dev', bindSource: (s) => `/abs/${s}` });
}

describe('envy devcontainer: env.yaml as devcontainer.json', () => {
  test('a full env.yaml maps field by field, and the result fits the spec', async () => {
    const json = await generate(
      [
        'name: web',
        'base: {debian: bookworm}',
        'env: {NODE_ENV: development, EMPTY: ""}',
        'workspace: {path: /src}',
        'workdir: /src/app',
        'ports: [3000, "8081:80"]',
        'mounts:',
        '  - {volume: cache, target: /cache}',
        '  - {bind: ./data, target: /data, readonly: true}',
        '  - {tmpfs: /scratch}',
        'resources: {memory: 512m, cpus: 2, pids: 100}',
        'hooks:',
        '  onCreate: [npm ci, echo created]',
        '  postStart: echo started',
        '  postAttach: echo hi',
        '',
      ].join('\n'),
    );
    expect(validate(json), JSON.stringify(validate.errors)).toBe(true);
    expect(json).toMatchObject({
      name: 'web',
      image: 'localhost/envy-web:aaaaaaaaaaaa',
      remoteUser: 'dev',
      containerUser: 'dev',
      workspaceFolder: '/src/app',
      workspaceMount: 'source=${localWorkspaceFolder},target=/src,type=bind',
      containerEnv: { NODE_ENV: 'development', EMPTY: '' },
      mounts: ['source=envy-web-cache,target=/cache,type=volume', 'source=/abs/data,target=/data,type=bind,readonly', 'target=/scratch,type=tmpfs'],
      runArgs: ['--network=host', `--memory=${512 * 1024 * 1024}b`, '--cpus=2', '--pids-limit=100'],
      forwardPorts: [3000, 80],
      postCreateCommand: '(npm ci) && (echo created)',
      postStartCommand: 'echo started',
      postAttachCommand: 'echo hi',
    });
    expect(json.portsAttributes?.['80']?.label).toBe('web:80 (envy: host 8081)');
  });

  test('a minimal env.yaml gives only what it says: no empty hooks, env or ports', async () => {
    const json = await generate('name: tiny\nbase: {debian: bookworm}\nnetwork: none\n');
    expect(validate(json), JSON.stringify(validate.errors)).toBe(true);
    expect(Object.keys(json).sort()).toEqual(['containerUser', 'image', 'name', 'remoteUser', 'runArgs', 'updateRemoteUserUID', 'workspaceFolder', 'workspaceMount']);
    expect(json.runArgs).toEqual(['--network=none']);
  });

  test('a mount path with a comma is refused with the field named', async () => {
    await expect(generate('name: x\nbase: {debian: bookworm}\nmounts: [{volume: v, target: "/a,b"}]\n')).rejects.toThrow(/mounts: \/a,b contains a comma/);
  });

  test('the file is JSONC: comment lines, then the JSON; the image name is valid for podman/docker', async () => {
    const json = await generate('name: my-env\nbase: {debian: bookworm}\n');
    const text = renderDevcontainer(json, 'envy-image.tar');
    const body = text.split('\n').filter((l) => !l.startsWith('//')).join('\n');
    expect(JSON.parse(body)).toEqual(json);
    expect(text).toContain('podman load -i .devcontainer/envy-image.tar');
    expect(imageReference('my-env', 'f'.repeat(64))).toMatch(/^localhost\/[a-z0-9]+(?:[._-][a-z0-9]+)*:[0-9a-f]{12}$/);
  });
});
