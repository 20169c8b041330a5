import type { V1ConfigMap, V1Deployment, V1PodTemplateSpec, V1StatefulSet } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../../internal/lib/config.js";
import type { ChatCluster, ChatClusterSpec } from "../api/v1alpha1.js";
import { desiredObjects } from "./desired.js";

const component = { replicas: 2 };
const spec: ChatClusterSpec = {
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
    service: { type: "LoadBalancer", annotations: { "example.com/lb": "internal" } },
  },
  router: component,
  presence: { replicas: 1, heartbeatIntervalSeconds: 5, offlineAfterSeconds: 30 },
  push: { replicas: 1, webhook: { url: "https://push.example.com/hook" } },
  id: { replicas: 3 },
  kafka: {
    bootstrapServers: ["kafka-0.kafka:9092", "kafka-1.kafka:9092"],
    topicPrefix: "chat.",
    topics: { partitions: 24, replicationFactor: 3, retentionHours: 72 },
  },
  cassandra: {
    contactPoints: ["cassandra:9042"],
    datacenter: "dc1",
    keyspace: "chat",
    replication: { class: "NetworkTopologyStrategy", factor: 3 },
    consistency: "LOCAL_QUORUM",
  },
  auth: { jwksUrl: "https://auth.example.com/jwks.json", issuer: "https://auth.example.com" },
  observability: { metrics: { enabled: true } },
};
const cluster: ChatCluster = {
  apiVersion: "switchboard.dev/v1alpha1",
  kind: "ChatCluster",
  metadata: { name: "chat", namespace: "prod", uid: "uid-1", generation: 1 },
  spec,
};

const find = <T>(objects: ReturnType<typeof desiredObjects>, kind: string, name: string) =>
  objects.find((o) => o.kind === kind && o.metadata?.name === name) as T | undefined;

describe("desiredObjects", () => {
  const objects = desiredObjects(cluster, 5);

  it("owns everything through one controller reference, in the cluster's namespace", () => {
    expect(objects.length).toBeGreaterThan(10);
    for (const o of objects) {
      expect(o.metadata?.namespace).toBe("prod");
      expect(o.metadata?.ownerReferences).toEqual([
        {
          apiVersion: "switchboard.dev/v1alpha1",
          kind: "ChatCluster",
          name: "chat",
          uid: "uid-1",
          controller: true,
          blockOwnerDeletion: true,
        },
      ]);
      expect(o.metadata?.labels?.["app.kubernetes.io/managed-by"]).toBe("switchboard-operator");
    }
  });

  it("gives the gateway the autoscaler's replicas and the others their spec's", () => {
    expect(find<V1Deployment>(objects, "Deployment", "chat-gateway")?.spec?.replicas).toBe(5);
    expect(find<V1Deployment>(objects, "Deployment", "chat-router")?.spec?.replicas).toBe(2);
    expect(find<V1StatefulSet>(objects, "StatefulSet", "chat-id")?.spec?.replicas).toBe(3);
  });

  it("adds a disruption budget only where there are two replicas or more", () => {
    const pdbs = objects
      .filter((o) => o.kind === "PodDisruptionBudget")
      .map((o) => o.metadata?.name)
      .sort();
    expect(pdbs).toEqual(["chat-gateway", "chat-id", "chat-router"]);
  });

  it("runs every Pod under the restricted Pod Security Standard", () => {
    const templates = objects
      .filter((o) => o.kind === "Deployment" || o.kind === "StatefulSet")
      .map((o) => (o as V1Deployment).spec?.template as V1PodTemplateSpec);
    expect(templates).toHaveLength(5);
    for (const t of templates) {
      expect(t.spec?.securityContext).toMatchObject({
        runAsNonRoot: true,
        seccompProfile: { type: "RuntimeDefault" },
      });
      expect(t.spec?.automountServiceAccountToken).toBe(false);
      for (const c of t.spec?.containers ?? [])
        expect(c.securityContext).toEqual({
          runAsNonRoot: true,
          allowPrivilegeEscalation: false,
          readOnlyRootFilesystem: true,
          capabilities: { drop: ["ALL"] },
          seccompProfile: { type: "RuntimeDefault" },
        });
    }
  });

  it("writes a ConfigMap the services' own configuration loader reads back as the spec", () => {
    const cm = find<V1ConfigMap>(objects, "ConfigMap", "chat-config");
    const config = loadConfig(cm?.data ?? {});
    expect(config.backend).toBe("distributed");
    expect(config.kafka.brokers).toEqual(["kafka-0.kafka:9092", "kafka-1.kafka:9092"]);
    expect(config.kafka).toMatchObject({
      topicPrefix: "chat.",
      partitions: 24,
      replicationFactor: 3,
      retentionHours: 72,
    });
    expect(config.cassandra).toMatchObject({
      contactPoints: ["cassandra:9042"],
      datacenter: "dc1",
      keyspace: "chat",
    });
    expect(config.auth).toMatchObject({
      jwksUrl: "https://auth.example.com/jwks.json",
      issuer: "https://auth.example.com",
      devTokens: false,
    });
    expect(config.presence).toEqual({ heartbeatIntervalMs: 5000, offlineAfterMs: 30_000 });
    expect(config.push.webhookUrl).toBe("https://push.example.com/hook");
    expect(config.http).toMatchObject({ host: "0.0.0.0", port: 8080 });
    expect(config.grpc.port).toBe(9090);
    // Gateways replaced by a rolling update drain like a scale-down: min(10 s, drain timeout / 2).
    expect(config.gateway.shutdownDrainMs).toBe(10_000);
  });

  it("rolls the Pods when the configuration changes, and only then", () => {
    const hash = (objs: ReturnType<typeof desiredObjects>) =>
      find<V1Deployment>(objs, "Deployment", "chat-router")?.spec?.template.metadata?.annotations?.[
        "switchboard.dev/config-hash"
      ];
    const same = desiredObjects(cluster, 2);
    const changed = desiredObjects(
      { ...cluster, spec: { ...spec, presence: { ...spec.presence, offlineAfterSeconds: 60 } } },
      5,
    );
    expect(hash(same)).toBe(hash(objects));
    expect(hash(changed)).not.toBe(hash(objects));
  });

  it("gives gateways their Pod name as routing id and id Pods their ordinal as worker id", () => {
    const gw = find<V1Deployment>(objects, "Deployment", "chat-gateway")?.spec?.template.spec?.containers[0];
    expect(gw?.env).toContainEqual({
      name: "SWITCHBOARD_GATEWAY_ID",
      valueFrom: { fieldRef: { fieldPath: "metadata.name" } },
    });
    expect(
      find<V1Deployment>(objects, "Deployment", "chat-gateway")?.spec?.template.spec
        ?.terminationGracePeriodSeconds,
    ).toBe(150);
    const id = find<V1StatefulSet>(objects, "StatefulSet", "chat-id")?.spec?.template.spec?.containers[0];
    expect(id?.env).toContainEqual({
      name: "SWITCHBOARD_ID_WORKER_ID",
      valueFrom: { fieldRef: { fieldPath: "metadata.labels['apps.kubernetes.io/pod-index']" } },
    });
  });
});
