/**
 * Unpack one layer in a child process: `node unpack-worker.js DEST LABEL
 * [--expect DIFFID]` reads the layer (tar, gzip or zstd) on stdin and prints
 * the ExtractResult as one JSON line. Run under `envy-ns userns -- ...` it is
 * root in a user namespace with the full subuid map, so the tar's owners and
 * setuid bits are applied; run directly, ownership stays the invoking user's
 * and the intended owners are recorded. Failures print `{"error": ...}` and
 * exit 1, so the parent can re-raise them as the same EnvyError.
 */
import { EnvyError } from '../errors.js';
import { run } from '../exec.js';
import { extractLayer, type ExtractOptions, type ExtractResult, type LayerSource } from './extract.js';
import type { Unpacker } from './store.js';

interface WorkerFailure {
  error: { message: string; hint?: string; details?: string[] };
}

export async function unpackWorkerMain(argv: string[], stdin: NodeJS.ReadableStream, write: (line: string) => void): Promise<number> {
  const [dest, label, ...rest] = argv;
  const expectIndex = rest.indexOf('--expect');
  const expectedDiffId = expectIndex === -1 ? undefined : rest[expectIndex + 1];
  if (!dest || !label) {
    write(JSON.stringify({ error: { message: 'usage: unpack-worker DEST LABEL [--expect DIFFID]' } } satisfies WorkerFailure));
    return 2;
  }
  try {
    const { Readable } = await import('node:stream');
    const result = await extractLayer(Readable.from(stdin as AsyncIterable<Buffer>), dest, {
      label,
      ...(expectedDiffId ? { expectedDiffId } : {}),
      chown: process.geteuid?.() === 0,
    });
    write(JSON.stringify(result));
    return 0;
  } catch (error) {
    const failure: WorkerFailure =
      error instanceof EnvyError
        ? { error: { message: error.message, ...(error.hint ? { hint: error.hint } : {}), details: error.details } }
        : { error: { message: error instanceof Error ? error.message : String(error) } };
    write(JSON.stringify(failure));
    return 1;
  }
}

/**
 * An Unpacker that runs the worker as `command` (e.g. [envy-ns, userns, --,
 * node, unpack-worker.js]) with the blob file on its stdin.
 */
export function workerUnpacker(command: string[]): Unpacker {
  return async (source: LayerSource, dest: string, options: ExtractOptions): Promise<ExtractResult> => {
    if (typeof source !== 'string') throw new EnvyError('INTERNAL', 'the unpack worker reads layers from files');
    const [file, ...args] = command;
    const result = await run(file!, [...args, dest, options.label, ...(options.expectedDiffId ? ['--expect', options.expectedDiffId] : [])], {
      inputFile: source,
      reject: false,
      errorCode: 'IMAGE',
    });
    const line = String(result.stdout).trim().split('\n').at(-1) ?? '';
    let parsed: ExtractResult | WorkerFailure;
    try {
      parsed = JSON.parse(line) as ExtractResult | WorkerFailure;
    } catch {
      throw new EnvyError('IMAGE', `the unpack worker for layer ${options.label} failed (exit ${result.exitCode ?? '?'})`, {
        details: String(result.stderr).trim().split('\n').slice(-20),
      });
    }
    if ('error' in parsed) throw new EnvyError('IMAGE', parsed.error.message, { hint: parsed.error.hint, details: parsed.error.details });
    return parsed;
  };
}

// Run as a program (the bundled dist/unpack-worker.js), not when imported.
if (process.argv[1] && /unpack-worker\.(?:js|mjs|ts)$/.test(process.argv[1])) {
  void unpackWorkerMain(process.argv.slice(2), process.stdin, (line) => process.stdout.write(`${line}\n`)).then((code) => {
    process.exitCode = code;
  });
}
