import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["**/*.test.ts"],
    exclude: ["**/node_modules/**", "dist/**", "test/infra/kube/**"],
    testTimeout: 30_000,
    hookTimeout: 180_000,
    // Integration tests start real processes; two workers match the two cores.
    maxWorkers: 2,
    reporters: ["default"],
  },
});
