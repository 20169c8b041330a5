/**
 * The operator (`switchboard operator`, a real process) against a real kube-apiserver with
 * kube-controller-manager, kube-scheduler and kwok (Pods run on a fake Node), and against real Kafka
 * and Cassandra (provisioning and gateway-gone records). Each scenario asserts the state in the API
 * server, Kafka or Cassandra; none trusts the operator's own account.
 */
import { randomBytes } from "node:crypto";
import { createServer as createNetServer, type Socket } from "node:net";
import { fromBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import {
  KubeConfig,
  type V1ConfigMap,
  type V1Deployment,
  type V1Pod,
  type V1PodDisruptionBudget,
  type V1PodSpec,
  type V1Service,
  type V1StatefulSet,
} from "@kubernetes/client-node";
import cassandra from "cassandra-driver";
import { Kafka, logLevel } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SessionRecordKind, SessionRecordSchema } from "../../gen/switchboard/router/v1/router_pb.js";
import { SCHEMA_VERSION } from "../../internal/backends/cassandra/schema.js";
import type { ChatCluster, ComponentName } from "../../operator/api/v1alpha1.js";
import type { Certificate } from "../../operator/controller/grpc-tls.js";
import type { PodMonitor } from "../../operator/controller/monitoring.js";
import { KubeClient } from "../../operator/kube/client.js";
import { TestPki } from "../helpers/certificates.js";
import { OtlpReceiver, spanAttribute } from "../helpers/otlp-receiver.js";
import { ensureServer } from "../infra/servers.js";
import { GatewayFarm } from "./fake-gateways.js";
import {
  CHART_DIR,
  helm,
  installCrd,
  kubectl as kubectlWith,
  kubeTools,
  run,
  type Tools,
  waitFor,
} from "./helpers.js";
import { installChartOperator, type OperatorProcess, removeChartAndClusters } from "./operator-process.js";

const suffix = randomBytes(3).toString("hex");
const NS = `sb-op-${suffix}`;
/** Where the chart installs the operator's ServiceAccount, RBAC and Lease. */
const SYSTEM_NS = `sb-op-sys-${suffix}`;
const RELEASE = `sbop-${suffix}`;
const CHART = { release: RELEASE, systemNamespace: SYSTEM_NS };

let tools: Tools;
/** A kubeconfig that authenticates as the chart's ServiceAccount: the operator runs with its RBAC. */
let kube: KubeClient;
let kafkaBrokers: string[];
let cassandraPoints: string[];

const kubectl = (args: string[], input?: string) => kubectlWith(tools, args, input);
/** A user's edit of a ChatCluster's spec (a JSON merge patch: null removes a key), as `kubectl patch` does it. */
const patchSpec = (name: string, spec: Record<string, unknown>) =>
  kubectl(["patch", "chatcluster", name, "-n", NS, "--type=merge", "-p", JSON.stringify({ spec })]);

let operator: OperatorProcess;
let receiver: OtlpReceiver;

function clusterManifest(name: string, overrides: Record<string, unknown> = {}, namespace = NS): ChatCluster {
  return {
    apiVersion: "switchboard.dev/v1alpha1",
    kind: "ChatCluster",
    metadata: { name, namespace },
    spec: {
      version: "0.1.0",
      gateway: { replicas: 2 },
      router: { replicas: 2 },
      presence: { replicas: 1 },
      push: { replicas: 1 },
      id: { replicas: 2 },
      kafka: {
        bootstrapServers: kafkaBrokers,
        topicPrefix: `op-${suffix}-${name}.`,
        topics: { partitions: 2, replicationFactor: 1, retentionHours: 1 },
      },
      cassandra: {
        contactPoints: cassandraPoints,
        keyspace: `op_${suffix}_${name.replaceAll("-", "_")}`,
        replication: { class: "SimpleStrategy", factor: 1 },
      },
      auth: { jwksUrl: "https://auth.example.com/.well-known/jwks.json" },
      ...overrides,
    },
  } as unknown as ChatCluster;
}

const getCluster = (name: string) =>
  kube.get<ChatCluster>({ apiVersion: "switchboard.dev/v1alpha1", kind: "ChatCluster", namespace: NS, name });

/** A minimal PodMonitor CRD (the Prometheus Operator's kind, with an unvalidated spec). */
const POD_MONITOR_CRD_NAME = "podmonitors.monitoring.coreos.com";
const POD_MONITOR_CRD = {
  apiVersion: "apiextensions.k8s.io/v1",
  kind: "CustomResourceDefinition",
  metadata: { name: POD_MONITOR_CRD_NAME },
  spec: {
    group: "monitoring.coreos.com",
    scope: "Namespaced",
    names: { kind: "PodMonitor", listKind: "PodMonitorList", plural: "podmonitors", singular: "podmonitor" },
    versions: [
      {
        name: "v1",
        served: true,
        storage: true,
        schema: {
          openAPIV3Schema: {
            type: "object",
            properties: { spec: { type: "object", "x-kubernetes-preserve-unknown-fields": true } },
          },
        },
      },
    ],
  },
};

/** The PodMonitors of a ChatCluster, or undefined when the API server serves no PodMonitor kind. */
async function podMonitorNames(name: string): Promise<string[] | undefined> {
  if (!(await kube.serves("monitoring.coreos.com/v1", "podmonitors"))) return undefined;
  const { items } = await kube.list<PodMonitor>(
    { apiVersion: "monitoring.coreos.com/v1", kind: "PodMonitor", namespace: NS },
    `app.kubernetes.io/instance=${name}`,
  );
  return items.map((p) => p.metadata?.name ?? "");
}

function condition(c: ChatCluster, type: string) {
  return c.status?.conditions?.find((x) => x.type === type);
}

async function waitReady(name: string, timeoutMs = 90_000): Promise<ChatCluster> {
  return waitFor(
    `${name} Ready at its generation`,
    async () => {
      const c = await getCluster(name);
      const ready = condition(c, "Ready");
      return ready?.status === "True" &&
        ready.observedGeneration === c.metadata.generation &&
        c.status?.observedGeneration === c.metadata.generation
        ? c
        : undefined;
    },
    timeoutMs,
  );
}

async function ownedObjects(name: string): Promise<Array<{ kind: string; name: string; owners: unknown[] }>> {
  const out = await kubectl([
    "get",
    "serviceaccounts,configmaps,services,deployments,statefulsets,poddisruptionbudgets,networkpolicies",
    "-n",
    NS,
    "-l",
    `app.kubernetes.io/instance=${name},app.kubernetes.io/managed-by=switchboard-operator`,
    "-o",
    "json",
  ]);
  return (
    JSON.parse(out) as {
      items: Array<{ kind: string; metadata: { name: string; ownerReferences?: unknown[] } }>;
    }
  ).items.map((o) => ({ kind: o.kind, name: o.metadata.name, owners: o.metadata.ownerReferences ?? [] }));
}

/** spec.kafka of a cluster whose SASL credentials are in a Secret that does not exist. */
function kafkaWithMissingSecret(name: string) {
  return {
    bootstrapServers: kafkaBrokers,
    topicPrefix: `op-${suffix}-${name}.`,
    topics: { partitions: 2, replicationFactor: 1, retentionHours: 1 },
    sasl: { mechanism: "scram-sha-512", secretRef: { name: `${name}-kafka-credentials` } },
  };
}

/** A cluster whose gateways autoscale on 100 connections each (draining for at most 30 s). */
function autoscaledCluster(
  name: string,
  scale: { minReplicas: number; maxReplicas: number; stabilizationWindowSeconds: number },
): ChatCluster {
  return clusterManifest(name, {
    gateway: {
      autoscaling: { enabled: true, targetConnectionsPerPod: 100, drainTimeoutSeconds: 30, ...scale },
    },
  });
}

/** The replicas of a cluster's gateway Deployment. */
async function gatewayReplicas(name: string): Promise<number | undefined> {
  const ref = { apiVersion: "apps/v1", kind: "Deployment", namespace: NS, name: `${name}-gateway` };
  return (await kube.get<V1Deployment>(ref)).spec?.replicas;
}

/** A cluster's gateway Pods not being deleted. */
async function liveGatewayPods(name: string): Promise<V1Pod[]> {
  const selector = `app.kubernetes.io/instance=${name},app.kubernetes.io/component=gateway`;
  const { items } = await kube.list<V1Pod>({ apiVersion: "v1", kind: "Pod", namespace: NS }, selector);
  return items.filter((p) => !p.metadata?.deletionTimestamp);
}

/** The Events about a ChatCluster (they outlive it). */
async function eventsAbout(name: string): Promise<Array<{ type: string; reason: string; note: string }>> {
  const { items } = JSON.parse(await kubectl(["get", "events.events.k8s.io", "-n", NS, "-o", "json"])) as {
    items: Array<{
      type: string;
      reason: string;
      note?: string;
      regarding?: { kind?: string; name?: string };
    }>;
  };
  return items
    .filter((e) => e.regarding?.kind === "ChatCluster" && e.regarding.name === name)
    .map((e) => ({ type: e.type, reason: e.reason, note: e.note ?? "" }));
}

/** Whether a ChatCluster is gone from the API server. */
async function gone(name: string): Promise<true | undefined> {
  const found = await kube.find<ChatCluster>({
    apiVersion: "switchboard.dev/v1alpha1",
    kind: "ChatCluster",
    namespace: NS,
    name,
  });
  return found ? undefined : true;
}

/** Start time (epoch ms) of an exported span: OTLP/JSON writes nanoseconds as a string. */
function spanStartMs(s: object): number {
  const nanos = (s as { startTimeUnixNano?: string | number }).startTimeUnixNano ?? 0;
  return Number(BigInt(nanos) / 1_000_000n);
}

/** Reconciles of a ChatCluster that started within [fromMs, toMs], counted by their traces. */
function reconcilesOf(name: string, fromMs: number, toMs: number): number {
  return receiver.spans.filter(
    (s) =>
      s.name === "reconcile ChatCluster" &&
      spanAttribute(s, "switchboard.chatcluster") === name &&
      spanAttribute(s, "k8s.namespace.name") === NS &&
      spanStartMs(s) >= fromMs &&
      spanStartMs(s) <= toMs,
  ).length;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  tools = await kubeTools();
  const storage = { ...(await ensureServer("kafka")), ...(await ensureServer("cassandra")) };
  kafkaBrokers = (storage.KAFKA_BROKERS as string).split(",");
  cassandraPoints = (storage.CASSANDRA_CONTACT_POINTS as string).split(",");
  const kc = new KubeConfig();
  kc.loadFromFile(tools.KUBECONFIG);
  kube = new KubeClient(kc);
  // The chart installs the CRD, the operator's ServiceAccount, least-privilege RBAC and its
  // Deployment (a kwok Pod: it does not run). The operator under test runs here, as that account.
  // Tracing on: every reconcile below is also a trace, received here.
  receiver = await OtlpReceiver.start();
  // This tree's CRD, whatever an earlier run left on a reused API server (helm installs CRDs only
  // when they are missing, and never upgrades them).
  await installCrd(tools);
  operator = await installChartOperator(tools, CHART, receiver.env);
  await kubectl(["create", "namespace", NS]);
  await kubectl(["label", "namespace", NS, "pod-security.kubernetes.io/enforce=restricted"]);
  await waitFor("default ServiceAccount", () => kubectl(["get", "serviceaccount", "default", "-n", NS]));
  await operator.start();
});

afterAll(async () => {
  await operator.kill("SIGTERM");
  receiver?.close();
  await removeChartAndClusters(tools, CHART, NS);
});

function onFailure(fn: () => Promise<void>): () => Promise<void> {
  return async () => {
    try {
      await fn();
    } catch (err) {
      console.error(`--- operator log (tail) ---\n${operator.tail()}`);
      throw err;
    }
  };
}

describe("operator against a real API server", () => {
  it(
    "provisions storage, creates every object with owner references and restricted Pods, and reports Ready",
    onFailure(async () => {
      const created = await kube.create(clusterManifest("alpha"));
      const cluster = await waitReady("alpha");
      const uid = created.metadata?.uid;

      // Storage: the topics and the keyspace exist.
      const kafka = new Kafka({ brokers: kafkaBrokers, logLevel: logLevel.NOTHING });
      const admin = kafka.admin();
      await admin.connect();
      const topics = await admin.listTopics();
      await admin.disconnect();
      const prefix = `op-${suffix}-alpha.`;
      expect(topics).toEqual(
        expect.arrayContaining([`${prefix}messages`, `${prefix}sequenced`, `${prefix}routing`]),
      );
      const cql = new cassandra.Client({ contactPoints: cassandraPoints, localDataCenter: "datacenter1" });
      const tables = await cql.execute(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
        [`op_${suffix}_alpha`],
      );
      await cql.shutdown();
      expect(tables.rows.map((r) => r.get("table_name"))).toEqual(
        expect.arrayContaining(["messages_by_conversation", "schema_migrations"]),
      );

      // Every object, each controlled by the ChatCluster.
      const objects = await ownedObjects("alpha");
      const kinds = objects.map((o) => `${o.kind}/${o.name}`).sort();
      expect(kinds).toEqual(
        [
          "ConfigMap/alpha-config",
          "Deployment/alpha-gateway",
          "Deployment/alpha-push",
          "Deployment/alpha-router",
          "Deployment/alpha-sequencer",
          "NetworkPolicy/alpha-gateway",
          "NetworkPolicy/alpha-id",
          "NetworkPolicy/alpha-presence",
          "NetworkPolicy/alpha-push",
          "NetworkPolicy/alpha-router",
          "NetworkPolicy/alpha-sequencer",
          // Components with two or more replicas get a budget; presence and push (1) do not.
          "PodDisruptionBudget/alpha-gateway",
          "PodDisruptionBudget/alpha-id",
          "PodDisruptionBudget/alpha-router",
          "PodDisruptionBudget/alpha-sequencer",
          // The sequencer serves no gRPC and has no Service.
          "Service/alpha-gateway",
          "Service/alpha-id",
          "Service/alpha-presence",
          "Service/alpha-push",
          "Service/alpha-router",
          // One ServiceAccount per component (its gRPC identity), and the gRPC policy file.
          "ServiceAccount/alpha-gateway",
          "ServiceAccount/alpha-id",
          "ServiceAccount/alpha-presence",
          "ServiceAccount/alpha-push",
          "ServiceAccount/alpha-router",
          "ServiceAccount/alpha-sequencer",
          "ConfigMap/alpha-grpc-policy",
          "StatefulSet/alpha-id",
          "StatefulSet/alpha-presence",
        ].sort(),
      );
      for (const o of objects)
        expect(o.owners, `${o.kind}/${o.name}`).toEqual([
          expect.objectContaining({
            kind: "ChatCluster",
            name: "alpha",
            uid,
            controller: true,
            blockOwnerDeletion: true,
          }),
        ]);

      // Pods were admitted in a namespace enforcing the restricted Pod Security Standard, and run.
      const pods = (
        await kube.list<V1Pod>(
          { apiVersion: "v1", kind: "Pod", namespace: NS },
          "app.kubernetes.io/instance=alpha",
        )
      ).items;
      // gateway 2, router 2, presence 1, push 1, id 2, sequencer 2 (its default).
      expect(pods.filter((p) => p.status?.phase === "Running")).toHaveLength(2 + 2 + 1 + 1 + 2 + 2);
      for (const pod of pods) {
        const c = pod.spec?.containers[0];
        expect(pod.spec?.securityContext).toMatchObject({
          runAsNonRoot: true,
          seccompProfile: { type: "RuntimeDefault" },
        });
        expect(c?.securityContext).toMatchObject({
          allowPrivilegeEscalation: false,
          readOnlyRootFilesystem: true,
          capabilities: { drop: ["ALL"] },
        });
        // Each runs as its component's ServiceAccount, with no automounted token (ADR 0007).
        const component = pod.metadata?.labels?.["app.kubernetes.io/component"];
        expect(pod.spec?.serviceAccountName).toBe(`alpha-${component}`);
        expect(pod.spec?.automountServiceAccountToken).toBe(false);
      }
      // The gateway sends a projected token bound to the cluster's audience.
      const gatewayPod = pods.find((p) => p.metadata?.labels?.["app.kubernetes.io/component"] === "gateway");
      expect(gatewayPod?.spec?.volumes?.find((v) => v.name === "grpc-token")?.projected?.sources).toEqual([
        {
          serviceAccountToken: { audience: "switchboard.dev/alpha", expirationSeconds: 3600, path: "token" },
        },
      ]);
      // The serving components may review tokens: a cluster-wide binding (no owner: the finalizer
      // deletes it) of their ServiceAccounts to the chart's token-review role.
      const binding = JSON.parse(
        await kubectl(["get", "clusterrolebinding", `switchboard:tokenreview:${NS}:alpha`, "-o", "json"]),
      ) as { roleRef: { name: string }; subjects: Array<{ name: string; namespace: string }> };
      expect(binding.roleRef.name).toBe(`${RELEASE}-switchboard-operator-tokenreview`);
      expect(binding.subjects.map((x) => `${x.namespace}/${x.name}`).sort()).toEqual(
        ["gateway", "id", "presence", "push", "router"].map((c) => `${NS}/alpha-${c}`),
      );
      const reviewer = `system:serviceaccount:${NS}:alpha-router`;
      const canI = (args: string[]) =>
        kubectl(["auth", "can-i", ...args, "--as", reviewer]).then(
          (out) => out.trim(),
          () => "no",
        );
      expect(await canI(["create", "tokenreviews.authentication.k8s.io"])).toBe("yes");
      expect(await canI(["get", "secrets", "-n", NS])).toBe("no");
      expect(await canI(["list", "pods", "-n", NS])).toBe("no");

      // StatefulSet Pods carry their ordinal, which id and presence read as worker id and shard.
      const byComponent = (c: string) =>
        pods
          .filter((p) => p.metadata?.labels?.["app.kubernetes.io/component"] === c)
          .map((p) => [p.metadata?.name, p.metadata?.labels?.["apps.kubernetes.io/pod-index"]])
          .sort();
      expect(byComponent("presence")).toEqual([["alpha-presence-0", "0"]]);
      expect(byComponent("id")).toEqual([
        ["alpha-id-0", "0"],
        ["alpha-id-1", "1"],
      ]);
      const gatewayEnv = pods.find((p) => p.metadata?.labels?.["app.kubernetes.io/component"] === "gateway")
        ?.spec?.containers[0]?.env;
      expect(gatewayEnv).toContainEqual({
        name: "SWITCHBOARD_GATEWAY_ADVERTISE_ADDRESS",
        value: "$(POD_IP):9090",
      });

      // Every Service but the gateway's is headless: gRPC clients resolve every Pod.
      const services = (
        await kube.list<V1Service>(
          { apiVersion: "v1", kind: "Service", namespace: NS },
          "app.kubernetes.io/instance=alpha",
        )
      ).items;
      expect(services.map((svc) => [svc.metadata?.name, svc.spec?.clusterIP === "None"]).sort()).toEqual([
        ["alpha-gateway", false],
        ["alpha-id", true],
        ["alpha-presence", true],
        ["alpha-push", true],
        ["alpha-router", true],
      ]);
      // The clients' Service carries HTTP only: the gateways' gRPC is dialled on their Pod IPs.
      expect(
        services.find((svc) => svc.metadata?.name === "alpha-gateway")?.spec?.ports?.map((p) => p.port),
      ).toEqual([80]);

      // What the API server stored (it accepted every field): budgets that let a drain evict
      // unready Pods, default requests and a soft spread over nodes for every role, and the gateways'
      // preStop sleep.
      const { items: budgets } = await kube.list<V1PodDisruptionBudget>(
        { apiVersion: "policy/v1", kind: "PodDisruptionBudget", namespace: NS },
        "app.kubernetes.io/instance=alpha",
      );
      expect(budgets.map((b) => b.spec?.unhealthyPodEvictionPolicy)).toEqual(
        budgets.map(() => "AlwaysAllow"),
      );
      for (const pod of pods) {
        const component = pod.metadata?.labels?.["app.kubernetes.io/component"];
        const c = pod.spec?.containers[0];
        expect(c?.resources?.requests, component).toMatchObject({ cpu: expect.any(String) });
        expect(c?.resources?.limits?.memory, component).toBe(c?.resources?.requests?.memory);
        expect(c?.resources?.limits?.cpu, component).toBeUndefined();
        expect(pod.spec?.topologySpreadConstraints, component).toEqual([
          expect.objectContaining({
            topologyKey: "kubernetes.io/hostname",
            whenUnsatisfiable: "ScheduleAnyway",
          }),
        ]);
        expect(c?.lifecycle?.preStop, component).toEqual(
          component === "gateway" ? { sleep: { seconds: 5 } } : undefined,
        );
        expect(pod.metadata?.labels?.["app.kubernetes.io/version"]).toBe("0.1.0");
      }
      const config = await kube.get<V1ConfigMap>({
        apiVersion: "v1",
        kind: "ConfigMap",
        namespace: NS,
        name: "alpha-config",
      });
      expect(config.data?.SWITCHBOARD_CLUSTER_PRESENCE_TARGETS).toBe(
        `dns:///alpha-presence-0.alpha-presence.${NS}.svc.cluster.local:9090`,
      );

      // Status: conditions at the observed generation, components counted.
      expect(cluster.status?.observedGeneration).toBe(cluster.metadata.generation);
      expect(condition(cluster, "Progressing")?.status).toBe("False");
      expect(condition(cluster, "Degraded")?.status).toBe("False");
      expect(cluster.status?.components?.router).toEqual({ replicas: 2, readyReplicas: 2 });
      expect(cluster.status?.components?.id).toEqual({ replicas: 2, readyReplicas: 2 });
      expect(cluster.status?.components?.sequencer).toEqual({ replicas: 2, readyReplicas: 2 });
      expect(cluster.status?.components?.presence).toEqual({ replicas: 1, readyReplicas: 1 });
      expect(cluster.metadata.finalizers).toContain("switchboard.dev/cleanup");
      // Every write of the operator names it as the field manager, its patches included.
      const finalizerOwners = (cluster.metadata.managedFields ?? [])
        .filter((f) => JSON.stringify(f.fieldsV1 ?? {}).includes("f:finalizers"))
        .map((f) => f.manager);
      expect(finalizerOwners).toEqual(["switchboard-operator"]);

      // Its metrics: reconciles timed, queue depth, watch silence, leadership.
      const metrics = await (await fetch(`http://127.0.0.1:${operator.port}/metrics`)).text();
      expect(metrics).toMatch(
        /^switchboard_operator_reconcile_duration_seconds_count\{controller="chatcluster",result="success"\} [1-9]/m,
      );
      expect(metrics).toMatch(/^switchboard_operator_workqueue_depth\{queue="chatcluster"\} \d+/m);
      expect(metrics).toMatch(
        /^switchboard_operator_watch_last_event_timestamp_seconds\{informer="chatclusters"\} /m,
      );
      expect(metrics).toMatch(/^switchboard_operator_leader 1$/m);
      expect(metrics).toContain(
        `switchboard_operator_chatcluster_ready{chatcluster_namespace="${NS}",chatcluster="alpha"} 1`,
      );
      expect((await fetch(`http://127.0.0.1:${operator.port}/readyz`)).status).toBe(200);

      // What it did is on record as Events.
      const events = await kubectl(["get", "events.events.k8s.io", "-n", NS, "-o", "json"]);
      expect(events).toContain('"reason": "Provisioned"');
    }),
  );

  it(
    "makes one trace per reconcile, with its API calls and the storage provisioning as children",
    onFailure(async () => {
      // alpha was reconciled above; its first reconcile provisioned its storage.
      const roots = await waitFor(
        "reconcile spans of alpha",
        async () => {
          const found = receiver.spans.filter(
            (s) =>
              s.name === "reconcile ChatCluster" && spanAttribute(s, "switchboard.chatcluster") === "alpha",
          );
          return found.some((r) =>
            receiver.spans.some((s) => s.traceId === r.traceId && s.name === "provision storage"),
          )
            ? found
            : undefined;
        },
        30_000,
      );
      for (const root of roots) {
        // A trace of its own: no parent, and every other span of the trace descends from it.
        expect(root.parentSpanId ?? "").toBe("");
        expect(spanAttribute(root, "k8s.namespace.name")).toBe(NS);
        const trace = receiver.spans.filter((s) => s.traceId === root.traceId);
        const ids = new Set(trace.map((s) => s.spanId));
        for (const s of trace) if (s !== root) expect(ids, `${s.name}'s parent`).toContain(s.parentSpanId);
      }
      const provisioning = roots.find((r) =>
        receiver.spans.some((s) => s.traceId === r.traceId && s.name === "provision storage"),
      )!;
      const children = receiver.spans.filter((s) => s.traceId === provisioning.traceId);
      // Kubernetes API calls as client spans (server-side apply is a PATCH); Kafka's and Cassandra's.
      expect(
        children.some((s) => s.name === "PATCH" && String(spanAttribute(s, "url.path")).includes(NS)),
      ).toBe(true);
      expect(children.some((s) => spanAttribute(s, "db.system.name") === "cassandra")).toBe(true);
      expect(children.some((s) => spanAttribute(s, "messaging.system") === "kafka")).toBe(true);
    }),
  );

  it(
    "applies a spec change: replicas, configuration, and a Pod roll on a changed config",
    onFailure(async () => {
      const before = await kube.get<V1Deployment>({
        apiVersion: "apps/v1",
        kind: "Deployment",
        namespace: NS,
        name: "alpha-router",
      });
      const hashBefore = before.spec?.template.metadata?.annotations?.["switchboard.dev/config-hash"];
      const patchedAt = Date.now();
      await patchSpec("alpha", {
        router: { replicas: 3 },
        presence: { offlineAfterSeconds: 45 },
        settings: { "gateway.connectionsMax": "25000" },
      });
      const cluster = await waitReady("alpha");
      expect(cluster.metadata.generation).toBe(2);
      const router = await kube.get<V1Deployment>({
        apiVersion: "apps/v1",
        kind: "Deployment",
        namespace: NS,
        name: "alpha-router",
      });
      expect(router.spec?.replicas).toBe(3);
      expect(router.status?.readyReplicas).toBe(3);
      const config = await kube.get<V1ConfigMap>({
        apiVersion: "v1",
        kind: "ConfigMap",
        namespace: NS,
        name: "alpha-config",
      });
      expect(config.data?.SWITCHBOARD_PRESENCE_OFFLINE_AFTER_MS).toBe("45000");
      // spec.settings reach the ConfigMap.
      expect(config.data?.SWITCHBOARD_GATEWAY_CONNECTIONS_MAX).toBe("25000");
      expect(router.spec?.template.metadata?.annotations?.["switchboard.dev/config-hash"]).not.toBe(
        hashBefore,
      );
      expect(cluster.status?.components?.router).toEqual({ replicas: 3, readyReplicas: 3 });
      // Nothing provisioning reads changed: the storage was not provisioned again (a slow Cassandra
      // would have held the change for its DDL timeout), yet the generation counts as provisioned.
      expect(cluster.status?.provisionedGeneration).toBe(2);
      const reconciles = receiver.spans.filter(
        (s) =>
          s.name === "reconcile ChatCluster" &&
          spanAttribute(s, "switchboard.chatcluster") === "alpha" &&
          spanStartMs(s) >= patchedAt,
      );
      expect(reconciles.length).toBeGreaterThan(0);
      const traces = new Set(reconciles.map((r) => r.traceId));
      expect(receiver.spans.filter((s) => traces.has(s.traceId) && s.name === "provision storage")).toEqual(
        [],
      );
      // A change of the settings with one the operator sets itself is refused whole: the settings
      // in force stay, and the status says why (still Ready: the cluster runs what it ran).
      const configData = async () =>
        (
          await kube.get<V1ConfigMap>({
            apiVersion: "v1",
            kind: "ConfigMap",
            namespace: NS,
            name: "alpha-config",
          })
        ).data ?? {};
      const observed = (c: ChatCluster) => c.metadata.generation === c.status?.observedGeneration;
      await patchSpec("alpha", { settings: { "gateway.connectionsMax": "30000", "kafka.partitions": "3" } });
      const refused = await waitFor("alpha Degraded: SettingsRefused", async () => {
        const c = await getCluster("alpha");
        return observed(c) && condition(c, "Degraded")?.reason === "SettingsRefused" ? c : undefined;
      });
      expect(condition(refused, "Degraded")?.message).toContain("kafka.partitions: set by the operator");
      expect(condition(refused, "Ready")?.status).toBe("True");
      expect((await configData()).SWITCHBOARD_GATEWAY_CONNECTIONS_MAX).toBe("25000");
      // Without it, the change is taken, and the cluster is not Degraded any more.
      await patchSpec("alpha", { settings: { "kafka.partitions": null } });
      await waitFor("alpha not Degraded", async () => {
        const c = await getCluster("alpha");
        return observed(c) && condition(c, "Degraded")?.status === "False" ? c : undefined;
      });
      expect((await configData()).SWITCHBOARD_GATEWAY_CONNECTIONS_MAX).toBe("30000");
    }),
  );

  it(
    "reports a StatefulSet's Pod unready past the progress deadline as a stuck rollout, and recovers with it",
    onFailure(async () => {
      // kwok moves only Pending Pods: a status written to a Running one stays. The Pod has been
      // crash-looping for eleven minutes, as far as the API server says.
      const pod = "alpha-presence-0";
      const setStatus = (status: Record<string, unknown>) =>
        kubectl([
          "patch",
          "pod",
          pod,
          "-n",
          NS,
          "--subresource=status",
          "--type=merge",
          "-p",
          JSON.stringify({ status }),
        ]);
      const container = (state: Record<string, unknown>, ready: boolean) => [
        { name: "presence", image: "switchboard", imageID: "", ready, restartCount: ready ? 0 : 7, state },
      ];
      const elevenMinutesAgo = new Date(Date.now() - 11 * 60_000).toISOString();
      await setStatus({
        conditions: [{ type: "Ready", status: "False", lastTransitionTime: elevenMinutesAgo }],
        containerStatuses: container({ waiting: { reason: "CrashLoopBackOff" } }, false),
      });
      const stuck = await waitFor("alpha Degraded by a stuck presence rollout", async () => {
        const c = await getCluster("alpha");
        return condition(c, "Degraded")?.status === "True" ? c : undefined;
      });
      expect(condition(stuck, "Degraded")).toMatchObject({ reason: "ProgressDeadlineExceeded" });
      expect(condition(stuck, "Degraded")?.message).toMatch(
        new RegExp(
          `^rollout stuck: presence: Pod ${pod} of revision alpha-presence-\\w+ not ready for 6\\d\\d s \\(CrashLoopBackOff\\)$`,
        ),
      );
      expect(condition(stuck, "Progressing")).toMatchObject({
        status: "False",
        reason: "ProgressDeadlineExceeded",
      });
      expect(condition(stuck, "Ready")).toMatchObject({ status: "False", reason: "ComponentsNotReady" });
      // The Pod recovers: so does the cluster.
      const now = new Date().toISOString();
      await setStatus({
        conditions: [{ type: "Ready", status: "True", lastTransitionTime: now }],
        containerStatuses: container({ running: { startedAt: now } }, true),
      });
      const recovered = await waitReady("alpha");
      expect(condition(recovered, "Degraded")).toMatchObject({ status: "False", reason: "AsExpected" });
    }),
  );

  it(
    "converges after being killed mid-reconcile, repairs drift, and replaces an older operator's objects",
    onFailure(async () => {
      const created = await kube.create(clusterManifest("beta"));
      // Kill -9 as soon as the first owned object appears: the reconcile is under way.
      await waitFor(
        "first object of beta",
        async () => (await ownedObjects("beta")).length > 0 || undefined,
        60_000,
      );
      await operator.kill("SIGKILL");
      const partial = (await ownedObjects("beta")).length;
      // Drift while nobody watches: an owned object removed, another changed by hand.
      await kubectl(["delete", "configmap", "beta-config", "-n", NS, "--ignore-not-found"]);
      await kubectl(["scale", "deployment", "alpha-push", "-n", NS, "--replicas=4"]).catch(() => "");
      // What an operator from before the split roles left: presence as a Deployment, and a router
      // Service with a cluster IP (which the API server never lets change into a headless one).
      const old = (component: string) => {
        const selector = {
          "app.kubernetes.io/name": "switchboard",
          "app.kubernetes.io/instance": "beta",
          "app.kubernetes.io/component": component,
        };
        const metadata = {
          name: `beta-${component}`,
          namespace: NS,
          labels: { ...selector, "app.kubernetes.io/managed-by": "switchboard-operator" },
          ownerReferences: [
            {
              apiVersion: "switchboard.dev/v1alpha1",
              kind: "ChatCluster",
              name: "beta",
              uid: created.metadata?.uid ?? "",
              controller: true,
              blockOwnerDeletion: true,
            },
          ],
        };
        return { selector, metadata };
      };
      await kubectl(["delete", "service", "beta-router", "-n", NS, "--ignore-not-found"]);
      const router = old("router");
      const oldService = await kube.create<V1Service>({
        apiVersion: "v1",
        kind: "Service",
        metadata: router.metadata,
        spec: {
          type: "ClusterIP",
          selector: router.selector,
          ports: [{ name: "grpc", port: 9090, targetPort: "grpc", protocol: "TCP" }],
        },
      });
      expect(oldService.spec?.clusterIP).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
      const presence = old("presence");
      await kube.create<V1Deployment>({
        apiVersion: "apps/v1",
        kind: "Deployment",
        metadata: presence.metadata,
        spec: {
          replicas: 0,
          selector: { matchLabels: presence.selector },
          template: {
            metadata: { labels: presence.selector },
            spec: { containers: [{ name: "presence", image: "ghcr.io/switchboard-chat/switchboard:0.0.9" }] },
          },
        },
      });
      await operator.start();
      await waitReady("beta");
      const objects = await ownedObjects("beta");
      expect(objects.length).toBeGreaterThanOrEqual(partial);
      expect(objects.map((o) => `${o.kind}/${o.name}`)).toContain("ConfigMap/beta-config");
      // 6 ServiceAccounts, 2 ConfigMaps, 6 workloads, 5 Services, 6 NetworkPolicies, 4 budgets: the
      // old presence Deployment is gone (pruned), the StatefulSet stands in its place.
      expect(objects).toHaveLength(29);
      expect(objects.map((o) => `${o.kind}/${o.name}`)).not.toContain("Deployment/beta-presence");
      expect(objects.map((o) => `${o.kind}/${o.name}`)).toContain("StatefulSet/beta-presence");
      // The router Service was created again, headless.
      const routerService = await kube.get<V1Service>({
        apiVersion: "v1",
        kind: "Service",
        namespace: NS,
        name: "beta-router",
      });
      expect(routerService.spec?.clusterIP).toBe("None");
      expect(routerService.metadata?.uid).not.toBe(oldService.metadata?.uid);
      const push = await waitFor("alpha-push back at 1 replica", async () => {
        const d = await kube.get<V1Deployment>({
          apiVersion: "apps/v1",
          kind: "Deployment",
          namespace: NS,
          name: "alpha-push",
        });
        return d.spec?.replicas === 1 ? d : undefined;
      });
      expect(push.spec?.replicas).toBe(1);
    }),
  );

  it(
    "scales gateways on live connections, drains the emptiest before scaling down, and marks them for deletion",
    onFailure(async () => {
      const farm = new GatewayFarm(
        kube,
        NS,
        "app.kubernetes.io/instance=gamma,app.kubernetes.io/component=gateway",
      );
      farm.start();
      try {
        await kube.create(
          autoscaledCluster("gamma", { minReplicas: 1, maxReplicas: 4, stabilizationWindowSeconds: 3 }),
        );
        await waitReady("gamma");
        await waitFor("one fake gateway", async () => farm.pods().length === 1 || undefined);
        // 350 connections on one gateway: 4 are needed (ceil(350 / 100)).
        farm.setAll(350);
        farm.initialConnections = 0;
        await waitFor("gateway Deployment at 4", async () => {
          const d = await kube.get<V1Deployment>({
            apiVersion: "apps/v1",
            kind: "Deployment",
            namespace: NS,
            name: "gamma-gateway",
          });
          return d.spec?.replicas === 4 || undefined;
        });
        await waitFor("4 fake gateways", async () => farm.pods().length === 4 || undefined);
        const up = await waitFor("status shows 4 gateways and 350 connections", async () => {
          const c = await getCluster("gamma");
          return c.status?.gateways?.length === 4 && c.status.connections === 350 ? c : undefined;
        });
        expect(up.status?.gatewayDesiredReplicas).toBe(4);

        // Load falls to 120 on one gateway and 5 on each other: 2 are needed; the two emptiest
        // that are not the busy one are drained.
        const [busy, ...rest] = farm.pods() as [string, ...string[]];
        farm.setConnections(busy, 120);
        for (const p of rest) farm.setConnections(p, 5);
        const marked = await waitFor("two drained gateways marked with a deletion cost", async () => {
          const pods = (
            await kube.list<V1Pod>(
              { apiVersion: "v1", kind: "Pod", namespace: NS },
              "app.kubernetes.io/instance=gamma,app.kubernetes.io/component=gateway",
            )
          ).items.filter(
            (p) => p.metadata?.annotations?.["controller.kubernetes.io/pod-deletion-cost"] === "-1000",
          );
          return pods.length === 2 ? pods.map((p) => p.metadata?.name ?? "").sort() : undefined;
        });
        expect(marked).not.toContain(busy);
        // Each marked gateway is told to drain (the mark comes first, so wait for both calls).
        await waitFor("Drain called on both", async () => farm.drained.length >= 2 || undefined, 10_000);
        expect([...farm.drained].sort()).toEqual(marked);
        await waitFor("gateway Deployment at 2", async () => {
          const d = await kube.get<V1Deployment>({
            apiVersion: "apps/v1",
            kind: "Deployment",
            namespace: NS,
            name: "gamma-gateway",
          });
          return d.spec?.replicas === 2 || undefined;
        });
        // The ReplicaSet removed exactly the drained Pods.
        const remaining = await waitFor("2 gateway Pods left", async () => {
          const pods = (
            await kube.list<V1Pod>(
              { apiVersion: "v1", kind: "Pod", namespace: NS },
              "app.kubernetes.io/instance=gamma,app.kubernetes.io/component=gateway",
            )
          ).items.filter((p) => !p.metadata?.deletionTimestamp);
          return pods.length === 2 ? pods.map((p) => p.metadata?.name ?? "") : undefined;
        });
        expect(remaining).toContain(busy);
        for (const m of marked) expect(remaining).not.toContain(m);
        expect(farm.drained).toHaveLength(2);

        // Load falls again (one gateway is needed) and, while the other one drains, minReplicas rises
        // to 2: replicas cannot drop, so the drained gateway, which refuses every client, is deleted
        // and its Deployment starts a fresh one.
        const goes = remaining.find((p) => p !== busy)!;
        farm.drainMs = 5_000;
        farm.setConnections(busy, 50);
        farm.setConnections(goes, 5);
        await waitFor(
          "the other gateway drained",
          async () => farm.drained.includes(goes) || undefined,
          30_000,
        );
        await kube.mergePatch(
          { apiVersion: "switchboard.dev/v1alpha1", kind: "ChatCluster", namespace: NS, name: "gamma" },
          { spec: { gateway: { autoscaling: { minReplicas: 2 } } } },
        );
        await waitFor(
          "a fresh gateway in the drained one's place, none left drained",
          async () => {
            const pods = (
              await kube.list<V1Pod>(
                { apiVersion: "v1", kind: "Pod", namespace: NS },
                "app.kubernetes.io/instance=gamma,app.kubernetes.io/component=gateway",
              )
            ).items.filter((p) => !p.metadata?.deletionTimestamp);
            const names = pods.map((p) => p.metadata?.name);
            const drained = pods.filter((p) => p.metadata?.annotations?.["switchboard.dev/drain-started-at"]);
            return pods.length === 2 && names.includes(busy) && !names.includes(goes) && drained.length === 0
              ? true
              : undefined;
          },
          60_000,
        );
        const d = await kube.get<V1Deployment>({
          apiVersion: "apps/v1",
          kind: "Deployment",
          namespace: NS,
          name: "gamma-gateway",
        });
        expect(d.spec?.replicas).toBe(2);
        // Its Stats and Drain calls carried the operator's own token for gamma's audience (ADR 0007),
        // which the API server says is the chart's ServiceAccount's.
        expect(farm.authorizations.length).toBeGreaterThan(0);
        const token = farm.authorizations.at(-1)!.replace(/^Bearer /, "");
        const review = JSON.parse(
          await kubectl(
            ["create", "-f", "-", "-o", "json"],
            JSON.stringify({
              apiVersion: "authentication.k8s.io/v1",
              kind: "TokenReview",
              spec: { token, audiences: ["switchboard.dev/gamma"] },
            }),
          ),
        ) as { status: { authenticated?: boolean; user?: { username?: string } } };
        expect(review.status.authenticated).toBe(true);
        expect(review.status.user?.username).toBe(
          `system:serviceaccount:${SYSTEM_NS}:${RELEASE}-switchboard-operator`,
        );
      } finally {
        await farm.stop();
      }
    }),
  );

  it(
    "applies every object the API server takes when it refuses one, and scales down only once the gateway Deployment says so",
    onFailure(async () => {
      const selector = "app.kubernetes.io/instance=theta,app.kubernetes.io/component=gateway";
      const farm = new GatewayFarm(kube, NS, selector);
      const patch = (spec: Record<string, unknown>) =>
        kube.mergePatch(
          { apiVersion: "switchboard.dev/v1alpha1", kind: "ChatCluster", namespace: NS, name: "theta" },
          { spec },
        );
      const badMemory = { resources: { requests: { memory: "-1Gi" } } };
      farm.start();
      try {
        await kube.create(
          autoscaledCluster("theta", { minReplicas: 1, maxReplicas: 4, stabilizationWindowSeconds: 2 }),
        );
        await waitReady("theta");
        await waitFor("one fake gateway", async () => farm.pods().length === 1 || undefined);

        // A router the API server refuses (negative memory passes the CRD's schema) holds back
        // neither the gateways' scale-up nor the rest.
        await patch({ router: badMemory });
        farm.setAll(250);
        await waitFor("gateway Deployment at 3 with the router refused", async () =>
          (await gatewayReplicas("theta")) === 3 ? true : undefined,
        );
        const degraded = await waitFor("Degraded: the router refused", async () => {
          const c = await getCluster("theta");
          const d = condition(c, "Degraded");
          return d?.status === "True" && d.reason === "ApplyFailed" ? d : undefined;
        });
        expect(degraded.message).toContain("Deployment theta-router: 422");
        // Why it was refused, not the request that was (its path, the field manager).
        expect(degraded.message).not.toContain("fieldManager");
        // Events are written in the background.
        await waitFor(
          "a ScaledUp Event",
          async () => (await eventsAbout("theta")).some((e) => e.reason === "ScaledUp") || undefined,
        );
        await waitFor("3 fake gateways", async () => farm.pods().length === 3 || undefined);

        // Now the gateway Deployment itself is refused while load falls to one gateway's worth: two
        // gateways drain, but the Deployment cannot be lowered, so nothing says it was: they are not
        // marked done, not deleted (their ReplicaSet would start them again, and the next ones would
        // drain: a loop that pushed clients off again and again), and no ScaledDown is recorded.
        await patch({ gateway: badMemory });
        const [busy, ...rest] = farm.pods() as [string, ...string[]];
        farm.setConnections(busy, 50);
        for (const p of rest) farm.setConnections(p, 0);
        await waitFor(
          "both others drained",
          async () => (farm.drained.length >= 2 ? true : undefined),
          30_000,
        );
        const before = (await liveGatewayPods("theta")).map((p) => p.metadata?.uid).sort();
        await new Promise((r) => setTimeout(r, 8_000)); // eight 1 s polls
        const held = await liveGatewayPods("theta");
        expect(held.map((p) => p.metadata?.uid).sort()).toEqual(before);
        for (const p of held)
          expect(p.metadata?.annotations?.["switchboard.dev/drain-done-at"]).toBeUndefined();
        expect(await gatewayReplicas("theta")).toBe(3);
        const events = await eventsAbout("theta");
        expect(
          events.filter((e) => e.reason === "ScaledDown" || e.reason === "DrainedGatewayRemoved"),
        ).toEqual([]);
        expect(farm.drained).toHaveLength(2);

        // Fixed: the Deployment goes to 1, and the ReplicaSet removes the drained two.
        await patch({ gateway: { resources: null }, router: { resources: null } });
        await waitFor("gateway Deployment at 1", async () =>
          (await gatewayReplicas("theta")) === 1 ? true : undefined,
        );
        const left = await waitFor("only the busy gateway left", async () => {
          const pods = await liveGatewayPods("theta");
          return pods.length === 1 ? pods : undefined;
        });
        expect(left[0]?.metadata?.name).toBe(busy);
        await waitFor(
          "a ScaledDown Event",
          async () => (await eventsAbout("theta")).some((e) => e.reason === "ScaledDown") || undefined,
        );
        await waitReady("theta");
      } finally {
        await farm.stop();
      }
    }),
  );

  it(
    "takes a gateway that drains without the operator's marks as drained: marked, replaced, the others untouched",
    onFailure(async () => {
      const selector = "app.kubernetes.io/instance=iota,app.kubernetes.io/component=gateway";
      const farm = new GatewayFarm(kube, NS, selector);
      farm.start();
      try {
        await kube.create(
          autoscaledCluster("iota", { minReplicas: 2, maxReplicas: 2, stabilizationWindowSeconds: 2 }),
        );
        await waitReady("iota");
        await waitFor("two fake gateways", async () => farm.pods().length === 2 || undefined);
        const [kept, drained] = farm.pods() as [string, string];
        farm.setConnections(kept, 40);
        // Drained by hand (an SRE's call, or an operator's drain whose marks were removed): it refuses
        // every new client for good, and minReplicas keeps the count, so it is deleted and replaced.
        farm.drainByHand(drained);
        await waitFor(
          "a fresh gateway in the drained one's place",
          async () => {
            const pods = await liveGatewayPods("iota");
            const names = pods.map((p) => p.metadata?.name);
            return pods.length === 2 && names.includes(kept) && !names.includes(drained) ? true : undefined;
          },
          60_000,
        );
        // The serving one was never drained, and the operator drained nothing itself.
        expect(farm.drained).toEqual([]);
        const removed = await waitFor("a DrainedGatewayRemoved Event", async () =>
          (await eventsAbout("iota")).find((e) => e.reason === "DrainedGatewayRemoved"),
        );
        expect(removed.note).toContain(drained);
      } finally {
        await farm.stop();
      }
    }),
  );

  it(
    "restores an owned Service, ConfigMap or ServiceAccount deleted by hand at once, gateways or none",
    onFailure(async () => {
      await kube.create(clusterManifest("kappa", { gateway: { replicas: 0 } }));
      await waitReady("kappa");
      const objects = [
        { apiVersion: "v1", kind: "Service", namespace: NS, name: "kappa-router" },
        { apiVersion: "v1", kind: "ConfigMap", namespace: NS, name: "kappa-config" },
        { apiVersion: "v1", kind: "ServiceAccount", namespace: NS, name: "kappa-push" },
      ];
      for (const ref of objects) {
        const before = await kube.get<V1Service>(ref);
        await kube.delete(ref);
        // Well within the 60 s periodic reconcile: the owned kinds are watched.
        const restored = await waitFor(
          `${ref.kind} ${ref.name} restored`,
          async () => {
            const now = await kube.find<V1Service>(ref);
            return now && now.metadata?.uid !== before.metadata?.uid ? now : undefined;
          },
          15_000,
        );
        expect(restored.metadata?.ownerReferences?.[0]?.name).toBe("kappa");
      }
    }),
  );

  it(
    "writes a gateway-gone record when a gateway Pod goes away",
    onFailure(async () => {
      const pods = (
        await kube.list<V1Pod>(
          { apiVersion: "v1", kind: "Pod", namespace: NS },
          "app.kubernetes.io/instance=alpha,app.kubernetes.io/component=gateway",
        )
      ).items;
      const victim = pods[0]?.metadata?.name ?? "";
      expect(victim).not.toBe("");
      // The operator must have recorded the Pod before it can notice it is gone.
      await waitFor(
        "victim in status",
        async () => (await getCluster("alpha")).status?.gateways?.some((g) => g.pod === victim) || undefined,
      );
      // Nothing serves these Pods' gateway port (kwok runs no container): their live counts cannot
      // be read, and the status leaves them out instead of showing an idle 0.
      const unread = await getCluster("alpha");
      expect(unread.status?.gateways?.some((g) => g.connections === undefined)).toBe(true);
      expect(unread.status?.connections).toBeUndefined();
      const kafka = new Kafka({ brokers: kafkaBrokers, logLevel: logLevel.NOTHING });
      const consumer = kafka.consumer({ groupId: `test-gone-${suffix}` });
      const records: Array<{ key: string; kind: number; gatewayId: string; epoch: bigint }> = [];
      await consumer.connect();
      await consumer.subscribe({ topic: `op-${suffix}-alpha.routing`, fromBeginning: true });
      await consumer.run({
        eachMessage: async ({ message }) => {
          if (!message.value) return;
          const r = fromBinary(SessionRecordSchema, message.value);
          records.push({
            key: message.key?.toString() ?? "",
            kind: r.kind,
            gatewayId: r.gatewayId,
            epoch: r.gatewayEpoch,
          });
        },
      });
      try {
        const deletedAt = Date.now();
        await kubectl(["delete", "pod", victim, "-n", NS, "--wait=false"]);
        const record = await waitFor("gone record", async () => records.find((r) => r.gatewayId === victim));
        expect(record).toMatchObject({ key: `gone:${victim}`, kind: SessionRecordKind.GATEWAY_GONE });
        expect(Number(record.epoch)).toBeGreaterThanOrEqual(deletedAt - 1000);
        // No gateway that still runs is declared gone (earlier records come from the config roll).
        const running = (
          await kube.list<V1Pod>(
            { apiVersion: "v1", kind: "Pod", namespace: NS },
            "app.kubernetes.io/instance=alpha,app.kubernetes.io/component=gateway",
          )
        ).items.map((p) => p.metadata?.name ?? "");
        expect(running).not.toContain(victim);
        const goneIds = new Set(
          records.filter((r) => r.kind === SessionRecordKind.GATEWAY_GONE).map((r) => r.gatewayId),
        );
        for (const pod of running) expect(goneIds.has(pod), pod).toBe(false);
      } finally {
        await consumer.disconnect();
      }
    }),
  );

  it(
    "creates a PodMonitor only when asked and served, relabelled by role and chatcluster, and removes it when the toggle goes off",
    onFailure(async () => {
      const served = async () =>
        (await kube.serves("monitoring.coreos.com/v1", "podmonitors")) ? true : undefined;
      // The Prometheus Operator's CRD is absent (a run that failed half-way may have left it).
      await kubectl(["delete", "crd", POD_MONITOR_CRD_NAME, "--ignore-not-found", "--wait=true"]);
      await waitFor("no PodMonitor kind served", async () => !(await served()) || undefined);
      try {
        // Asked for without the CRD: the reconcile succeeds, and the condition and an Event say why
        // there is no PodMonitor.
        await kube.create(
          clusterManifest("delta", {
            gateway: { replicas: 1 },
            router: { replicas: 1 },
            id: { replicas: 1 },
            sequencer: { replicas: 1 },
            observability: {
              metrics: {
                enabled: true,
                podMonitor: { enabled: true, interval: "15s", labels: { release: "kube-prometheus-stack" } },
              },
            },
          }),
        );
        const without = await waitReady("delta");
        expect(condition(without, "Degraded")).toMatchObject({ status: "False" });
        expect(condition(without, "PodMonitor")).toMatchObject({
          status: "False",
          reason: "CRDNotInstalled",
          observedGeneration: without.metadata.generation,
        });
        const events = await waitFor("a PodMonitorUnavailable Event", async () => {
          const out = await kubectl(["get", "events.events.k8s.io", "-n", NS, "-o", "json"]);
          const items = (
            JSON.parse(out) as { items: Array<{ reason: string; note: string; regarding: { name: string } }> }
          ).items.filter((e) => e.regarding.name === "delta" && e.reason === "PodMonitorUnavailable");
          return items.length > 0 ? items : undefined;
        });
        expect(events[0]?.note).toContain("monitoring.coreos.com/v1 PodMonitor");
        expect(await podMonitorNames("delta")).toBeUndefined(); // the kind does not even exist

        // The CRD arrives (a Prometheus Operator installed after the platform): the operator looks
        // again within a minute, untouched, and creates the PodMonitor.
        await kubectl(["apply", "--server-side", "-f", "-"], JSON.stringify(POD_MONITOR_CRD));
        await kubectl([
          "wait",
          "--for=condition=Established",
          "--timeout=60s",
          `crd/${POD_MONITOR_CRD_NAME}`,
        ]);
        const pm = await waitFor(
          "the PodMonitor delta-switchboard",
          () =>
            kube.find<PodMonitor>({
              apiVersion: "monitoring.coreos.com/v1",
              kind: "PodMonitor",
              namespace: NS,
              name: "delta-switchboard",
            }),
          100_000,
        );
        const cluster = await getCluster("delta");
        expect(pm.metadata?.ownerReferences).toEqual([
          expect.objectContaining({
            apiVersion: "switchboard.dev/v1alpha1",
            kind: "ChatCluster",
            name: "delta",
            uid: cluster.metadata.uid,
            controller: true,
            blockOwnerDeletion: true,
          }),
        ]);
        expect(pm.metadata?.labels).toMatchObject({
          release: "kube-prometheus-stack",
          "app.kubernetes.io/instance": "delta",
          "app.kubernetes.io/managed-by": "switchboard-operator",
        });
        expect(pm.metadata?.managedFields?.map((f) => [f.manager, f.operation])).toEqual([
          ["switchboard-operator", "Apply"],
        ]);
        // Every Pod of delta, whatever its role, and no Pod of another ChatCluster.
        expect(pm.spec.selector).toEqual({
          matchLabels: { "app.kubernetes.io/name": "switchboard", "app.kubernetes.io/instance": "delta" },
        });
        const selector = Object.entries(pm.spec.selector.matchLabels)
          .map(([k, v]) => `${k}=${v}`)
          .join(",");
        const selected = (await kube.list<V1Pod>({ apiVersion: "v1", kind: "Pod", namespace: NS }, selector))
          .items;
        expect(
          [...new Set(selected.map((p) => p.metadata?.labels?.["app.kubernetes.io/component"]))].sort(),
        ).toEqual(["gateway", "id", "presence", "push", "router", "sequencer"]);
        for (const p of selected) {
          expect(p.metadata?.labels?.["app.kubernetes.io/instance"]).toBe("delta");
          // The endpoint's port is a named port of every selected container: the internal one.
          expect(p.spec?.containers[0]?.ports?.find((port) => port.name === "internal")?.containerPort).toBe(
            9091,
          );
        }
        expect(pm.spec.podMetricsEndpoints).toEqual([
          {
            port: "internal",
            path: "/metrics",
            interval: "15s",
            relabelings: [
              {
                sourceLabels: ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
                targetLabel: "role",
                action: "replace",
              },
              {
                sourceLabels: ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
                targetLabel: "chatcluster",
                action: "replace",
              },
            ],
          },
        ]);
        const withPm = await waitFor("PodMonitor condition True", async () => {
          const c = await getCluster("delta");
          return condition(c, "PodMonitor")?.status === "True" ? c : undefined;
        });
        expect(condition(withPm, "PodMonitor")?.reason).toBe("Created");

        // The toggle goes off: the PodMonitor is pruned and the condition goes with it.
        await patchSpec("delta", { observability: { metrics: { podMonitor: { enabled: false } } } });
        await waitFor("delta's PodMonitor pruned", async () =>
          (await podMonitorNames("delta"))?.length === 0 ? true : undefined,
        );
        const off = await waitReady("delta");
        expect(condition(off, "PodMonitor")).toBeUndefined();
        expect(condition(off, "Degraded")?.status).toBe("False");
      } finally {
        await kubectl(["delete", "crd", POD_MONITOR_CRD_NAME, "--ignore-not-found", "--wait=false"]);
      }
      // And the reconcile keeps succeeding once the kind is gone again.
      await waitFor("no PodMonitor kind served", async () => !(await served()) || undefined);
      await patchSpec("delta", { push: { replicas: 2 } });
      const after = await waitReady("delta");
      expect(after.status?.components?.push).toEqual({ replicas: 2, readyReplicas: 2 });
      expect(condition(after, "Degraded")?.status).toBe("False");
      await kubectl(["delete", "chatcluster", "delta", "-n", NS, "--wait=true", "--timeout=60s"]);
    }),
    240_000,
  );

  it(
    "renders spec.api.clients into the policy file without rolling a Pod, and removes the token-review binding with the cluster",
    onFailure(async () => {
      const billing = {
        name: "billing",
        serviceAccount: { namespace: "billing", name: "billing-api" },
        permissions: ["publish"],
      };
      await kube.create(clusterManifest("delta", { api: { clients: [billing] } }));
      await waitReady("delta");
      const policy = async () =>
        JSON.parse(
          (
            await kube.get<V1ConfigMap>({
              apiVersion: "v1",
              kind: "ConfigMap",
              namespace: NS,
              name: "delta-grpc-policy",
            })
          ).data?.["policy.json"] ?? "{}",
        ) as { serviceAccounts: Record<string, string>; clients: Array<{ name: string }> };
      const first = await policy();
      expect(first.serviceAccounts).toEqual({
        [`${NS}/delta-gateway`]: "role:gateway",
        [`${NS}/delta-router`]: "role:router",
        [`${NS}/delta-presence`]: "role:presence",
        [`${SYSTEM_NS}/${RELEASE}-switchboard-operator`]: "operator",
        "billing/billing-api": "client:billing",
      });
      expect(first.clients.map((c) => c.name)).toEqual(["billing"]);
      const router = () =>
        kube.get<V1Deployment>({
          apiVersion: "apps/v1",
          kind: "Deployment",
          namespace: NS,
          name: "delta-router",
        });
      const before = await router();

      // A second client: the file changes, no Pod template does.
      await kube.mergePatch(
        { apiVersion: "switchboard.dev/v1alpha1", kind: "ChatCluster", namespace: NS, name: "delta" },
        {
          spec: {
            api: {
              clients: [
                billing,
                {
                  name: "moderation",
                  certificate: { uri: "switchboard://client:moderation" },
                  permissions: ["manageGroups"],
                },
              ],
            },
          },
        },
      );
      await waitFor(
        "moderation in the policy file",
        async () => (await policy()).clients.some((c) => c.name === "moderation") || undefined,
      );
      await waitReady("delta");
      expect((await router()).metadata?.generation).toBe(before.metadata?.generation);

      await kubectl(["delete", "chatcluster", "delta", "-n", NS, "--wait=true", "--timeout=60s"]);
      expect(
        await kubectl(["get", "clusterrolebinding", `switchboard:tokenreview:${NS}:delta`]).catch(
          (e: Error) => e.message,
        ),
      ).toMatch(/NotFound/);
    }),
  );

  it(
    "runs a version pinned to a digest: image@digest, no version label (it could not be one), every object applied, and its readiness exported until it is deleted",
    onFailure(async () => {
      const digest = `sha256:${"5e1f".repeat(16)}`;
      await kube.create(clusterManifest("pinned", { version: digest }));
      const cluster = await waitReady("pinned");
      expect(condition(cluster, "Degraded")?.status).toBe("False");
      const router = await kube.get<V1Deployment>({
        apiVersion: "apps/v1",
        kind: "Deployment",
        namespace: NS,
        name: "pinned-router",
      });
      expect(router.spec?.template.spec?.containers[0]?.image).toBe(
        `ghcr.io/switchboard-chat/switchboard@${digest}`,
      );
      const objects = await ownedObjects("pinned");
      expect(objects.length).toBeGreaterThan(20);
      const labelled = JSON.parse(
        await kubectl([
          "get",
          "deployments,services,configmaps",
          "-n",
          NS,
          "-l",
          "app.kubernetes.io/instance=pinned",
          "-o",
          "json",
        ]),
      ) as {
        items: Array<{ metadata: { labels?: Record<string, string>; annotations?: Record<string, string> } }>;
      };
      for (const o of labelled.items) {
        expect(o.metadata.labels).not.toHaveProperty("app.kubernetes.io/version");
        expect(o.metadata.annotations?.["switchboard.dev/version"]).toBe(digest);
      }
      const series = `switchboard_operator_chatcluster_ready{chatcluster_namespace="${NS}",chatcluster="pinned"}`;
      const metrics = () => fetch(`http://127.0.0.1:${operator.port}/metrics`).then((r) => r.text());
      expect(await metrics()).toContain(`${series} 1`);
      await kubectl(["delete", "chatcluster", "pinned", "-n", NS, "--wait=true", "--timeout=60s"]);
      await waitFor(
        "the series of a deleted ChatCluster removed",
        async () => !(await metrics()).includes(series),
      );
    }),
  );

  it(
    "keeps the operator's ServiceAccount to its own ClusterRoleBindings (the chart's admission policy): no other may be deleted or changed",
    onFailure(async () => {
      const asOperator = ["--as", `system:serviceaccount:${SYSTEM_NS}:${RELEASE}-switchboard-operator`];
      const tokenReviewRole = `${RELEASE}-switchboard-operator-tokenreview`;
      const someone = [{ kind: "ServiceAccount", name: "someone", namespace: NS }];
      /** A ClusterRoleBinding named `name` of `role` to `subjects`, as kubectl reads it. */
      const binding = (name: string, role: string, subjects: unknown[]) =>
        JSON.stringify({
          apiVersion: "rbac.authorization.k8s.io/v1",
          kind: "ClusterRoleBinding",
          metadata: { name },
          roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: role },
          subjects,
        });
      /** The operator's delete of binding `name`, dry run (the admission policy still decides). */
      const deleteAsOperator = (name: string) =>
        run(tools.KUBECTL, [
          `--kubeconfig=${tools.KUBECONFIG}`,
          "delete",
          "clusterrolebinding",
          name,
          "--dry-run=server",
          ...asOperator,
        ]);
      // Someone else's binding, to the very role the operator may bind (so RBAC's escalation check
      // alone would let it through).
      const victim = `sb-op-victim-${suffix}`;
      await kubectl(["apply", "-f", "-"], binding(victim, tokenReviewRole, someone));
      try {
        // RBAC allows the verbs...
        expect(
          (await kubectl(["auth", "can-i", "delete", "clusterrolebindings", ...asOperator])).trim(),
        ).toBe("yes");
        // ...the admission policy refuses them on any binding but switchboard:tokenreview:*.
        const deleted = await deleteAsOperator(victim);
        expect(deleted.code).not.toBe(0);
        expect(deleted.stderr).toContain(
          `manages only the ClusterRoleBindings named switchboard:tokenreview:*, not ${victim}`,
        );
        // A change (server-side apply, as the operator applies): emptying its subjects.
        const patched = await run(
          tools.KUBECTL,
          [
            `--kubeconfig=${tools.KUBECONFIG}`,
            "apply",
            "--server-side",
            "--force-conflicts",
            "--dry-run=server",
            "-f",
            "-",
            ...asOperator,
          ],
          {
            input: binding(victim, tokenReviewRole, []),
          },
        );
        expect(patched.code).not.toBe(0);
        expect(patched.stderr).toContain("ValidatingAdmissionPolicy");
        // Nor a binding of its own name that binds another role (a delete as well).
        const foreign = `switchboard:tokenreview:${NS}:foreign-${suffix}`;
        await kubectl(["apply", "-f", "-"], binding(foreign, "view", someone));
        try {
          const foreignDeleted = await deleteAsOperator(foreign);
          expect(foreignDeleted.code).not.toBe(0);
          expect(foreignDeleted.stderr).toContain(`binds only the ClusterRole ${tokenReviewRole}`);
        } finally {
          await kubectl(["delete", "clusterrolebinding", foreign, "--ignore-not-found"]);
        }
        // Its own kind of binding it may still create and delete (the finalizer's delete is tested above).
        const own = binding(`switchboard:tokenreview:${NS}:nothing`, tokenReviewRole, []);
        const created = await run(
          tools.KUBECTL,
          [`--kubeconfig=${tools.KUBECONFIG}`, "create", "-f", "-", "--dry-run=server", ...asOperator],
          { input: own },
        );
        expect(created.stderr).toBe("");
        expect(created.code).toBe(0);
        // Anyone else (here the admin) is not matched.
        await kubectl(["delete", "clusterrolebinding", victim, "--dry-run=server"]);
      } finally {
        await kubectl(["delete", "clusterrolebinding", victim, "--ignore-not-found"]);
      }
    }),
  );

  it(
    "reconciles on spec and metadata changes, not on its own status writes: live counts changing every 100 ms cost no extra reconciles",
    onFailure(async () => {
      // A poll interval of 5 s: in a 10 s window two polls, a few owned-object events, and nothing
      // else. Before, every status write with new counts was a watch event that ran the next
      // reconcile at once.
      const usual = operator;
      await operator.kill("SIGTERM");
      operator = usual.withOptions({ pollInterval: "5s" });
      await operator.start();
      const farm = new GatewayFarm(
        kube,
        NS,
        "app.kubernetes.io/instance=hot,app.kubernetes.io/component=gateway",
      );
      farm.start();
      let ticker: NodeJS.Timeout | undefined;
      try {
        await kube.create(
          clusterManifest("hot", {
            gateway: {
              autoscaling: {
                enabled: true,
                minReplicas: 1,
                maxReplicas: 2,
                // Far above the counts below: the counts change, the replicas do not.
                targetConnectionsPerPod: 1_000_000,
                stabilizationWindowSeconds: 3,
                drainTimeoutSeconds: 30,
              },
            },
          }),
        );
        await waitReady("hot");
        await waitFor("the fake gateway", async () => farm.pods().length === 1 || undefined);
        let tick = 0;
        ticker = setInterval(() => farm.setAll(1 + (tick++ % 997)), 100);
        // The counts reach the status: the poll refreshes them.
        const before = await waitFor(
          "live counts in the status",
          async () => {
            const c = await getCluster("hot");
            return (c.status?.connections ?? 0) > 0 ? c : undefined;
          },
          15_000,
        );
        const from = Date.now();
        await sleep(10_000);
        const to = Date.now();
        // Every reconcile of the window is exported (spans are flushed every 100 ms).
        await sleep(1_000);
        const reconciles = reconcilesOf("hot", from, to);
        expect(reconciles).toBeGreaterThanOrEqual(1);
        expect(reconciles).toBeLessThanOrEqual(5);
        // The polls still refresh the counts.
        const after = await getCluster("hot");
        expect(after.status?.connections).not.toBe(before.status?.connections);
        expect(after.metadata.resourceVersion).not.toBe(before.metadata.resourceVersion);

        // A spec change is reconciled at once, not at the next poll.
        const changedAt = Date.now();
        await kube.mergePatch(
          { apiVersion: "switchboard.dev/v1alpha1", kind: "ChatCluster", namespace: NS, name: "hot" },
          { spec: { router: { replicas: 1 } } },
        );
        await waitFor(
          "the spec change observed",
          async () => {
            const c = await getCluster("hot");
            return c.status?.observedGeneration === c.metadata.generation && c.metadata.generation === 2
              ? c
              : undefined;
          },
          4_000,
        );
        const router = await kube.get<V1Deployment>({
          apiVersion: "apps/v1",
          kind: "Deployment",
          namespace: NS,
          name: "hot-router",
        });
        expect(router.spec?.replicas).toBe(1);
        expect(Date.now() - changedAt).toBeLessThan(5_000);
      } finally {
        clearInterval(ticker);
        await farm.stop();
        await kubectl(["delete", "chatcluster", "hot", "-n", NS, "--wait=true", "--timeout=60s"]).catch(
          () => "",
        );
        await operator.kill("SIGTERM");
        operator = usual;
        await operator.start();
      }
    }),
    120_000,
  );

  it(
    "reports a Kafka Secret that does not exist as Degraded at the cluster's generation, with a Warning Event",
    onFailure(async () => {
      await kube.create(clusterManifest("nosecret", { kafka: kafkaWithMissingSecret("nosecret") }));
      const cluster = await waitFor(
        "Degraded at its generation",
        async () => {
          const c = await getCluster("nosecret");
          const degraded = condition(c, "Degraded");
          return degraded?.status === "True" &&
            degraded.observedGeneration === c.metadata.generation &&
            c.status?.observedGeneration === c.metadata.generation
            ? c
            : undefined;
        },
        10_000,
      );
      expect(condition(cluster, "Degraded")?.message).toContain("nosecret-kafka-credentials");
      expect(condition(cluster, "Ready")).toMatchObject({ status: "False", reason: "ProvisioningFailed" });
      // Nothing is deployed without its storage.
      expect(await ownedObjects("nosecret")).toEqual([]);
      const events = await waitFor("a Warning Event", async () => {
        const found = (await eventsAbout("nosecret")).filter((e) => e.type === "Warning");
        return found.length > 0 ? found : undefined;
      });
      expect(events.some((e) => e.note.includes("nosecret-kafka-credentials"))).toBe(true);
      await kubectl(["delete", "chatcluster", "nosecret", "-n", NS, "--wait=false"]);
      await waitFor("nosecret deleted", () => gone("nosecret"), 60_000);
    }),
  );

  it(
    "says Provisioning before a new cluster's first provisioning, however long Cassandra takes to answer",
    onFailure(async () => {
      // A Cassandra that accepts connections and never answers: each provisioning attempt waits for
      // the driver's timeout.
      const sockets = new Set<Socket>();
      const silent = createNetServer((socket) => {
        sockets.add(socket);
        socket.on("close", () => sockets.delete(socket));
      });
      await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
      const port = (silent.address() as { port: number }).port;
      try {
        await kube.create(
          clusterManifest("lambda", {
            cassandra: {
              contactPoints: [`127.0.0.1:${port}`],
              keyspace: `op_${suffix}_lambda`,
              replication: { class: "SimpleStrategy", factor: 1 },
            },
          }),
        );
        const created = Date.now();
        const first = await waitFor(
          "a first status",
          async () => {
            const c = await getCluster("lambda");
            return c.status?.observedGeneration === 1 ? c : undefined;
          },
          4_000,
        );
        expect(Date.now() - created).toBeLessThan(4_000);
        expect(sockets.size).toBeGreaterThan(0); // provisioning is under way, waiting
        expect(condition(first, "Ready")).toMatchObject({ status: "False", reason: "Provisioning" });
        expect(condition(first, "Progressing")?.status).toBe("True");
      } finally {
        await kube.delete({
          apiVersion: "switchboard.dev/v1alpha1",
          kind: "ChatCluster",
          namespace: NS,
          name: "lambda",
        });
        await waitFor("lambda deleted", () => gone("lambda"), 60_000);
        for (const socket of sockets) socket.destroy();
        silent.close();
      }
    }),
  );

  it(
    "removes its finalizer when the gateway-gone records cannot be written: a ChatCluster naming a missing Kafka Secret is deleted within 60 s",
    onFailure(async () => {
      // Never ran: no gateway to declare gone, so Kafka is not needed to delete it.
      await kube.create(clusterManifest("orphan", { kafka: kafkaWithMissingSecret("orphan") }));
      await waitFor(
        "orphan's finalizer",
        async () =>
          (await getCluster("orphan")).metadata.finalizers?.includes("switchboard.dev/cleanup") || undefined,
      );
      // Ran, with gateways in its status; then its Kafka credentials went missing (as when a namespace's
      // deletion removes the Secrets first).
      await kube.create(clusterManifest("doomed", { gateway: { replicas: 1 } }));
      await waitReady("doomed");
      await waitFor(
        "doomed's gateway in its status",
        async () => ((await getCluster("doomed")).status?.gateways?.length ?? 0) > 0 || undefined,
      );
      await kube.mergePatch(
        { apiVersion: "switchboard.dev/v1alpha1", kind: "ChatCluster", namespace: NS, name: "doomed" },
        { spec: { kafka: kafkaWithMissingSecret("doomed") } },
      );
      const degraded = await waitFor(
        "doomed Degraded at generation 2",
        async () => {
          const c = await getCluster("doomed");
          return condition(c, "Degraded")?.status === "True" && c.status?.observedGeneration === 2
            ? c
            : undefined;
        },
        30_000,
      );
      expect(degraded.status?.gateways?.length).toBeGreaterThan(0);

      const deletedAt = Date.now();
      await kubectl(["delete", "chatcluster", "orphan", "doomed", "-n", NS, "--wait=false"]);
      await waitFor("orphan deleted", () => gone("orphan"), 60_000);
      await waitFor("doomed deleted", () => gone("doomed"), 60_000 - (Date.now() - deletedAt));
      // What the finalizer owns went with it, and an Event says which records were not written.
      expect(
        await kubectl(["get", "clusterrolebinding", `switchboard:tokenreview:${NS}:doomed`]).catch(
          (e: Error) => e.message,
        ),
      ).toMatch(/NotFound/);
      const skipped = (await eventsAbout("doomed")).filter(
        (e) => e.type === "Warning" && e.reason === "GatewayGoneSkipped",
      );
      expect(skipped).toHaveLength(1);
      expect(skipped[0]?.note).toContain("doomed-gateway-");
    }),
    120_000,
  );

  it(
    "deletes everything it owns when the ChatCluster is deleted",
    onFailure(async () => {
      await kubectl(["delete", "chatcluster", "beta", "-n", NS, "--wait=true", "--timeout=60s"]);
      await waitFor(
        "beta's objects collected",
        async () => (await ownedObjects("beta")).length === 0 || undefined,
        60_000,
      );
      const pods = await kube.list<V1Pod>(
        { apiVersion: "v1", kind: "Pod", namespace: NS },
        "app.kubernetes.io/instance=beta",
      );
      await waitFor(
        "beta's pods gone",
        async () =>
          (
            await kube.list<V1Pod>(
              { apiVersion: "v1", kind: "Pod", namespace: NS },
              "app.kubernetes.io/instance=beta",
            )
          ).items.length === 0 || undefined,
      );
      expect(pods).toBeDefined();
      // The other clusters are untouched.
      expect((await ownedObjects("alpha")).length).toBeGreaterThan(0);
    }),
  );
  it(
    "provisions over TLS when spec.cassandra.tls says so, and never falls back to plaintext",
    onFailure(async () => {
      const base = clusterManifest("ctls");
      const manifest = {
        ...base,
        spec: { ...base.spec, cassandra: { ...base.spec.cassandra, tls: { enabled: true } } },
      };
      await kube.create(manifest);
      // The test node speaks no TLS: the operator's provisioning cannot connect, and says so.
      const c = await waitFor("ctls ProvisioningFailed", async () => {
        const c = await getCluster("ctls");
        return condition(c, "Degraded")?.reason === "ProvisioningFailed" ? c : undefined;
      });
      expect(condition(c, "Degraded")?.message).toContain("connect to");
      expect(condition(c, "Ready")?.status).toBe("False");
      await kubectl(["delete", "chatcluster", "ctls", "-n", NS, "--wait=false"]);
      await waitFor("ctls deleted", () => gone("ctls"), 60_000);
    }),
  );

  it(
    "rolls out no generation whose storage could not be provisioned, and provisions again when the operator's migrations are newer",
    onFailure(async () => {
      const ref = { apiVersion: "switchboard.dev/v1alpha1", kind: "ChatCluster", namespace: NS, name: "upg" };
      await kube.create(clusterManifest("upg", { gateway: { replicas: 1 } }));
      const first = await waitReady("upg");
      expect(first.status?.provisionedSchemaVersion).toBe(SCHEMA_VERSION);
      const router = () =>
        kube.get<V1Deployment>({
          apiVersion: "apps/v1",
          kind: "Deployment",
          namespace: NS,
          name: "upg-router",
        });
      const routerImage = async () => (await router()).spec?.template.spec?.containers[0]?.image;
      expect(await routerImage()).toMatch(/:0\.1\.0$/);

      // A new version in the same change as Cassandra credentials that do not exist (the schema cannot
      // be brought to what it needs; the Deployments alone could be applied): the version is not
      // rolled out, the rest of the change is.
      const missing = { credentialsSecretRef: { name: "upg-cassandra-credentials" } };
      await kube.mergePatch(ref, { spec: { version: "0.2.0", cassandra: missing, router: { replicas: 1 } } });
      await waitFor("upg Degraded at generation 2", async () => {
        const c = await getCluster("upg");
        return condition(c, "Degraded")?.reason === "ProvisioningFailed" && c.status?.observedGeneration === 2
          ? c
          : undefined;
      });
      await waitFor("the router at 1 replica", async () =>
        (await router()).spec?.replicas === 1 ? true : undefined,
      );
      await sleep(2_000); // a reconcile or two more: still the old version
      expect(await routerImage()).toMatch(/:0\.1\.0$/);
      expect(condition(await getCluster("upg"), "Ready")).toMatchObject({
        status: "False",
        reason: "ProvisioningFailed",
      });

      // Storage that works again: the new version goes out.
      await kube.mergePatch(ref, { spec: { cassandra: { credentialsSecretRef: null } } });
      await waitFor("the router at 0.2.0", async () =>
        (await routerImage())?.endsWith(":0.2.0") ? true : undefined,
      );
      await waitReady("upg");

      // A restarted operator (a `helm upgrade`, a failover) knows what was provisioned from the status:
      // a change of replicas alone is applied without provisioning again.
      const provisioned = async () =>
        (await eventsAbout("upg")).filter((e) => e.reason === "Provisioned").length;
      const provisionedBefore = await provisioned();
      expect((await getCluster("upg")).status?.provisionedStorage).toMatch(/^[0-9a-f]{64}$/);
      await operator.kill("SIGTERM");
      await operator.start();
      await kube.mergePatch(ref, { spec: { router: { replicas: 2 } } });
      await waitFor("the router at 2 replicas", async () =>
        (await router()).spec?.replicas === 2 ? true : undefined,
      );
      const afterRestart = await waitReady("upg");
      expect(afterRestart.status?.provisionedGeneration).toBe(afterRestart.metadata.generation);
      expect(await provisioned()).toBe(provisionedBefore);

      // A keyspace last brought to an older version (what an older operator leaves): a restarted
      // operator provisions it again without any change of the spec.
      await kubectl([
        "patch",
        "chatcluster",
        "upg",
        "-n",
        NS,
        "--subresource=status",
        "--type=merge",
        "-p",
        JSON.stringify({ status: { provisionedSchemaVersion: SCHEMA_VERSION - 1 } }),
      ]);
      await operator.kill("SIGTERM");
      await operator.start();
      // (Its status keeps the version it had unless provisioning ran and succeeded.)
      await waitFor("upg provisioned again", async () =>
        (await getCluster("upg")).status?.provisionedSchemaVersion === SCHEMA_VERSION ? true : undefined,
      );
      await kubectl(["delete", "chatcluster", "upg", "-n", NS, "--wait=false"]);
      await waitFor("upg deleted", () => gone("upg"), 60_000);
    }),
  );
});

// --- spec.grpc.tls (ADR 0007) -----------------------------------------------------------------
// The Pods the operator writes mount each serving component's TLS Secret as grpc.tls.dir; without
// cert-manager a GrpcTLS condition says why nothing is issued; with cert-manager's Certificate kind (a
// minimal CRD installed here: cert-manager itself is not, so the test plays its part and sets the
// Certificates' Ready condition) it creates one owned Certificate per component and follows their
// readiness; with provided Secrets (openssl-made) its Drain/Stats channel to the gateways is TLS,
// trusting the gateways' ca.crt, and still carries its token.

const SECURE = "secure";
const TLS_SERVING: ComponentName[] = ["id", "router", "presence", "push", "gateway"];
const OPERATOR_USER = `system:serviceaccount:${SYSTEM_NS}:${RELEASE}-switchboard-operator`;
const pki = new TestPki();

/** The part of cert-manager's certificates.cert-manager.io CRD the operator uses: kind, status. */
const CERTIFICATE_CRD_NAME = "certificates.cert-manager.io";
const CERTIFICATE_CRD = {
  apiVersion: "apiextensions.k8s.io/v1",
  kind: "CustomResourceDefinition",
  metadata: { name: CERTIFICATE_CRD_NAME },
  spec: {
    group: "cert-manager.io",
    scope: "Namespaced",
    names: {
      kind: "Certificate",
      listKind: "CertificateList",
      plural: "certificates",
      singular: "certificate",
    },
    versions: [
      {
        name: "v1",
        served: true,
        storage: true,
        subresources: { status: {} },
        schema: {
          openAPIV3Schema: {
            type: "object",
            properties: {
              spec: { type: "object", "x-kubernetes-preserve-unknown-fields": true },
              status: { type: "object", "x-kubernetes-preserve-unknown-fields": true },
            },
          },
        },
      },
    ],
  },
};

/** The GrpcTLS condition once it has `reason` at the cluster's current generation. */
async function waitGrpcTls(reason: string, timeoutMs = 90_000) {
  return waitFor(
    `GrpcTLS ${reason}`,
    async () => {
      const c = await getCluster(SECURE);
      const cond = c.status?.conditions?.find((x) => x.type === "GrpcTLS");
      return cond?.reason === reason && cond.observedGeneration === c.metadata.generation ? cond : undefined;
    },
    timeoutMs,
  );
}

/** A watch event makes the operator look again now, instead of at its next recheck. */
const nudge = () =>
  kubectl(["annotate", "chatcluster", SECURE, "-n", NS, `test/nudge=${Date.now()}`, "--overwrite"]);

async function certificates(): Promise<Certificate[]> {
  const { items } = await kube.list<Certificate>(
    { apiVersion: "cert-manager.io/v1", kind: "Certificate", namespace: NS },
    `app.kubernetes.io/instance=${SECURE}`,
  );
  return items;
}

async function podSpecs(): Promise<Map<string, V1PodSpec>> {
  const specs = new Map<string, V1PodSpec>();
  for (const kind of ["Deployment", "StatefulSet"] as const) {
    const { items } = await kube.list<V1Deployment | V1StatefulSet>(
      { apiVersion: "apps/v1", kind, namespace: NS },
      `app.kubernetes.io/instance=${SECURE}`,
    );
    for (const w of items)
      if (w.spec?.template.spec)
        specs.set(w.metadata?.labels?.["app.kubernetes.io/component"] ?? "", w.spec.template.spec);
  }
  return specs;
}

/** Whether the operator's ServiceAccount may, in NS (or where `scope` says: `-A`, `-n other`). */
async function canI(verb: string, resource: string, scope = ["-n", NS]): Promise<boolean> {
  const out = await kubectl(["auth", "can-i", verb, resource, ...scope, `--as=${OPERATOR_USER}`]).catch(
    (err: Error) => err.message,
  );
  return out.trim() === "yes";
}

describe("operator: spec.grpc.tls", () => {
  // In this file, with this file's operator: a second operator would reconcile these ChatClusters too
  // (operators watch every namespace), and the two would fight over their token-review bindings.
  beforeAll(async () => {
    // This branch's ChatCluster CRD (it has spec.grpc; the API server would prune it from an older one).
    await installCrd(tools);
    // A run interrupted before its cleanup may have left cert-manager's stand-in CRD behind.
    await kubectl(["delete", "crd", CERTIFICATE_CRD_NAME, "--ignore-not-found", "--wait=true"]);
  });
  afterAll(async () => {
    await kubectl(["delete", "crd", CERTIFICATE_CRD_NAME, "--ignore-not-found", "--wait=false"]).catch(
      () => "",
    );
    pki.close();
  });

  it(
    "without cert-manager: the Pods mount their TLS Secrets all the same, and GrpcTLS says cert-manager is missing",
    onFailure(async () => {
      await kube.create({
        apiVersion: "switchboard.dev/v1alpha1",
        kind: "ChatCluster",
        metadata: { name: SECURE, namespace: NS },
        spec: {
          version: "0.1.0",
          gateway: { replicas: 1 },
          router: { replicas: 1 },
          presence: { replicas: 1 },
          push: { replicas: 1 },
          id: { replicas: 1 },
          sequencer: { replicas: 1 },
          kafka: {
            bootstrapServers: kafkaBrokers,
            topicPrefix: `tls-${suffix}.`,
            topics: { partitions: 1, replicationFactor: 1, retentionHours: 1 },
          },
          cassandra: {
            contactPoints: cassandraPoints,
            keyspace: `tls_${suffix}`,
            replication: { class: "SimpleStrategy", factor: 1 },
          },
          auth: { jwksUrl: "https://auth.example.com/.well-known/jwks.json" },
          grpc: { tls: { enabled: true, issuerRef: { name: "chat-ca" } } },
        },
      } as unknown as ChatCluster);
      const cond = await waitGrpcTls("CertManagerNotInstalled");
      expect(cond.status).toBe("False");
      expect(cond.message).toContain("install cert-manager");
      // Every serving component's Pods mount their Secret and serve TLS with optional client
      // certificates; the sequencer serves no gRPC and gets neither.
      const specs = await podSpecs();
      expect([...specs.keys()].sort()).toEqual([...TLS_SERVING, "sequencer"].sort());
      for (const component of TLS_SERVING) {
        const pod = specs.get(component);
        expect(pod?.volumes).toContainEqual(
          expect.objectContaining({
            name: "grpc-tls",
            secret: expect.objectContaining({ secretName: `${SECURE}-${component}-grpc-tls` }),
          }),
        );
        const container = pod?.containers[0];
        expect(container?.volumeMounts).toContainEqual(
          expect.objectContaining({
            name: "grpc-tls",
            mountPath: "/etc/switchboard/grpc-tls",
            readOnly: true,
          }),
        );
        expect(container?.env).toEqual(
          expect.arrayContaining([
            { name: "SWITCHBOARD_GRPC_TLS_DIR", value: "/etc/switchboard/grpc-tls" },
            { name: "SWITCHBOARD_GRPC_TLS_CLIENT_CERTIFICATE", value: "optional" },
          ]),
        );
      }
      expect(specs.get("sequencer")?.volumes?.some((v) => v.name === "grpc-tls")).toBe(false);
      // The namespace enforces the restricted Pod Security Standard: the Pods were admitted.
      await waitFor("a gateway Pod admitted", async () => {
        const pods = await kubectl([
          "get",
          "pods",
          "-n",
          NS,
          "-l",
          `app.kubernetes.io/instance=${SECURE},app.kubernetes.io/component=gateway`,
          "-o",
          "name",
        ]);
        return pods.trim() !== "" || undefined;
      });
      // And an event tells whoever looks at the cluster.
      await waitFor("CertManagerUnavailable event", async () => {
        const events = await kubectl([
          "get",
          "events",
          "-n",
          NS,
          "--field-selector",
          "reason=CertManagerUnavailable",
          "-o",
          "name",
        ]);
        return events.trim() !== "" || undefined;
      });
    }),
    180_000,
  );

  it(
    "with cert-manager's Certificate kind: one owned Certificate per serving component, and GrpcTLS follows their Ready condition",
    onFailure(async () => {
      await kubectl(["apply", "-f", "-"], JSON.stringify(CERTIFICATE_CRD));
      await kubectl(["wait", "--for=condition=Established", `crd/${CERTIFICATE_CRD_NAME}`, "--timeout=30s"]);
      await nudge();
      const notReady = await waitGrpcTls("CertificatesNotReady");
      expect(notReady.status).toBe("False");
      const cluster = await getCluster(SECURE);
      const made = await certificates();
      expect(made.map((c) => c.metadata?.name).sort()).toEqual(
        TLS_SERVING.map((c) => `${SECURE}-${c}-grpc-tls`).sort(),
      );
      for (const certificate of made) {
        const component = certificate.metadata?.labels?.["app.kubernetes.io/component"] as ComponentName;
        expect(certificate.metadata?.ownerReferences).toEqual([
          expect.objectContaining({
            kind: "ChatCluster",
            name: SECURE,
            uid: cluster.metadata.uid,
            controller: true,
          }),
        ]);
        expect(certificate.spec).toMatchObject({
          secretName: `${SECURE}-${component}-grpc-tls`,
          uris: [`switchboard://role:${component}`],
          usages: ["digital signature", "server auth", "client auth"],
          // Defaulted by the ChatCluster CRD: a namespaced cert-manager Issuer.
          issuerRef: { name: "chat-ca", kind: "Issuer", group: "cert-manager.io" },
        });
        expect(certificate.spec.dnsNames).toContain(`${SECURE}-${component}.${NS}.svc.cluster.local`);
      }
      expect(notReady.message).toContain(`${SECURE}-gateway-grpc-tls (not issued yet)`);
      // cert-manager issues them (this test plays its part): GrpcTLS turns True.
      for (const certificate of made)
        await kubectl([
          "patch",
          "certificate",
          certificate.metadata?.name ?? "",
          "-n",
          NS,
          "--subresource=status",
          "--type=merge",
          "-p",
          JSON.stringify({ status: { conditions: [{ type: "Ready", status: "True", reason: "Ready" }] } }),
        ]);
      await nudge();
      expect((await waitGrpcTls("CertificatesReady")).status).toBe("True");
      // Least privilege: it writes and prunes Certificates, and reads and changes nothing else of them.
      expect(await canI("create", "certificates.cert-manager.io")).toBe(true);
      expect(await canI("patch", "certificates.cert-manager.io")).toBe(true);
      expect(await canI("delete", "certificates.cert-manager.io")).toBe(true);
      expect(await canI("watch", "certificates.cert-manager.io")).toBe(false);
      expect(await canI("update", "certificates.cert-manager.io")).toBe(false);
      expect(await canI("create", "certificaterequests.cert-manager.io")).toBe(false);
      expect(await canI("create", "issuers.cert-manager.io")).toBe(false);
      expect(await canI("list", "secrets")).toBe(false);
    }),
    180_000,
  );

  it(
    "with provided Secrets: the Certificates are pruned, GrpcTLS checks the Secrets, and Drain/Stats go over TLS with the operator's token",
    onFailure(async () => {
      await patchSpec(SECURE, { grpc: { tls: { issuerRef: null } } });
      const missing = await waitGrpcTls("SecretsMissing");
      expect(missing.message).toContain(`${SECURE}-gateway-grpc-tls (not found)`);
      await waitFor("Certificates pruned", async () => (await certificates()).length === 0 || undefined);

      // The Secrets, as another PKI would provide them: the cluster's CA signs each role's certificate.
      const ca = pki.ca("cluster-ca");
      const gateway = pki.issue(ca, { uri: "switchboard://role:gateway" });
      const farm = new GatewayFarm(
        kube,
        NS,
        `app.kubernetes.io/instance=${SECURE},app.kubernetes.io/component=gateway`,
        300,
        // As the gateways serve with grpc.tls.clientCertificate=optional: TLS, no certificate required.
        () =>
          grpc.ServerCredentials.createSsl(
            Buffer.from(ca.cert),
            [{ cert_chain: Buffer.from(gateway.cert), private_key: Buffer.from(gateway.key) }],
            false,
          ),
      );
      farm.initialConnections = 21;
      farm.start();
      try {
        for (const component of TLS_SERVING) {
          const identity =
            component === "gateway" ? gateway : pki.issue(ca, { uri: `switchboard://role:${component}` });
          // Partly first, for the gateway: a Secret without ca.crt is not whole.
          const data: Record<string, string> = { "tls.crt": identity.cert, "tls.key": identity.key };
          if (component !== "gateway") data["ca.crt"] = ca.cert;
          await kube.create({
            apiVersion: "v1",
            kind: "Secret",
            metadata: { name: `${SECURE}-${component}-grpc-tls`, namespace: NS },
            type: "kubernetes.io/tls",
            data: Object.fromEntries(
              Object.entries(data).map(([k, v]) => [k, Buffer.from(v).toString("base64")]),
            ),
          } as never);
        }
        await nudge();
        await waitFor("GrpcTLS names the gateway Secret's missing ca.crt", async () => {
          const c = await getCluster(SECURE);
          const cond = c.status?.conditions?.find((x) => x.type === "GrpcTLS");
          return cond?.message?.includes(`${SECURE}-gateway-grpc-tls (no ca.crt)`) &&
            !cond.message.includes("not found")
            ? cond
            : undefined;
        });
        await kubectl([
          "patch",
          "secret",
          `${SECURE}-gateway-grpc-tls`,
          "-n",
          NS,
          "--type=merge",
          "-p",
          JSON.stringify({ data: { "ca.crt": Buffer.from(ca.cert).toString("base64") } }),
        ]);
        await nudge();
        expect((await waitGrpcTls("CertificatesReady")).status).toBe("True");
        // Stats reached the TLS gateway (the status counts its connections), with the operator's token.
        await waitFor("status counts the TLS gateway's connections", async () => {
          const c = await getCluster(SECURE);
          return c.status?.connections === 21 || undefined;
        });
        expect(farm.authorizations.length).toBeGreaterThan(0);
        expect(farm.authorizations.every((a) => a.startsWith("Bearer "))).toBe(true);
      } finally {
        await farm.stop();
      }
    }),
    180_000,
  );
});

describe("operator: confined to listed namespaces (watchNamespaces)", () => {
  // Last in this file: the chart is upgraded to Roles in NS alone and the operator restarted with
  // --watch-namespaces, as the chart runs it then.
  const OTHER_NS = `sb-op-other-${suffix}`;
  afterAll(async () => {
    await kubectl(["delete", "namespace", OTHER_NS, "--wait=false"]).catch(() => "");
  });

  it(
    "manages its namespaces' ChatClusters with Roles there alone, and leaves another namespace's untouched",
    onFailure(async () => {
      await operator.kill("SIGTERM");
      await kubectl(["create", "namespace", OTHER_NS]);
      const upgraded = await helm(tools, [
        "upgrade",
        RELEASE,
        CHART_DIR,
        "--namespace",
        SYSTEM_NS,
        "--reuse-values",
        "--set",
        `watchNamespaces={${NS}}`,
        "--wait",
        "--timeout",
        "120s",
      ]);
      expect(upgraded.stderr).toBe("");
      expect(upgraded.code).toBe(0);
      // Its namespaced rights are NS's Role: nothing across the cluster, nothing in another namespace.
      expect(await canI("list", "deployments", ["-n", NS])).toBe(true);
      expect(await canI("get", "secrets", ["-n", NS])).toBe(true);
      for (const scope of [["-A"], ["-n", OTHER_NS]]) {
        expect(await canI("list", "deployments", scope)).toBe(false);
        expect(await canI("watch", "chatclusters.switchboard.dev", scope)).toBe(false);
        expect(await canI("get", "secrets", scope)).toBe(false);
      }
      expect(await canI("create", "clusterrolebindings", ["-A"])).toBe(true);

      operator = operator.withOptions({ watchNamespaces: [NS] });
      await operator.start();
      await kube.create(clusterManifest("elsewhere", {}, OTHER_NS));
      await kube.create(clusterManifest("confined"));
      const confined = await waitReady("confined");
      expect(confined.metadata.finalizers).toContain("switchboard.dev/cleanup");
      expect((await ownedObjects("confined")).map((o) => o.kind)).toContain("Deployment");
      // Reconciled within the second after its creation: had the operator meant to touch the other,
      // it would have by now. It has no finalizer, no status, and nothing was created beside it.
      const elsewhere = await kube.get<ChatCluster>({
        apiVersion: "switchboard.dev/v1alpha1",
        kind: "ChatCluster",
        namespace: OTHER_NS,
        name: "elsewhere",
      });
      expect(elsewhere.metadata.finalizers ?? []).toEqual([]);
      expect(elsewhere.status).toBeUndefined();
      expect(
        await kubectl(["get", "deployments,configmaps,services", "-n", OTHER_NS, "-o", "name"]),
      ).not.toContain("elsewhere");
      // No call of its was refused: it lists and watches where its Roles are.
      expect(operator.log).not.toMatch(/forbidden/i);
    }),
    180_000,
  );
});
