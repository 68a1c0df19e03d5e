// The esbuild configuration of the CLI bundle, shared by scripts/build.mjs and the tests that bundle.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

/**
 * Replaces src/config/compiled-schema.ts with ajv's standalone validator, generated now from the same
 * schema, options and keywords, so the shipped CLI never loads ajv nor compiles the schema at start-up.
 */
export function standaloneValidatorPlugin(root) {
  return {
    name: 'envy-standalone-validator',
    setup(build) {
      build.onLoad({ filter: /[\\/]src[\\/]config[\\/]compiled-schema\.ts$/ }, () => {
        const require = createRequire(join(root, 'package.json'));
        const Ajv2020 = require('ajv/dist/2020').default;
        const standaloneCode = require('ajv/dist/standalone').default;
        const options = JSON.parse(readFileSync(join(root, 'src/config/ajv-options.json'), 'utf8'));
        const source = readFileSync(join(root, 'src/config/compiled-schema.ts'), 'utf8');
        const keywords = JSON.parse(/CUSTOM_KEYWORDS = (\[[^\]]*\])/.exec(source)[1].replace(/'/g, '"'));
        const ajv = new Ajv2020({ ...options, code: { source: true, esm: true } });
        for (const keyword of keywords) ajv.addKeyword({ keyword, schemaType: 'string' });
        const validate = ajv.compile(JSON.parse(readFileSync(join(root, 'schemas/env.schema.json'), 'utf8')));
        const code = standaloneCode(ajv, validate);
        return {
          contents: `${code}\nexport const CUSTOM_KEYWORDS = ${JSON.stringify(keywords)};\nexport async function createValidator() { return validate; }\n`,
          loader: 'js',
          resolveDir: join(root, 'src/config'),
        };
      });
    },
  };
}

export function bundleOptions(root, { entryPoints, outdir, define = {} }) {
  return {
    entryPoints,
    outdir,
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node20',
    sourcemap: 'linked',
    chunkNames: 'chunks/[name]-[hash]',
    logLevel: 'warning',
    // Some bundled CommonJS dependencies call require(); give ESM output one.
    banner: { js: "import { createRequire as __envyCreateRequire } from 'node:module'; const require = __envyCreateRequire(import.meta.url);" },
    define: { 'process.env.NODE_ENV': '"production"', ...define },
    // react-devtools-core is an optional ink dependency, only used when DEV=true.
    external: ['react-devtools-core'],
    plugins: [standaloneValidatorPlugin(root)],
  };
}

/** The `envy exec` fast path as one CommonJS file (bin/envy.js requires it before any ES module loads). */
export function execFastBundleOptions(root, outfile) {
  return {
    entryPoints: [join(root, 'src/cli/exec-fast.ts')],
    outfile,
    bundle: true,
    format: 'cjs',
    platform: 'node',
    target: 'node20',
    sourcemap: 'linked',
    logLevel: 'warning',
    banner: { js: "const __envyModuleUrl = require('node:url').pathToFileURL(__filename).href;" },
    define: { 'process.env.NODE_ENV': '"production"', 'import.meta.url': '__envyModuleUrl' },
  };
}
