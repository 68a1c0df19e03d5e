/** `envy status`: every environment of this user, asked of the runtime (never cached, never hanging on a dead one). */
import { diskUsage } from '../image/store.js';
import { join } from 'node:path';
import { runtimeFor } from '../runtime/select.js';
import type { RuntimeStatus } from '../runtime/types.js';
import { environmentPaths, listRecords } from '../state/environments.js';
import { formatBytes } from './ui/events.js';
import { describeSync, syncReport } from '../env/workspace-sync.js';
import { describeServices, servicesReport, type ServiceStatus } from '../env/services.js';
import type { EnvironmentRecord } from '../state/environments.js';
import type { WorkspaceSyncReport } from '../env/workspace-sync.js';

interface StatusRow extends EnvironmentRecord {
  state: 'running' | 'stopped';
  pid?: number;
  startedAt?: string;
  /** A VM's guest: architecture, kernel, KVM or TCG. */
  vm?: RuntimeStatus['vm'];
  diskBytes: number;
  /** The writable layer's share of diskBytes. */
  writableLayerBytes: number;
  services: ServiceStatus[];
  supervisor: 'running' | 'stopped';
  syncStatus?: WorkspaceSyncReport;
}

export async function run(args: { json: boolean }): Promise<number> {
  const rows: StatusRow[] = [];
  for (const record of listRecords()) {
    const runtime = await runtimeFor(record.backend ?? 'namespace');
    const status = await runtime.status({ id: record.id, hostname: record.name, rootfs: { layers: [] }, mounts: [], network: 'host', resources: {} });
    let disk = 0;
    let writable = 0;
    try {
      disk = diskUsage(environmentPaths(record.id).root);
      // A VM's writable state is its qcow2 overlay, not an upper dir.
      writable = diskUsage(record.backend === 'vm' ? join(environmentPaths(record.id).root, 'vm') : environmentPaths(record.id).upper);
    } catch {
      // Files of subordinate owners may be unreadable; the figure is then a lower bound.
    }
    const sync = record.sync ? syncReport(record.id) : undefined;
    // Files only (the supervisor's status and /proc): a dead environment cannot make this hang.
    const services = servicesReport(record.id, status.state === 'running');
    rows.push({
      ...record,
      state: status.state,
      pid: status.pid,
      startedAt: status.startedAt,
      ...(status.vm ? { vm: status.vm } : {}),
      diskBytes: disk,
      writableLayerBytes: writable,
      services: services.services,
      supervisor: services.supervisor,
      ...(sync ? { syncStatus: sync } : {}),
    });
  }
  if (args.json) {
    process.stdout.write(`${JSON.stringify({ environments: rows }, null, 2)}\n`);
    return 0;
  }
  if (rows.length === 0) {
    process.stdout.write('no environments yet (envy up creates one)\n');
    return 0;
  }
  const uptime = (startedAt?: string): string => {
    if (!startedAt) return '-';
    const s = Math.max(0, Math.round((Date.now() - Date.parse(startedAt)) / 1000));
    return s < 60 ? `${s}s` : s < 3600 ? `${Math.floor(s / 60)}m` : `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
  };
  // A VM's state names its guest: `running (vm x86_64 6.1.0-18-amd64, tcg, pid 123)`.
  const state = (r: StatusRow): string => (r.vm ? `${r.state} (vm ${r.vm.arch} ${r.vm.kernel}, ${r.vm.accel}, pid ${r.pid})` : r.state);
  const table = [
    ['NAME', 'STATE', 'UPTIME', 'WRITABLE', 'SYNC', 'PROJECT'],
    ...rows.map((r) => [r.name, state(r), uptime(r.startedAt), formatBytes(r.writableLayerBytes), r.syncStatus ? describeSync(r.syncStatus) : '-', r.projectDir]),
  ];
  const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  const lines: string[] = [];
  table.forEach((row, i) => {
    lines.push(row.map((cell, j) => cell.padEnd(widths[j]!)).join('  ').trimEnd());
    const services = i > 0 ? rows[i - 1]!.services : [];
    if (services.length > 0) {
      const row = rows[i - 1]!;
      const unsupervised = row.state === 'running' && row.supervisor === 'stopped' ? ' (their supervisor is not running: envy up restarts them)' : '';
      lines.push(`  services: ${describeServices(services)}${unsupervised}`);
    }
  });
  process.stdout.write(`${lines.join('\n')}\n`);
  return 0;
}
