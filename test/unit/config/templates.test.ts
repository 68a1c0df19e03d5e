import { readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadSpec } from '../../../src/config/load.js';

const root = resolve(import.meta.dirname, '../../..');
const templatesDir = join(root, 'templates');

function shippedSpecs(): string[] {
  let templates: string[] = [];
  try {
    templates = readdirSync(templatesDir)
      .filter((name) => name.endsWith('.yaml'))
      .map((name) => join('templates', name));
  } catch {
    // No templates directory: the count check below fails and says so.
  }
  const example = readdirSync(root).includes('env.example.yaml') ? ['env.example.yaml'] : [];
  return [...example, ...templates].sort();
}

describe('shipped env.yaml files', () => {
  const files = shippedSpecs();

  it('exist (templates/*.yaml and env.example.yaml)', () => {
    expect(files).toContain('env.example.yaml');
    expect(files.filter((file) => file.startsWith('templates/')).length).toBeGreaterThan(0);
  });

  it.each(files)('%s loads cleanly', async (file) => {
    const { spec } = await loadSpec(file, { cwd: root, env: {} });
    expect(spec.name).toMatch(/^[a-z0-9-]+$/);
  });
});
