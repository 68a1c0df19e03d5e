/** `envy plan`: compile env.yaml and show the plan as a table, a Dockerfile or JSON. */
import { compilePlan } from '../plan/compile.js';
import { renderDockerfile } from '../plan/dockerfile.js';
import { checkFrozen } from '../plan/lock.js';
import { planToJson, renderPlanTable } from '../plan/table.js';
import { loadProject } from './project.js';

interface PlanArgs {
  file?: string;
  dockerfile?: boolean;
  json?: boolean;
  frozen: boolean;
}

export async function run(args: PlanArgs): Promise<number> {
  const project = await loadProject(args.file);
  if (args.frozen) checkFrozen(project.spec, project.lock);
  const plan = compilePlan(project.spec, project.source.dir, project.lock);
  if (args.dockerfile) process.stdout.write(renderDockerfile(plan, project.spec));
  else if (args.json) process.stdout.write(`${JSON.stringify(planToJson(plan), null, 2)}\n`);
  else process.stdout.write(renderPlanTable(plan));
  return 0;
}
