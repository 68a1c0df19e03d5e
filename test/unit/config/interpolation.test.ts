import { describe, expect, it } from 'vitest';
import { interpolate, InterpolationError } from '../../../src/config/interpolate.js';
import { loadError, loadText, MINIMAL } from './helpers.js';

const env = { HOME: '/home/me', EMPTY: '', PORT: '8080', NESTED: 'inner' };

describe('${VAR} interpolation', () => {
  it.each([
    ['plain text', 'plain text'],
    ['${HOME}/x', '/home/me/x'],
    ['${HOME:-/fallback}', '/home/me'],
    ['${UNSET:-/fallback}', '/fallback'],
    ['${EMPTY:-fallback}', 'fallback'],
    ['${EMPTY-fallback}', ''],
    ['${UNSET-fallback}', 'fallback'],
    ['${UNSET:-}', ''],
    ['${UNSET:-${NESTED}}', 'inner'],
    ['${UNSET:-a ${UNSET2:-b} c}', 'a b c'],
    ['$$', '$'],
    ['$${HOME}', '${HOME}'],
    ['$$$$', '$$'],
    ['echo $HOME $1 $', 'echo $HOME $1 $'],
    ['cost: 5$', 'cost: 5$'],
    ['${HOME:?must be set}', '/home/me'],
    ['${EMPTY?only unset fails}', ''],
  ])('%s -> %s', (input, expected) => {
    expect(interpolate(input, env)).toBe(expected);
  });

  it.each([
    ['${UNSET}', 'variable UNSET is not set'],
    ['${UNSET:?give me a value}', 'UNSET: give me a value'],
    ['${EMPTY:?is required}', 'EMPTY: is required'],
    ['${UNSET?}', 'variable UNSET is not set'],
    ['${EMPTY:?}', 'variable EMPTY is empty'],
    ['${HOME', 'unterminated "${"'],
    ['${}', 'does not start with a variable name'],
    ['${1X}', 'does not start with a variable name'],
    ['${HOME:+alt}', 'unsupported operator'],
  ])('%s fails with "%s"', (input, message) => {
    expect(() => interpolate(input, env)).toThrow(InterpolationError);
    expect(() => interpolate(input, env)).toThrow(message);
  });

  it('applies to values in the file, turning unquoted numbers into numbers', async () => {
    const { spec } = await loadText(MINIMAL + 'ports:\n  - ${PORT}\n  - "1${PORT}:80"\nresources:\n  cpus: ${CPUS:-2}\nenv:\n  HOST_HOME: ${HOME}\n  QUOTED: "${PORT}"\n  LITERAL: $${HOME}\n', { env });
    expect(spec.ports).toEqual([
      { container: 8080, host: 8080, protocol: 'tcp' },
      { container: 80, host: 18080, protocol: 'tcp' },
    ]);
    expect(spec.resources.cpus).toBe(2);
    expect(spec.env).toEqual({ HOST_HOME: '/home/me', QUOTED: '8080', LITERAL: '${HOME}' });
  });

  it('needs quotes inside flow collections, where braces are YAML syntax', async () => {
    const error = await loadError(MINIMAL + 'ports: [${PORT}]\n', { env });
    expect(error.message).toContain('env.yaml:3:10: YAML syntax error');
    const { spec } = await loadText(MINIMAL + 'ports: ["${PORT}"]\n', { env });
    expect(spec.ports).toEqual([{ container: 8080, host: 8080, protocol: 'tcp' }]);
  });

  it('keeps a quoted number a string, so the schema can say so', async () => {
    const error = await loadError(MINIMAL + 'resources: {cpus: "${CPUS:-2}"}\n', { env });
    expect(error.message).toBe('env.yaml:3:19: resources.cpus: expected a number, got "2"');
  });

  it('never interpolates keys', async () => {
    const error = await loadError(MINIMAL + 'env:\n  ${HOME}: x\n', { env });
    expect(error.message).toContain('env.yaml:4:3: env["${HOME}"]: invalid name');
  });

  it('reports the line of an undefined variable deep in the file', async () => {
    const error = await loadError(MINIMAL + 'services:\n  web:\n    run: serve --token ${TOKEN}\n', { env });
    expect(error.message).toBe('env.yaml:5:10: services.web.run: variable TOKEN is not set');
    expect(error.hint).toContain('${TOKEN:-default}');
  });

  it('uses process.env when no environment is given', async () => {
    process.env.ENVY_TEST_INTERPOLATION = 'from-process';
    try {
      const { spec } = await loadText(MINIMAL + 'env: {A: "${ENVY_TEST_INTERPOLATION}"}\n', { env: undefined });
      expect(spec.env.A).toBe('from-process');
    } finally {
      delete process.env.ENVY_TEST_INTERPOLATION;
    }
  });
});
