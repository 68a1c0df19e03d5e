// Start-up cost of the CLI (issue 2): `envy --version` and `envy plan` on env.example.yaml, next to
// `node -e 0` (the floor for any Node CLI), median of the runs.
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { printTable, timeCommands } from '../lib.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
// NODE_EXTRA_CA_CERTS (set in some shells, e.g. CI images) makes every Node start parse a CA bundle
// (~80 ms here): it would hide the differences this bench exists to show.
const node = `env -u NODE_EXTRA_CA_CERTS ${process.execPath}`;
const envy = `${node} ${join(root, 'bin/envy.js')}`;
const results = timeCommands(
  [
    { name: 'node -e 0', command: `${node} -e 0` },
    { name: 'envy --version', command: `${envy} --version` },
    { name: 'envy --help', command: `${envy} --help` },
    { name: 'envy plan', command: `${envy} plan -f ${join(root, 'env.example.yaml')}` },
    { name: 'envy plan --dockerfile', command: `${envy} plan --dockerfile -f ${join(root, 'env.example.yaml')}` },
  ],
  { runs: 30, warmup: 5, cwd: root },
);
printTable(results, 'node -e 0');
