/** `envy init`: write a starter env.yaml from templates/, never over an existing one. */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { EnvyError } from '../errors.js';
import { packageRoot } from '../package-root.js';
import { writeFileAtomic } from '../state/atomic.js';

interface InitArgs {
  template: string;
  name?: string;
  list: boolean;
  force: boolean;
  file?: string;
  quiet: boolean;
}

function templateNames(dir: string): string[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.yaml'))
    .map((f) => f.slice(0, -'.yaml'.length))
    .sort();
}

/** An env name must be a DNS-label-like word; derive one from the directory name. */
export function envNameFrom(dirName: string): string {
  const name = dirName
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 63);
  return /^[a-z0-9]/.test(name) ? name : `env-${name || 'project'}`.replace(/-+$/, '');
}

export async function run(args: InitArgs): Promise<number> {
  const dir = join(packageRoot(), 'templates');
  const names = templateNames(dir);
  if (args.list) {
    for (const name of names) {
      const firstLine = readFileSync(join(dir, `${name}.yaml`), 'utf8').split('\n')[0] ?? '';
      process.stdout.write(`${name.padEnd(10)} ${firstLine.replace(/^#\s*/, '')}\n`);
    }
    return 0;
  }
  if (!names.includes(args.template)) {
    throw new EnvyError('TEMPLATE', `no template named "${args.template}"`, { hint: `templates: ${names.join(', ')}` });
  }
  const target = resolve(args.file ?? 'env.yaml');
  if (existsSync(target) && !args.force) {
    throw new EnvyError('USAGE', `${target} already exists; envy init never overwrites it`, {
      hint: 'edit it, remove it, or pass --force to replace it',
    });
  }
  const name = args.name ?? envNameFrom(basename(resolve(target, '..')));
  if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(name)) {
    throw new EnvyError('USAGE', `"${name}" is not a valid environment name`, {
      hint: 'use lowercase letters, digits and dashes, starting and ending with a letter or digit',
    });
  }
  const text = readFileSync(join(dir, `${args.template}.yaml`), 'utf8').replace(/^name: .*$/m, `name: ${name}`);
  writeFileAtomic(target, text);
  if (!args.quiet) process.stdout.write(`wrote ${target} (template ${args.template}, name ${name})\nnext: envy up\n`);
  return 0;
}
