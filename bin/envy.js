#!/usr/bin/env node
// CommonJS on purpose (bin/package.json): the two paths that must start fastest, `--version` and
// `envy exec -- CMD` into a running environment, run without initialising the ES module loader.
// Everything else imports the ESM bundle (dist/main.js).
'use strict';

const argv = process.argv.slice(2);

function full() {
  return import('../dist/main.js');
}

if (argv.length === 1 && (argv[0] === '--version' || argv[0] === '-V')) {
  process.stdout.write(`${require('../package.json').version}\n`);
} else if (argv[0] === 'exec') {
  require('../dist/exec-fast.cjs')
    .runFastExec(argv)
    .then((code) => (code === undefined ? full() : (process.exitCode = code)));
} else {
  full();
}
