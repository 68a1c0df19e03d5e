/** `envy status`: every environment of this user, asked of the runtime (never cached, never hanging on a dead one). */
import { diskUsage } from '../image/store.js';
import { runtimeFor } from '../runtime/select.js';
import type { RuntimeStatus } from '../runtime/types.js';
import { environmentPaths, listRecords, type EnvironmentRecord } from '../state/environments.js';
import { formatBytes } from './ui/events.js';
import { describeSync, syncReport } from '../env/workspace-sync.js';

export async function run(args: { json: boolean }): Promise<number> {
  const rows: (EnvironmentRecord & { state: string; pid?: number; startedAt?: string; vm?: RuntimeStatus['vm']; diskBytes: number; syncStatus?: ReturnType<typeof syncReport> })[] = [];
  for (const record of listRecords()) {
    const runtime = await runtimeFor(record.backend ?? 'namespace');
    const status = await runtime.status({ id: record.id, hostname: record.name, rootfs: { layers: [] }, mounts: [], network: 'host', resources: {} });
    let disk = 0;
    try {
      disk = diskUsage(environmentPaths(record.id).root);
    } catch {
      // Files of subordinate owners may be unreadable; the figure is then a lower bound.
    }
    const sync = record.sync ? syncReport(record.id) : undefined;
    rows.push({ ...record, state: status.state, pid: status.pid, startedAt: status.startedAt, ...(status.vm ? { vm: status.vm } : {}), diskBytes: disk, ...(sync ? { syncStatus: sync } : {}) });
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
  const state = (r: (typeof rows)[number]): string => (r.vm ? `${r.state} (vm ${r.vm.arch} ${r.vm.kernel}, ${r.vm.accel}, pid ${r.pid})` : r.state);
  const table = [['NAME', 'STATE', 'UPTIME', 'DISK', 'SYNC', 'PROJECT'], ...rows.map((r) => [r.name, state(r), uptime(r.startedAt), formatBytes(r.diskBytes), r.syncStatus ? describeSync(r.syncStatus) : '-', r.projectDir])];
  const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  process.stdout.write(`${table.map((row) => row.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n')}\n`);
  return 0;
}
