/**
 * `envy logs [SERVICE | --hooks | --vm] [-f] [-n N]`: the services' (or hooks', or the VM's serial console) output, from the size-rotated files the
 * supervisor writes. Without SERVICE, the combined log (every line prefixed with its service, in
 * arrival order). -f keeps following, across rotation, until Ctrl-C.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { LogFollower, logGenerations } from '../env/service-log.js';
import { hooksLogPath, serviceLogPath, servicesPaths } from '../env/services.js';
import { EnvyError } from '../errors.js';
import { environmentId, environmentPaths, readRecord } from '../state/environments.js';
import { loadProject } from './project.js';

export async function run(args: { file?: string; service?: string; follow: boolean; tail?: number; hooks?: boolean; vm?: boolean }): Promise<number> {
  const project = await loadProject(args.file);
  const id = environmentId(project.source.dir, project.spec.name);
  if ([args.hooks, args.vm, args.service !== undefined].filter(Boolean).length > 1) throw new EnvyError('USAGE', 'envy logs: name one of a service, --hooks or --vm');
  if (args.vm && project.spec.backend.type !== 'vm') {
    throw new EnvyError('USAGE', `${project.source.file}: ${project.spec.name} runs on the namespace backend, which has no VM console`, { hint: 'backend: vm in env.yaml runs it in a VM' });
  }
  if (args.service !== undefined && !project.spec.services.some((s) => s.name === args.service)) {
    const names = project.spec.services.map((s) => s.name);
    throw new EnvyError('USAGE', `${project.source.file}: there is no service "${args.service}"`, {
      hint: names.length > 0 ? `services: ${names.join(', ')}` : 'env.yaml defines no services',
    });
  }
  if (!readRecord(id)) {
    throw new EnvyError('USAGE', `${project.spec.name} has not been brought up yet, so there are no logs`, { hint: 'envy up starts it' });
  }
  const path = args.vm ? join(environmentPaths(id).logs, 'vm-console.log') : args.hooks ? hooksLogPath(id) : args.service !== undefined ? serviceLogPath(id, args.service) : servicesPaths(id).combined;
  // The rotated files, then the live one through the follower, so nothing written meanwhile is lost or doubled.
  const rotated = logGenerations(path).filter((file) => file !== path);
  const follower = new LogFollower(path, false);
  let text: Buffer = Buffer.concat([...rotated.map((file) => readFileSync(file)), follower.read()]);
  if (args.tail !== undefined) text = lastLines(text, args.tail);
  process.stdout.write(text);
  if (!args.follow) {
    follower.close();
    return 0;
  }
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      const data = follower.read();
      if (data.length > 0) process.stdout.write(data);
    }, 200);
    const stop = (): void => {
      clearInterval(timer);
      follower.close();
      resolve();
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    // `envy logs -f | head` ends when the reader goes away.
    process.stdout.on('error', stop);
  });
  return 0;
}

function lastLines(text: Buffer, count: number): Buffer {
  if (count <= 0) return Buffer.alloc(0);
  let end = text.length;
  if (end > 0 && text[end - 1] === 10) end--;
  let seen = 0;
  for (let i = end - 1; i >= 0; i--) {
    if (text[i] === 10 && ++seen === count) return text.subarray(i + 1);
  }
  return text;
}
