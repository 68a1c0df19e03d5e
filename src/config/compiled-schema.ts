/**
 * The env.yaml validator. Compiling the schema costs 130–170 ms, far too much
 * for every `envy` start, so the bundle never runs this module: the build
 * (scripts/bundle-config.mjs) replaces it with ajv's standalone code generated
 * from the same schema and options. Run from source (tests), it compiles here.
 */
import type { ValidateFunction } from 'ajv';
import ajvOptions from './ajv-options.json' with { type: 'json' };

/** Annotation keywords the schema uses beyond JSON Schema (words for error messages). */
export const CUSTOM_KEYWORDS = ['x-envy-expected'];

export async function createValidator(): Promise<ValidateFunction> {
  const [ajvModule, schemaModule] = await Promise.all([
    import('ajv/dist/2020.js'),
    import('../../schemas/env.schema.json', { with: { type: 'json' } }),
  ]);
  // Node's ESM loader exposes ajv's named export; an esbuild bundle exposes only `default`, the class itself.
  const Ajv2020 = ajvModule.Ajv2020 ?? (ajvModule.default as unknown as typeof ajvModule.Ajv2020);
  const ajv = new Ajv2020(ajvOptions);
  for (const keyword of CUSTOM_KEYWORDS) ajv.addKeyword({ keyword, schemaType: 'string' });
  return ajv.compile(schemaModule.default);
}
