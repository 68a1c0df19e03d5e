// Renders schemas/env.schema.json as the env.yaml reference in README.md, between
// the env-reference markers, so the docs and the contract cannot disagree.
//   node scripts/gen-reference.mjs           rewrite the section
//   node scripts/gen-reference.mjs --check   exit 1 when the section is stale
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const schemaFile = join(root, 'schemas/env.schema.json');
const readmeFile = join(root, 'README.md');
const START = '<!-- env-reference:start -->';
const END = '<!-- env-reference:end -->';

const schema = JSON.parse(readFileSync(schemaFile, 'utf8'));

function deref(node) {
  if (!node?.$ref) return node;
  const target = node.$ref.replace(/^#\//, '').split('/').reduce((at, key) => at[key], schema);
  const { $ref: _ref, ...rest } = node;
  return { ...deref(target), ...rest };
}

const TYPE_WORDS = { object: 'mapping', array: 'list', integer: 'integer', number: 'number', string: 'string', boolean: 'boolean' };

function typeOf(raw) {
  const node = deref(raw);
  if (node.const !== undefined) return `\`${JSON.stringify(node.const)}\``;
  if (node.enum) return node.enum.map((value) => `\`${value}\``).join(' \\| ');
  if (node.anyOf) return node.anyOf.map(typeOf).join(' \\| ');
  const types = [node.type ?? []].flat();
  return types
    .map((type) => {
      if (type === 'array' && node.items) return `list of ${typeOf(node.items)}`;
      if (type === 'object' && typeof node.additionalProperties === 'object') return `map of name → ${typeOf(node.additionalProperties)}`;
      return TYPE_WORDS[type] ?? type;
    })
    .join(' \\| ');
}

function cell(text) {
  return String(text).replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

function flow(value) {
  return '`' + cell(JSON.stringify(value)) + '`';
}

function defaultOf(node) {
  if (node.default === undefined) return '';
  return flow(node.default);
}

function expectedOf(node) {
  return node['x-envy-expected'] ? ` Format: ${node['x-envy-expected']}.` : '';
}

/** Rows for every field below `node`, depth first, named by their path. */
function rows(raw, path, out = []) {
  const node = deref(raw);
  const branches = node.anyOf ? node.anyOf.map(deref) : [node];
  for (const branch of branches) {
    for (const [name, child] of Object.entries(branch.properties ?? {})) {
      const field = deref(child);
      out.push(`| \`${path}${name}\` | ${typeOf(field)} | ${defaultOf(field)} | ${cell(field.description + expectedOf(field))} | ${flow(field.examples[0])} |`);
      rows(field, `${path}${name}.`, out);
    }
    if (branch.items) rows(branch.items, `${path.replace(/\.$/, '')}[].`, out);
    if (typeof branch.additionalProperties === 'object') rows(branch.additionalProperties, `${path}<name>.`, out);
  }
  return out;
}

function render() {
  const required = new Set(schema.required);
  const out = [
    START,
    '<!-- Generated from schemas/env.schema.json by scripts/gen-reference.mjs: edit the schema, then run the script. -->',
    '',
    schema.description,
    '',
    'Unknown fields are errors everywhere. Required at the top level: ' + schema.required.map((name) => `\`${name}\``).join(', ') + '.',
    '',
  ];
  for (const [name, raw] of Object.entries(schema.properties)) {
    const node = deref(raw);
    out.push(`### \`${name}\`${required.has(name) ? ' (required)' : ''}`, '');
    out.push(`Type: ${typeOf(node).replace(/\\\|/g, '|')}.${node.default !== undefined ? ` Default: ${flow(node.default)}.` : ''}`, '');
    out.push(node.description + expectedOf(node), '');
    const nested = rows(node, `${name}.`);
    if (nested.length > 0) {
      out.push('| field | type | default | description | example |', '|---|---|---|---|---|', ...nested, '');
    }
    // One block per example: together they would repeat the key, which YAML (and envy) rejects.
    for (const example of node.examples) out.push('```yaml', stringify({ [name]: example }, { lineWidth: 0 }).trimEnd(), '```', '');
  }
  out.push(
    '### Units',
    '',
    '- **Durations** are strings with a unit: `500ms`, `5s`, `2m`, `1h` (fractions allowed: `1.5s`).',
    '- **Sizes** are a number of bytes, or a number with a unit `k`, `m`, `g`, `t` (also `K`, `MB`, `GiB`, ...), all powers of 1024: `512m`, `2g`.',
    '- **Paths inside the environment** (`workdir`, `files[].dest`, mount targets, `workspace.path`) are absolute.',
    '  **Paths in the project** (`files[].src`, `base.oci`, `setup[].inputs`, a kernel path) are relative to env.yaml\'s',
    '  directory and may not leave it (no absolute paths, no `..` above it).',
    '- `files[].mode` is octal however it is written: `0755`, `"0755"` and `0o755` all mean rwxr-xr-x.',
    '',
    '### Variables',
    '',
    'String values (never keys) may use variables from the environment envy runs in, with the shell\'s rules:',
    '',
    '| syntax | result |',
    '|---|---|',
    '| `${VAR}` | the value of `VAR`; an error naming the line if `VAR` is unset |',
    '| `${VAR:-default}` | `default` when `VAR` is unset or empty |',
    '| `${VAR-default}` | `default` when `VAR` is unset (an empty value is kept) |',
    '| `${VAR:?message}` | an error with `message` when `VAR` is unset or empty |',
    '| `${VAR?message}` | an error with `message` when `VAR` is unset |',
    '| `$$` | a literal `$` (so `$${HOME}` reaches the environment as `${HOME}`) |',
    '',
    'Defaults may contain variables: `${A:-${B:-x}}`. A `$` not followed by `{` or `$` is kept as is, so `$HOME` in a',
    'command is expanded by the shell inside the environment, not by envy. Write `$$` for every `$` that must reach the',
    'command verbatim before a `{` (`$${HOME}`) and for a literal `$$` (`$$$$`). An unquoted value that interpolates to a',
    'number or `true`/`false` counts as one (`cpus: ${CPUS:-2}`); quote it to keep a string. Inside `[...]` or `{...}`',
    'quote any value that uses `${...}`, since braces are YAML syntax there.',
    END,
  );
  return out.join('\n');
}

const section = render();
const check = process.argv.includes('--check');
if (!existsSync(readmeFile)) {
  if (check) {
    console.error('README.md is missing; run node scripts/gen-reference.mjs');
    process.exit(1);
  }
  writeFileSync(readmeFile, `${START}\n${END}\n`);
}
const readme = readFileSync(readmeFile, 'utf8');
const start = readme.indexOf(START);
const end = readme.indexOf(END);
if (start === -1 || end === -1 || end < start) {
  console.error(`README.md lacks the markers ${START} ... ${END}; add them where the env.yaml reference belongs`);
  process.exit(1);
}
const current = readme.slice(start, end + END.length);
if (check) {
  if (current !== section) {
    console.error('README.md: the env.yaml reference is stale (schemas/env.schema.json changed); run node scripts/gen-reference.mjs');
    process.exit(1);
  }
  console.log('README.md: the env.yaml reference is up to date');
} else if (current !== section) {
  writeFileSync(readmeFile, readme.slice(0, start) + section + readme.slice(end + END.length));
  console.log('README.md: env.yaml reference updated');
} else {
  console.log('README.md: the env.yaml reference is up to date');
}
