import { defineConfig } from 'vitest/config';

// GPU tests run on software adapters (lavapipe, SwiftShader): slow but exact; one process per file.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 600_000,
    hookTimeout: 300_000,
    teardownTimeout: 10_000,
  },
});
