/**
 * A production-shaped ChatCluster spec for the operator's builder tests: every component with
 * replicas, Kafka and Cassandra as a real cluster would name them, no optional feature turned on.
 */
import type { ChatClusterSpec } from "../../operator/api/v1alpha1.js";

const component = { replicas: 2 };
export const exampleSpec: ChatClusterSpec = {
  image: "ghcr.io/switchboard-chat/switchboard",
  version: "0.1.0",
  imagePullPolicy: "IfNotPresent",
  gateway: {
    ...component,
    autoscaling: {
      enabled: false,
      minReplicas: 2,
      maxReplicas: 10,
      targetConnectionsPerPod: 10_000,
      stabilizationWindowSeconds: 300,
      drainTimeoutSeconds: 120,
    },
    service: { type: "ClusterIP" },
  },
  router: component,
  presence: { replicas: 2, heartbeatIntervalSeconds: 5, offlineAfterSeconds: 30 },
  push: { replicas: 1 },
  id: { replicas: 1 },
  sequencer: component,
  kafka: {
    bootstrapServers: ["kafka:9092"],
    topicPrefix: "chat.",
    topics: { partitions: 12, replicationFactor: 3, retentionHours: 72 },
  },
  cassandra: {
    contactPoints: ["cassandra:9042"],
    datacenter: "dc1",
    keyspace: "chat",
    replication: { class: "NetworkTopologyStrategy", factor: 3 },
    consistency: "LOCAL_QUORUM",
  },
  auth: { jwksUrl: "https://auth.example.com/jwks.json" },
  observability: { metrics: { enabled: true } },
};
