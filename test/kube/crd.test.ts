/** The ChatCluster CRD as the real API server serves it: defaults, validation, pruning, status, columns. */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { KubeConfig } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ChatCluster, ChatClusterSpec } from "../../operator/api/v1alpha1.js";
import { KubeClient } from "../../operator/kube/client.js";
import { installCrd, kubectl, kubeTools, root, run, type Tools } from "./helpers.js";

const NS = `sb-crd-${randomBytes(3).toString("hex")}`;
let tools: Tools;
let kube: KubeClient;

const minimal = (name: string, spec: Record<string, unknown> = {}) => ({
  apiVersion: "switchboard.dev/v1alpha1",
  kind: "ChatCluster",
  metadata: { name, namespace: NS },
  spec: {
    kafka: { bootstrapServers: ["kafka:9092"] },
    cassandra: { contactPoints: ["cassandra:9042"] },
    auth: { jwksUrl: "https://auth.example.com/jwks.json" },
    ...spec,
  },
});

/** Creates the object with kubectl and returns kubectl's error text (empty on success). */
async function createError(obj: unknown): Promise<string> {
  const r = await run(tools.KUBECTL, [`--kubeconfig=${tools.KUBECONFIG}`, "create", "-f", "-"], {
    input: JSON.stringify(obj),
  });
  return r.code === 0 ? "" : r.stderr;
}

beforeAll(async () => {
  tools = await kubeTools();
  await installCrd(tools);
  const kc = new KubeConfig();
  kc.loadFromFile(tools.KUBECONFIG);
  kube = new KubeClient(kc);
  await kubectl(tools, ["create", "namespace", NS]);
});

afterAll(async () => {
  if (tools) await kubectl(tools, ["delete", "namespace", NS, "--wait=false"]).catch(() => "");
});

describe("ChatCluster CRD", () => {
  it("fills in every default", async () => {
    const created = await kube.create(minimal("defaults") as unknown as ChatCluster);
    const s = created.spec;
    expect(s.image).toBe("ghcr.io/switchboard-chat/switchboard");
    expect(s.version).toBe("0.1.0");
    expect(s.router.replicas).toBe(2);
    expect(s.id.replicas).toBe(1);
    expect(s.gateway.autoscaling).toEqual({
      enabled: false,
      minReplicas: 2,
      maxReplicas: 10,
      targetConnectionsPerPod: 10000,
      stabilizationWindowSeconds: 300,
      drainTimeoutSeconds: 120,
    });
    expect(s.presence).toMatchObject({ replicas: 2, heartbeatIntervalSeconds: 5, offlineAfterSeconds: 30 });
    expect(s.kafka).toMatchObject({
      topicPrefix: "switchboard.",
      topics: { partitions: 12, replicationFactor: 3, retentionHours: 168 },
    });
    expect(s.cassandra).toMatchObject({
      datacenter: "datacenter1",
      keyspace: "switchboard",
      consistency: "LOCAL_QUORUM",
      replication: { class: "NetworkTopologyStrategy", factor: 3 },
    });
    expect(s.observability.metrics.enabled).toBe(true);
    // A partly given object keeps its values and gets the rest.
    const partial = await kube.create(
      minimal("partial", {
        gateway: { autoscaling: { enabled: true, maxReplicas: 4 } },
      }) as unknown as ChatCluster,
    );
    expect(partial.spec.gateway.autoscaling).toMatchObject({ enabled: true, minReplicas: 2, maxReplicas: 4 });
  });

  it("keeps every field of a fully populated spec (the schema knows every field of the TypeScript API)", async () => {
    const spec: ChatClusterSpec = {
      image: "registry.example.com/sb",
      version: "9.9.9",
      imagePullPolicy: "Always",
      imagePullSecrets: [{ name: "pull" }],
      gateway: {
        replicas: 3,
        resources: { requests: { cpu: "500m", memory: "1Gi" }, limits: { memory: "2Gi" } },
        scheduling: {
          nodeSelector: { pool: "edge" },
          tolerations: [{ key: "edge", operator: "Exists", effect: "NoSchedule" }],
          affinity: { podAntiAffinity: {} },
          topologySpreadConstraints: [
            { maxSkew: 1, topologyKey: "zone", whenUnsatisfiable: "ScheduleAnyway" },
          ],
          priorityClassName: "high",
        },
        autoscaling: {
          enabled: true,
          minReplicas: 3,
          maxReplicas: 30,
          targetConnectionsPerPod: 20000,
          stabilizationWindowSeconds: 600,
          drainTimeoutSeconds: 90,
        },
        service: { type: "LoadBalancer", annotations: { "lb.example.com/internal": "true" } },
      },
      router: { replicas: 4 },
      presence: { replicas: 3, heartbeatIntervalSeconds: 10, offlineAfterSeconds: 60 },
      push: {
        replicas: 2,
        webhook: { url: "https://push.example.com/", secretRef: { name: "hook", key: "signing" } },
        fcm: { secretRef: { name: "fcm", key: "sa.json" } },
        apns: { secretRef: { name: "apns", key: "key.p8" } },
        webpush: { secretRef: { name: "vapid", key: "keys" } },
      },
      id: { replicas: 5 },
      kafka: {
        bootstrapServers: ["k0:9093", "k1:9093"],
        topicPrefix: "prod.",
        tls: { enabled: true, secretRef: { name: "kafka-tls" } },
        sasl: { mechanism: "scram-sha-512", secretRef: { name: "kafka-user" } },
        topics: { partitions: 96, replicationFactor: 3, retentionHours: 72 },
      },
      cassandra: {
        contactPoints: ["c0:9042", "c1"],
        datacenter: "eu1",
        keyspace: "chat_prod",
        replication: { class: "NetworkTopologyStrategy", factor: 5 },
        consistency: "EACH_QUORUM",
        credentialsSecretRef: { name: "cassandra-user" },
      },
      auth: { secretRef: { name: "jwt", key: "hs256" }, issuer: "https://iss", audience: "aud" },
      observability: { metrics: { enabled: false }, otlp: { endpoint: "http://otel:4317" } },
    };
    const created = await kube.create({ ...minimal("full"), spec } as unknown as ChatCluster);
    expect(created.spec).toEqual(spec);
  });

  it("rejects invalid specs with messages that say what is wrong", async () => {
    expect(
      await createError(
        minimal("bad-scale", { gateway: { autoscaling: { minReplicas: 5, maxReplicas: 3 } } }),
      ),
    ).toContain("minReplicas must not exceed maxReplicas");
    expect(
      await createError(
        minimal("bad-auth", { auth: { jwksUrl: "https://a/jwks", secretRef: { name: "s" } } }),
      ),
    ).toContain("set exactly one of auth.jwksUrl and auth.secretRef");
    const noKafka = minimal("no-kafka") as { spec: Record<string, unknown> };
    delete noKafka.spec.kafka;
    expect(await createError(noKafka)).toMatch(/spec\.kafka: Required value/);
    expect(
      await createError(minimal("bad-ks", { cassandra: { contactPoints: ["c"], keyspace: "Bad-Name" } })),
    ).toMatch(/spec\.cassandra\.keyspace: Invalid value: "Bad-Name"/);
    expect(await createError(minimal("bad-ids", { id: { replicas: 2000 } }))).toMatch(/spec\.id\.replicas/);
    expect(
      await createError(
        minimal("bad-presence", { presence: { heartbeatIntervalSeconds: 30, offlineAfterSeconds: 10 } }),
      ),
    ).toContain("offlineAfterSeconds must exceed heartbeatIntervalSeconds");
  });

  it("keeps status apart from spec (status subresource) and prints its columns", async () => {
    await kubectl(tools, ["create", "-f", "-"], JSON.stringify(minimal("columns")));
    const ref = {
      apiVersion: "switchboard.dev/v1alpha1",
      kind: "ChatCluster",
      namespace: NS,
      name: "columns",
    };
    // A status in a spec write is ignored...
    const c = await kube.mergePatch<ChatCluster>(ref, {
      spec: { router: { replicas: 3 } },
      status: { connections: 99 },
    });
    expect(c.status?.connections).toBeUndefined();
    expect(c.metadata.generation).toBe(2);
    // ...and a status write leaves the generation alone.
    const withStatus = (await kube.request(
      "PATCH",
      "/apis/switchboard.dev/v1alpha1/namespaces/" + NS + "/chatclusters/columns/status",
      {
        status: {
          connections: 1234,
          components: { gateway: { replicas: 2, readyReplicas: 2 } },
          conditions: [
            {
              type: "Ready",
              status: "True",
              reason: "AllComponentsReady",
              message: "ok",
              lastTransitionTime: "2026-01-01T00:00:00Z",
              observedGeneration: 2,
            },
          ],
        },
      },
      "application/merge-patch+json",
    )) as ChatCluster;
    expect(withStatus.metadata.generation).toBe(2);
    const table = await kubectl(tools, ["get", "chat", "columns", "-n", NS]);
    expect(table.split("\n")[0]).toMatch(/^NAME\s+READY\s+GATEWAYS\s+CONNECTIONS\s+VERSION\s+AGE/);
    expect(table.split("\n")[1]).toMatch(/^columns\s+True\s+2\s+1234\s+0\.1\.0\s+/);
  });

  it("accepts the example in k8s/examples", async () => {
    const example = readFileSync(join(root, "k8s", "examples", "chatcluster.yaml"), "utf8");
    // The example's second document is the ChatCluster; validate it (server dry run) in our namespace.
    const cluster = example.split(/^---$/m)[1]?.replace("namespace: chat", `namespace: ${NS}`) ?? "";
    expect(cluster).toContain("kind: ChatCluster");
    const dry = await run(
      tools.KUBECTL,
      [`--kubeconfig=${tools.KUBECONFIG}`, "apply", "--dry-run=server", "-f", "-"],
      { input: cluster },
    );
    expect(dry.stderr).toBe("");
    expect(dry.stdout).toContain("chatcluster.switchboard.dev/chat created (server dry run)");
  });
});
