/** `envy sync [--flush]`: the state of a watch-synced workspace; --flush waits until it is all applied (for scripts). */
import { describeSync, flushWorkspaceSync, runWorkspaceSync, syncReport, usesWorkspaceSync } from '../env/workspace-sync.js';
import { EnvyError } from '../errors.js';
import { environmentId, readRecord } from '../state/environments.js';
import { loadProject } from './project.js';

export async function run(args: { file?: string; flush: boolean; timeout?: number; json: boolean; quiet: boolean }): Promise<number> {
  const project = await loadProject(args.file);
  const id = environmentId(project.source.dir, project.spec.name);
  const record = readRecord(id);
  if (!usesWorkspaceSync(project.spec) || !record?.sync) {
    const why = !usesWorkspaceSync(project.spec)
      ? project.spec.workspace.sync === '9p'
        ? 'its workspace is shared live with the VM (workspace.sync: 9p), so there is nothing to sync'
        : 'its workspace is bind-mounted (workspace.sync: bind), so there is nothing to sync'
      : 'its synced workspace has not been brought up yet (run envy up)';
    throw new EnvyError('USAGE', `${project.spec.name}: ${why}`);
  }
  const report = args.flush ? await flushWorkspaceSync(id, args.timeout === undefined ? {} : { timeoutMs: args.timeout * 1000 }) : syncReport(id);
  if (args.json) {
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  } else if (!args.quiet) {
    const lines = [`${project.spec.name}: ${describeSync(report)} (${record.sync.direction}, ${record.sync.source}${record.sync.guest ? ` -> VM ${record.sync.guest}` : ''})`];
    for (const conflict of report.conflicts ?? []) lines.push(`  conflict: ${conflict.path} (the environment's version: ${conflict.conflictPath})`);
    process.stdout.write(`${lines.join('\n')}\n`);
  }
  return report.running ? 0 : 1;
}

export function runDaemon(args: { id: string }): Promise<number> {
  return runWorkspaceSync(args.id);
}
