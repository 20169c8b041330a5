import { defineConfig } from "vitest/config";

/** End-to-end tests that run unchanged on both backends (the server process is the only difference). */
const backendAgnostic = [
  "test/integration/messaging.test.ts",
  "test/integration/limits.test.ts",
  "test/integration/presence.test.ts",
  "test/integration/crash.test.ts",
  "test/integration/sdk.test.ts",
  "test/integration/grpc.test.ts",
  "test/integration/server-api.test.ts",
  "test/integration/metrics.test.ts",
  "test/integration/tracing.test.ts",
  "test/integration/large-groups.test.ts",
  "test/integration/fuzz.test.ts",
];

export default defineConfig({
  test: {
    testTimeout: 30_000,
    hookTimeout: 300_000,
    // Integration tests start real processes; two workers match the two cores.
    maxWorkers: 2,
    projects: [
      {
        extends: true,
        test: {
          name: "embedded",
          include: ["**/*.test.ts"],
          // Needs Kafka and Cassandra whatever the backend: runs in the distributed project only.
          exclude: [
            "**/node_modules/**",
            "dist/**",
            "test/infra/kube/**",
            "test/kube/**",
            "operator/**",
            "sdk/dist/**",
            "test/faults/**",
            "test/e2e/**/*.e2e.test.ts",
            "test/cluster/**",
            "test/integration/distributed-storage.test.ts",
            "test/integration/gateway-restart.test.ts",
            "test/integration/multiprocess.test.ts",
            "test/integration/presence-multiprocess.test.ts",
            "test/integration/push-queue.test.ts",
            "test/integration/kafka-producer.test.ts",
            "test/contract/distributed.test.ts",
            "bench/node-counts.test.ts",
            "test/monitoring/**",
            "test/browser/**",
          ],
        },
      },
      {
        extends: true,
        test: {
          name: "distributed",
          include: [
            ...backendAgnostic,
            "test/integration/distributed-storage.test.ts",
            "test/integration/gateway-restart.test.ts",
            "test/integration/multiprocess.test.ts",
            "test/integration/presence-multiprocess.test.ts",
            "test/integration/push-queue.test.ts",
            "test/integration/kafka-producer.test.ts",
            "test/contract/distributed.test.ts",
            "bench/node-counts.test.ts",
            // Needs Kafka and Cassandra for its dashboard check; runs once, here.
            "test/monitoring/monitoring.test.ts",
          ],
          env: { SWITCHBOARD_TEST_BACKEND: "distributed" },
          testTimeout: 60_000,
        },
      },
      {
        // The operator (its unit tests too) and what runs against a real kube-apiserver
        // (test/infra/up.sh kube helm): the CRD, the chart, the controller.
        extends: true,
        test: {
          name: "kube",
          include: ["test/kube/**/*.test.ts", "operator/**/*.test.ts"],
          globalSetup: ["test/kube/global-setup.ts"],
          testTimeout: 120_000,
        },
      },
      {
        // The web client in Debian's Chromium (playwright-core) against a real server; Chromium is
        // installed by test/infra/up.sh chromium (global setup). Runs in a pass of its own after the
        // parallel projects: a browser per file is heavy on 2 cores.
        extends: true,
        test: {
          name: "browser",
          include: ["test/browser/**/*.test.ts"],
          globalSetup: ["test/browser/global-setup.ts"],
          testTimeout: 90_000,
          // expect.poll is how these tests wait for the page (never sleeps): give a loaded 2-core
          // machine room before a condition counts as not met.
          expect: { poll: { timeout: 10_000, interval: 50 } },
        },
      },
      {
        // The platform as separate role processes (test/infra/cluster) on the shared Kafka and
        // Cassandra: eight server processes of its own, so it runs alone, after the parallel projects.
        extends: true,
        test: {
          name: "cluster",
          include: ["test/cluster/**/*.test.ts"],
          testTimeout: 240_000,
          fileParallelism: false,
        },
      },
      {
        // Switchboard under the operator on the test Kubernetes, its Pods run by the node agent
        // (ADR 0006): the heaviest test, alone, after the others.
        extends: true,
        test: {
          name: "e2e",
          include: ["test/e2e/**/*.e2e.test.ts"],
          testTimeout: 1_200_000,
          fileParallelism: false,
        },
      },
      {
        // Kill, pause and restart the shared Kafka/Cassandra servers: run alone, after the others
        // (npm test runs this project in a second pass), one file at a time.
        extends: true,
        test: {
          name: "faults",
          include: ["test/faults/**/*.test.ts"],
          env: { SWITCHBOARD_TEST_BACKEND: "distributed" },
          testTimeout: 300_000,
          fileParallelism: false,
        },
      },
    ],
  },
});
