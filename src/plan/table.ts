/** How `envy plan` shows a plan: a table for people, and `--json` for scripts. */
import type { BuildPlan, Step } from './types.js';

/** Bumped whenever a field of the JSON below changes meaning or goes away (adding fields keeps it). */
export const PLAN_JSON_VERSION = 1;

/** Steps show their key's first 12 hex digits, as git shows commits: unique enough to read and compare. */
export const SHORT_KEY_LENGTH = 12;

export function renderPlanTable(plan: BuildPlan): string {
  const rows = plan.steps.map((step, index) => [String(index + 1), step.kind, step.key.slice(0, SHORT_KEY_LENGTH), oneLine(step.label)]);
  const header = ['#', 'kind', 'key', 'step'];
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => row[column]!.length)));
  const format = (row: string[]) =>
    row
      .map((cell, column) => (column === 0 ? cell.padStart(widths[0]!) : column === row.length - 1 ? cell : cell.padEnd(widths[column]!)))
      .join('  ');
  const lines = [format(header), ...rows.map(format)];
  lines.push('', `${plan.name}: ${plan.steps.length} steps, image key ${plan.key.slice(0, SHORT_KEY_LENGTH)}`);
  return `${lines.join('\n')}\n`;
}

function oneLine(text: string): string {
  return text.replace(/[\r\n]+/g, ' ');
}

/**
 * `envy plan --json`:
 * ```
 * { "version": 1, "name": "demo", "key": "<64 hex>", "workdir": "/workspace", "env": {"A": "1"},
 *   "steps": [ { "index": 1, "kind": "base", "key": "<64 hex>", "parent": null, "label": "debian bookworm",
 *                "details": { ...the step's own inputs, by kind... } }, ... ] }
 * ```
 * `details` per kind: base {source, arch, digest?, ociFormat?}; packages {manager, packages, pinned};
 * files {copies: [{src, dest, mode?, digest}]}; env {env}; user {name, uid, gid, home, shell};
 * run {name?, run, shell, user, workdir, projectPath, inputs: [{path, digest}]}.
 */
export interface PlanJson {
  version: typeof PLAN_JSON_VERSION;
  name: string;
  key: string;
  workdir: string;
  env: Record<string, string>;
  steps: PlanJsonStep[];
}

export interface PlanJsonStep {
  index: number;
  kind: Step['kind'];
  key: string;
  parent: string | null;
  label: string;
  details: Record<string, unknown>;
}

export function planToJson(plan: BuildPlan): PlanJson {
  return {
    version: PLAN_JSON_VERSION,
    name: plan.name,
    key: plan.key,
    workdir: plan.workdir,
    env: { ...plan.env },
    steps: plan.steps.map((step, index) => ({
      index: index + 1,
      kind: step.kind,
      key: step.key,
      parent: step.parent ?? null,
      label: step.label,
      details: details(step),
    })),
  };
}

function details(step: Step): Record<string, unknown> {
  switch (step.kind) {
    case 'base':
      return { source: { ...step.source }, arch: step.arch, digest: step.digest, ociFormat: step.ociFormat };
    case 'kernel':
      return { arch: step.arch, package: step.package, pinned: step.pinned ? { ...step.pinned } : undefined, file: step.file ? { ...step.file } : undefined };
    case 'packages':
      return { manager: step.manager, packages: [...step.packages], pinned: { ...step.pinned } };
    case 'files':
      return { copies: step.copies.map((copy) => ({ src: copy.src, dest: copy.dest, mode: copy.mode, digest: copy.digest })) };
    case 'env':
      return { env: { ...step.env } };
    case 'user':
      return { name: step.name, uid: step.uid, gid: step.gid, home: step.home, shell: step.shell };
    case 'run':
      return {
        name: step.name,
        run: step.run,
        shell: [...step.shell],
        user: step.user,
        workdir: step.workdir,
        projectPath: step.projectPath,
        inputs: step.inputs.map((input) => ({ path: input.path, digest: input.digest })),
      };
  }
}
