import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // Runs once before every project: the CLI and e2e tests exercise the built binary.
    globalSetup: ['test/build-once.ts'],
    // Stopping the worker that ran the templates suite (several GB of builds) once took over the 10 s
    // default on a loaded 2-core CI machine, which only warns; give it headroom.
    teardownTimeout: 60_000,
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
        },
      },
      {
        test: {
          name: 'e2e',
          include: ['test/e2e/**/*.test.ts'],
          globalSetup: ['test/e2e/global-setup.ts'],
          testTimeout: 120_000,
          hookTimeout: 300_000,
          // Real namespaces and servers: keep files sequential so timings and ports stay predictable.
          fileParallelism: false,
        },
      },
    ],
  },
});
