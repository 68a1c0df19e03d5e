/**
 * Schema validation with ajv, and the translation of ajv's errors into
 * diagnostics people can act on: positioned at the offending key or value,
 * one per real problem (union branches that were never meant are dropped),
 * with a "did you mean" where a typo is likely.
 */
import type { ErrorObject, ValidateFunction } from 'ajv';
import type { Diagnostic, NodeIndex, PathSegment } from './diagnostics.js';
import { fromPointer, toPointer } from './diagnostics.js';
import { closest } from './suggest.js';

type SchemaNode = Record<string, unknown>;

let validator: Promise<ValidateFunction> | undefined;

/** Compiled once per process; ajv and the schema are loaded only when a spec is first validated. */
export function schemaValidator(): Promise<ValidateFunction> {
  validator ??= import('./compiled-schema.js').then((m) => m.createValidator());
  return validator;
}

export async function validateSpec(value: unknown, index: NodeIndex): Promise<Diagnostic[]> {
  const validate = await schemaValidator();
  if (validate(value)) return [];
  return explain(validate.errors ?? [], index);
}

export function explain(errors: readonly ErrorObject[], index: NodeIndex): Diagnostic[] {
  const relevant = dropUnintendedBranches(errors);
  const diagnostics: Diagnostic[] = [];
  for (const error of relevant) {
    const diagnostic = describe(error, index);
    if (diagnostic) diagnostics.push(diagnostic);
  }
  return diagnostics;
}

/**
 * For anyOf/oneOf, keep only the errors of branches whose type matched the
 * value: a string given for `backend` was meant as the string form, so the
 * object form's complaints are noise. When no branch's type matched, one
 * "expected X or Y" error replaces them all.
 */
function dropUnintendedBranches(errors: readonly ErrorObject[]): ErrorObject[] {
  const dropped = new Set<ErrorObject>();
  const replacements: ErrorObject[] = [];
  for (const union of errors) {
    if (union.keyword !== 'anyOf' && union.keyword !== 'oneOf') continue;
    if (isKindSelector(union)) {
      for (const error of errors) if (error !== union && error.schemaPath.startsWith(union.schemaPath + '/')) dropped.add(error);
      // `required` holds vacuously for a non-mapping, so every branch "passes"; the type error says what is wrong.
      if (union.data === null || typeof union.data !== 'object' || Array.isArray(union.data)) dropped.add(union);
      continue;
    }
    const branches = union.schema as SchemaNode[];
    const typeMismatched = branches.map((_, i) =>
      errors.some((error) => error.keyword === 'type' && error.instancePath === union.instancePath && error.schemaPath === `${union.schemaPath}/${i}/type`),
    );
    const inBranch = (error: ErrorObject, i: number) => error.schemaPath.startsWith(`${union.schemaPath}/${i}/`);
    if (typeMismatched.every(Boolean)) {
      for (const error of errors) if (branches.some((_, i) => inBranch(error, i))) dropped.add(error);
      dropped.add(union);
      replacements.push({ ...union, keyword: 'type', params: { type: branches.map((branch) => branch.type as string) } });
      continue;
    }
    for (const error of errors) if (branches.some((_, i) => typeMismatched[i] && inBranch(error, i))) dropped.add(error);
    const remaining = errors.some((error) => !dropped.has(error) && branches.some((_, i) => inBranch(error, i)));
    if (remaining) dropped.add(union);
  }
  return [...errors.filter((error) => !dropped.has(error)), ...replacements];
}

/** A oneOf whose branches only say `required: [key]`: "exactly one of these keys". */
function isKindSelector(error: ErrorObject): boolean {
  const branches = error.schema as SchemaNode[];
  return error.keyword === 'oneOf' && branches.every((branch) => Object.keys(branch).length === 1 && Array.isArray(branch.required) && branch.required.length === 1);
}

function describe(error: ErrorObject, index: NodeIndex): Diagnostic | undefined {
  const path = displayPath(error.instancePath, index);
  const node = index.get(error.instancePath);
  const valueAt = node ? (node.empty ? (node.keyOffset ?? node.valueOffset) : node.valueOffset) : 0;
  const keyAt = node ? (node.keyOffset ?? node.valueOffset) : 0;
  const parent = error.parentSchema as SchemaNode | undefined;
  const params = error.params as Record<string, unknown>;
  const got = describeValue(error.data, node?.text);

  switch (error.keyword) {
    case 'additionalProperties': {
      const key = String(params.additionalProperty);
      const child = index.get(toPointer([...fromPointer(error.instancePath), key]));
      const allowed = Object.keys((parent?.properties as SchemaNode | undefined) ?? {});
      const suggestion = closest(key, allowed);
      return {
        offset: child?.keyOffset ?? keyAt,
        path: [...path, key],
        message: 'unknown field',
        hint: suggestion ? `did you mean "${suggestion}"?` : `allowed fields here: ${allowed.join(', ')}`,
      };
    }
    case 'required': {
      const missing = String(params.missingProperty);
      return { offset: keyAt, path: [...path, missing], message: 'required field is missing', hint: requiredHint(missing, path) };
    }
    case 'dependentRequired': {
      const present = String(params.property);
      const child = index.get(toPointer([...fromPointer(error.instancePath), present]));
      return {
        offset: child?.keyOffset ?? keyAt,
        path: [...path, present],
        message: `requires "${String(params.missingProperty)}" as well`,
        hint: `add "${String(params.missingProperty)}", or remove "${present}"`,
      };
    }
    case 'oneOf': {
      const kinds = (error.schema as SchemaNode[]).map((branch) => (branch.required as string[])[0]!);
      const passing = params.passingSchemas as number[] | null;
      if (passing === null || !isKindSelector(error)) {
        return { offset: keyAt, path, message: `needs exactly one of ${kinds.map((kind) => `"${kind}"`).join(', ')}`, hint: `for example ${kindExample(path)}` };
      }
      const [, second] = passing.map((i) => kinds[i]!);
      const secondNode = index.get(toPointer([...fromPointer(error.instancePath), second!]));
      const named = passing.map((i) => `"${kinds[i]}"`).join(' and ');
      return { offset: secondNode?.keyOffset ?? keyAt, path, message: `has both ${named}; exactly one is allowed`, hint: `keep one of ${named}` };
    }
    case 'type': {
      // A string format's own words ("a duration like 5s") say more than "a string", unless a mapping form exists too.
      const types = [params.type].flat();
      const expected = typeof parent?.['x-envy-expected'] === 'string' && !types.includes('object') ? parent['x-envy-expected'] : describeTypes(params.type);
      return { offset: valueAt, path, message: `expected ${expected}, got ${got}` };
    }
    case 'enum': {
      const allowed = (params.allowedValues as unknown[]).map(String);
      const suggestion = typeof error.data === 'string' ? closest(error.data, allowed) : undefined;
      return {
        offset: valueAt,
        path,
        message: `expected one of ${allowed.join(', ')}; got ${got}`,
        hint: suggestion ? `did you mean "${suggestion}"?` : `use one of ${allowed.join(', ')}`,
      };
    }
    case 'const':
      return { offset: valueAt, path, message: `expected ${JSON.stringify(params.allowedValue)}, got ${got}`, hint: `write ${JSON.stringify(params.allowedValue)}` };
    case 'pattern': {
      const expected = (parent?.['x-envy-expected'] as string | undefined) ?? `a string matching ${String(params.pattern)}`;
      if (error.propertyName !== undefined) {
        const child = index.get(toPointer([...fromPointer(error.instancePath), error.propertyName]));
        return { offset: child?.keyOffset ?? keyAt, path: [...path, error.propertyName], message: `invalid name; expected ${expected}` };
      }
      return { offset: valueAt, path, message: `expected ${expected}; got ${got}`, hint: patternHint(path, error.data) };
    }
    case 'minimum':
    case 'maximum':
    case 'exclusiveMinimum':
    case 'exclusiveMaximum': {
      const words = { minimum: 'at least', maximum: 'at most', exclusiveMinimum: 'greater than', exclusiveMaximum: 'less than' }[error.keyword];
      return { offset: valueAt, path, message: `must be ${words} ${String(params.limit)}; got ${got}` };
    }
    case 'minLength':
      return { offset: valueAt, path, message: 'must not be empty' };
    case 'minItems':
      return { offset: valueAt, path, message: 'must not be an empty list' };
    case 'propertyNames':
    case 'anyOf':
      // propertyNames: its inner error names the key. anyOf: only reached when a branch matched its type.
      return undefined;
    default:
      return { offset: valueAt, path, message: error.message ?? `fails the ${error.keyword} rule` };
  }
}

/** Path segments for a pointer, with array indices as numbers (the index knows which parents are lists). */
function displayPath(pointer: string, index: NodeIndex): PathSegment[] {
  return index.get(pointer)?.path ?? fromPointer(pointer);
}

function describeValue(value: unknown, text: string | undefined): string {
  if (value === null) return 'nothing (an empty value)';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? value.slice(0, 57) + '...' : value);
  return text ?? String(value);
}

const TYPE_WORDS: Record<string, string> = {
  string: 'a string',
  integer: 'a whole number',
  number: 'a number',
  boolean: 'true or false',
  object: 'a mapping',
  array: 'a list',
  null: 'nothing',
};

function describeTypes(types: unknown): string {
  const list = (Array.isArray(types) ? types : [types]).flat().map(String);
  const words = [...new Set(list.map((type) => TYPE_WORDS[type] ?? type))];
  return words.length === 1 ? words[0]! : `${words.slice(0, -1).join(', ')} or ${words[words.length - 1]}`;
}

function requiredHint(missing: string, parentPath: PathSegment[]): string {
  if (parentPath.length === 0 && missing === 'name') return 'add a line like `name: my-app`';
  if (parentPath.length === 0 && missing === 'base') return 'add a base, for example `base: {debian: bookworm}`';
  return `add "${missing}:"`;
}

function patternHint(path: PathSegment[], value: unknown): string | undefined {
  if (path.length === 1 && path[0] === 'name' && typeof value === 'string') {
    const label = value.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 63).replace(/-+$/, '');
    if (label !== '') return `try "${label}"`;
  }
  return undefined;
}

function kindExample(path: PathSegment[]): string {
  if (path[0] === 'base') return '`base: {debian: bookworm}` or `base: {image: debian:bookworm-slim}`';
  if (path[0] === 'mounts') return '`{volume: cache, target: /cache}`, `{bind: ./data, target: /data}` or `{tmpfs: /tmp}`';
  return 'one of the forms in the reference';
}
