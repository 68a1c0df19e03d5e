declare const ENVY_VERSION: string;
process.stdout.write(`${typeof ENVY_VERSION === 'string' ? ENVY_VERSION : 'dev'}\n`);
