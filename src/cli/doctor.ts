/** `envy doctor`: what this host can and cannot do, and the exact commands that fix it. */
import { ExitCode } from '../errors.js';
import { runChecks, type CheckResult } from './doctor-checks.js';

interface DoctorArgs {
  json: boolean;
}

const mark = (c: CheckResult): string => (c.ok ? '✓' : c.severity === 'required' ? '✗' : '!');

export async function run(args: DoctorArgs): Promise<number> {
  const checks = await runChecks();
  const requiredFailed = checks.some((c) => !c.ok && c.severity === 'required');
  if (args.json) {
    process.stdout.write(`${JSON.stringify({ ok: !requiredFailed, checks }, null, 2)}\n`);
    return requiredFailed ? ExitCode.HostUnsupported : 0;
  }
  const out: string[] = [];
  if (process.getuid?.() === 0) out.push('note: running as root; envy is built to run as a normal user, and these results are for root');
  const width = Math.max(...checks.map((c) => c.title.length));
  for (const check of checks) {
    out.push(`${mark(check)} ${check.title.padEnd(width)}  ${check.detail}`);
    if (!check.ok && check.fix) out.push(`  ${' '.repeat(width)}  fix: ${check.fix}`);
  }
  const packages = [...new Set(checks.filter((c) => !c.ok && c.aptPackage).map((c) => c.aptPackage!))];
  if (packages.length > 0) out.push('', `missing host packages: sudo apt-get install -y ${packages.join(' ')}`);
  out.push('', requiredFailed ? 'envy cannot run here until the ✗ items are fixed' : 'envy can run here (! items only limit optional features)');
  process.stdout.write(`${out.join('\n')}\n`);
  return requiredFailed ? ExitCode.HostUnsupported : 0;
}
