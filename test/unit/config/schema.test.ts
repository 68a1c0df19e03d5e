import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DEFAULTS } from '../../../src/config/normalize.js';
import { parseDuration, parseSize } from '../../../src/config/units.js';
import { loadText, MINIMAL } from './helpers.js';

type Schema = Record<string, unknown>;
const schema = JSON.parse(readFileSync(resolve(import.meta.dirname, '../../../schemas/env.schema.json'), 'utf8')) as Schema;

function deref(node: Schema): Schema {
  const ref = node.$ref as string | undefined;
  if (!ref) return node;
  const target = ref.replace(/^#\//, '').split('/').reduce<Schema>((at, key) => at[key] as Schema, schema);
  return { ...deref(target), ...node };
}

/** Every named property in the schema, with its dotted path. */
function properties(node: Schema, path: string, out: [string, Schema][] = []): [string, Schema][] {
  const resolved = deref(node);
  for (const [name, child] of Object.entries((resolved.properties as Record<string, Schema> | undefined) ?? {})) {
    out.push([`${path}${name}`, deref(child)]);
    properties(child, `${path}${name}.`, out);
  }
  if (resolved.items) properties(resolved.items as Schema, `${path.replace(/\.$/, '')}[].`, out);
  if (typeof resolved.additionalProperties === 'object') properties(resolved.additionalProperties as Schema, `${path}<name>.`, out);
  for (const branch of (resolved.anyOf as Schema[] | undefined) ?? []) properties(branch, path, out);
  return out;
}

function schemaAt(path: string): Schema {
  const found = properties(schema, '').find(([name]) => name === path);
  if (!found) throw new Error(`no property ${path} in the schema`);
  return found[1];
}

describe('schemas/env.schema.json', () => {
  const all = properties(schema, '');

  it('finds the nested properties (so the checks below cover them)', () => {
    const names = all.map(([name]) => name);
    expect(names).toEqual(expect.arrayContaining(['name', 'base.debian', 'setup[].shell', 'services.<name>.ready.interval', 'backend.arch', 'mounts[].size']));
    expect(all.length).toBeGreaterThan(60);
  });

  it('is draft 2020-12 and closed everywhere', () => {
    expect(schema.$schema).toBe('https://json-schema.org/draft/2020-12/schema');
    const open: string[] = [];
    const visit = (node: unknown, path: string) => {
      if (!node || typeof node !== 'object') return;
      const object = node as Schema;
      if (object.properties && object.additionalProperties !== false) open.push(path);
      for (const [key, child] of Object.entries(object)) visit(child, `${path}/${key}`);
    };
    visit(schema, '#');
    expect(open).toEqual([]);
  });

  it.each(all.map(([name, node]) => [name, node] as const))('%s has a description and examples', (_name, node) => {
    expect(typeof node.description).toBe('string');
    expect((node.description as string).length).toBeGreaterThan(10);
    expect(Array.isArray(node.examples) && node.examples.length > 0).toBe(true);
  });

  it('documents the same defaults the loader fills in', async () => {
    const loaded = (await loadText(MINIMAL + 'setup: [{run: x}]\nports: [{container: 1}]\nservices:\n  web: {run: x, ready: y}\nbackend: vm\n')).spec;
    expect(schemaAt('workspace.path').default).toBe(loaded.workspace.path);
    expect(schemaAt('workspace.sync').default).toBe(loaded.workspace.sync);
    expect(schemaAt('workspace.direction').default).toBe(loaded.workspace.direction);
    expect(schemaAt('setup[].shell').default).toEqual(loaded.setup[0]!.shell);
    expect(schemaAt('setup[].user').default).toBe(loaded.setup[0]!.user);
    expect(schemaAt('user.shell').default).toBe(loaded.user.shell);
    expect(schemaAt('network').default).toBe(loaded.network);
    expect(schemaAt('ports[].protocol').default).toBe(loaded.ports[0]!.protocol);
    expect(schemaAt('services.<name>.restart').default).toBe(loaded.services[0]!.restart);
    expect(parseDuration(schemaAt('services.<name>.stopGrace').default as string)).toBe(loaded.services[0]!.stopGrace);
    expect(parseDuration(schemaAt('services.<name>.ready.interval').default as string)).toBe(loaded.services[0]!.ready!.interval);
    expect(parseDuration(schemaAt('services.<name>.ready.timeout').default as string)).toBe(loaded.services[0]!.ready!.timeout);
    expect(parseSize(schemaAt('backend.memory').default as string)).toBe(DEFAULTS.vmMemoryBytes);
    expect(schemaAt('backend.cpus').default).toBe(DEFAULTS.vmCpus);
    expect(loaded.backend).toMatchObject({ memory: DEFAULTS.vmMemoryBytes, cpus: DEFAULTS.vmCpus });
    expect(schema.properties && (schema.properties as Record<string, Schema>).backend!.default).toBe('namespace');
  });

  it('accepts its own examples', async () => {
    // Each top-level example, placed into a minimal file, must load: the docs cannot show something envy rejects.
    const failures: string[] = [];
    for (const [name, node] of Object.entries(schema.properties as Record<string, Schema>)) {
      for (const example of (node.examples as unknown[]) ?? []) {
        const document = { name: 'demo', base: { host: true }, [name]: example };
        try {
          await loadText(JSON.stringify(document));
        } catch (error) {
          failures.push(`${name}: ${JSON.stringify(example)}: ${(error as Error).message}`);
        }
      }
    }
    expect(failures).toEqual([]);
  });
});
