/**
 * `${VAR}` interpolation from the host environment, with bash's default and
 * error operators. Applied per string scalar after parsing, so every error can
 * point at the scalar it came from. A `$` not followed by `{` or `$` stays as
 * written, so shell commands can keep using `$HOME` for the environment's own
 * variables.
 */

export type HostEnv = Readonly<Record<string, string | undefined>>;

export class InterpolationError extends Error {
  constructor(
    message: string,
    readonly hint: string,
  ) {
    super(message);
  }
}

const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const OPERATOR = /^(:-|-|:\?|\?)/;

/** Whether `text` contains anything interpolation would change. */
export function needsInterpolation(text: string): boolean {
  return text.includes('${') || text.includes('$$');
}

export function interpolate(text: string, env: HostEnv): string {
  let out = '';
  let i = 0;
  while (i < text.length) {
    const dollar = text.indexOf('$', i);
    if (dollar === -1 || dollar === text.length - 1) {
      out += text.slice(i);
      break;
    }
    out += text.slice(i, dollar);
    const next = text[dollar + 1];
    if (next === '$') {
      out += '$';
      i = dollar + 2;
    } else if (next === '{') {
      const close = matchingBrace(text, dollar + 2);
      if (close === -1) {
        throw new InterpolationError(`unterminated "\${" in "${text}"`, 'close it with "}", or write "$$" for a literal "$"');
      }
      out += expand(text.slice(dollar + 2, close), env);
      i = close + 1;
    } else {
      out += '$';
      i = dollar + 1;
    }
  }
  return out;
}

/** Index of the `}` closing an expression that starts at `from`, counting nested `${`. */
function matchingBrace(text: string, from: number): number {
  let depth = 0;
  for (let i = from; i < text.length; i++) {
    const c = text[i];
    if (c === '$' && text[i + 1] === '$') i++;
    else if (c === '$' && text[i + 1] === '{') {
      depth++;
      i++;
    } else if (c === '}') {
      if (depth === 0) return i;
      depth--;
    }
  }
  return -1;
}

function expand(expression: string, env: HostEnv): string {
  const nameEnd = expression.search(/[^A-Za-z0-9_]/);
  const name = nameEnd === -1 ? expression : expression.slice(0, nameEnd);
  const rest = nameEnd === -1 ? '' : expression.slice(nameEnd);
  if (!NAME.test(name)) {
    throw new InterpolationError(
      `"\${${expression}}" does not start with a variable name`,
      'names are letters, digits and "_", not starting with a digit; write "$$" for a literal "$"',
    );
  }
  const value = env[name];
  if (rest === '') {
    if (value === undefined) {
      throw new InterpolationError(`variable ${name} is not set`, `set ${name} in the environment, or give a default: \${${name}:-default}`);
    }
    return value;
  }
  const operator = OPERATOR.exec(rest)?.[1];
  if (operator === undefined) {
    throw new InterpolationError(`unsupported operator in "\${${expression}}"`, 'use ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message} or ${VAR?message}');
  }
  const word = rest.slice(operator.length);
  // The colon forms treat an empty value like an unset one, as in bash.
  const missing = operator.startsWith(':') ? value === undefined || value === '' : value === undefined;
  if (!missing) return value!;
  if (operator.endsWith('-')) return interpolate(word, env);
  const message = interpolate(word, env);
  throw new InterpolationError(
    message === '' ? `variable ${name} is ${value === undefined ? 'not set' : 'empty'}` : `${name}: ${message}`,
    `set ${name} in the environment before running envy`,
  );
}
