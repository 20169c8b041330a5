import type {
  KubernetesObject,
  V1ConfigMap,
  V1Container,
  V1Deployment,
  V1PodDisruptionBudget,
  V1PodSpec,
  V1PodTemplateSpec,
  V1Service,
  V1StatefulSet,
} from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import { METHOD_RULES } from "../../internal/grpc-auth/policy.js";
import { parseIssuers } from "../../internal/lib/auth.js";
import { type Config, envName, loadConfig, settingNames } from "../../internal/lib/config.js";
import { type ChatCluster, type ChatClusterSpec, COMPONENTS, type ComponentName } from "../api/v1alpha1.js";
import { refusedSettings } from "./config.js";
import { type DesiredInputs, desiredObjects } from "./desired.js";
import { isLabelValue } from "./names.js";
import { GRPC_CALLERS } from "./network.js";
import { ownedByOperator } from "./settings.js";
import { defaultResources } from "./workloads.js";

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
  presence: { replicas: 3, heartbeatIntervalSeconds: 5, offlineAfterSeconds: 30 },
  push: { replicas: 1, webhook: { url: "https://push.example.com/hook" } },
  id: { replicas: 3 },
  sequencer: component,
  kafka: {
    bootstrapServers: ["kafka-0.kafka:9092", "kafka-1.kafka:9092"],
    topicPrefix: "chat.",
    tls: { enabled: true, secretRef: { name: "kafka-tls" } },
    sasl: { mechanism: "scram-sha-512", secretRef: { name: "kafka-user" } },
    topics: { partitions: 24, replicationFactor: 3, retentionHours: 72 },
  },
  cassandra: {
    contactPoints: ["cassandra:9042"],
    datacenter: "dc1",
    keyspace: "chat",
    replication: { class: "NetworkTopologyStrategy", factor: 3 },
    consistency: "LOCAL_QUORUM",
    credentialsSecretRef: { name: "cassandra-user" },
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
/** The same cluster without Kafka TLS, SASL or Cassandra credentials. */
const { tls: _tls, sasl: _sasl, ...plainKafka } = spec.kafka;
const { credentialsSecretRef: _credentials, ...plainCassandra } = spec.cassandra;
const plain: ChatCluster = { ...cluster, spec: { ...spec, kafka: plainKafka, cassandra: plainCassandra } };

const inputs: DesiredInputs = { gatewayReplicas: 5, kafkaTlsKeys: ["ca.crt", "tls.crt", "tls.key"] };

/** A NetworkPolicy as JSON (client-node's model calls `from` `_from`). */
interface Selector {
  matchLabels?: Record<string, string>;
}
interface NetworkPolicyJson {
  spec?: {
    podSelector?: Selector;
    policyTypes?: string[];
    ingress?: Array<{
      from?: Array<{ podSelector?: Selector; namespaceSelector?: Selector }>;
      ports?: unknown[];
    }>;
  };
}

const find = <T>(objects: KubernetesObject[], kind: string, name: string) =>
  objects.find((o) => o.kind === kind && o.metadata?.name === name) as T | undefined;

const STATEFUL: readonly ComponentName[] = ["id", "presence"];
const STORAGE: readonly ComponentName[] = ["gateway", "router", "presence", "push", "sequencer"];

function podSpec(objects: KubernetesObject[], c: ComponentName): V1PodSpec {
  const kind = STATEFUL.includes(c) ? "StatefulSet" : "Deployment";
  const w = find<V1Deployment | V1StatefulSet>(objects, kind, `chat-${c}`);
  if (!w?.spec?.template.spec) throw new Error(`no ${kind} chat-${c}`);
  return w.spec.template.spec;
}
const containerOf = (objects: KubernetesObject[], c: ComponentName): V1Container =>
  podSpec(objects, c).containers[0]!;

const POD = { name: "chat-presence-1", namespace: "prod", ip: "10.244.0.7", index: "1" };
const SECRETS: Record<string, Record<string, string>> = {
  "kafka-user": { username: "kafka-alice", password: "kafka-pw" },
  "cassandra-user": { username: "cass-bob", password: "cass-pw" },
};

/**
 * The environment a container starts with, as the kubelet builds it: the ConfigMap (envFrom), then
 * `env` in order, with downward API fields of POD, the Secrets above, and $(VAR) expanded from the
 * variables declared before.
 */
function containerEnv(objects: KubernetesObject[], c: ComponentName): Record<string, string> {
  const cm = find<V1ConfigMap>(objects, "ConfigMap", "chat-config");
  const container = containerOf(objects, c);
  expect(container.envFrom).toEqual([{ configMapRef: { name: "chat-config" } }]);
  const env: Record<string, string> = { ...cm?.data };
  const fields: Record<string, string> = {
    "metadata.name": POD.name,
    "metadata.namespace": POD.namespace,
    "status.podIP": POD.ip,
    "metadata.labels['apps.kubernetes.io/pod-index']": POD.index,
  };
  for (const e of container.env ?? []) {
    let value: string | undefined;
    if (e.value !== undefined)
      value = e.value.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, v) => env[v] ?? m);
    else if (e.valueFrom?.fieldRef) value = fields[e.valueFrom.fieldRef.fieldPath];
    else if (e.valueFrom?.secretKeyRef)
      value = SECRETS[e.valueFrom.secretKeyRef.name ?? ""]?.[e.valueFrom.secretKeyRef.key];
    if (value === undefined) throw new Error(`${c}: cannot resolve env ${JSON.stringify(e)}`);
    env[e.name] = value;
  }
  return env;
}
const configOf = (objects: KubernetesObject[], c: ComponentName): Config =>
  loadConfig(containerEnv(objects, c));

describe("desiredObjects", () => {
  const objects = desiredObjects(cluster, inputs);

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

  it("runs id and presence as StatefulSets and the others as Deployments, one per component", () => {
    const workloads = objects
      .filter((o) => o.kind === "Deployment" || o.kind === "StatefulSet")
      .map((o) => `${o.kind}/${o.metadata?.name}`)
      .sort();
    expect(workloads).toEqual([
      "Deployment/chat-gateway",
      "Deployment/chat-push",
      "Deployment/chat-router",
      "Deployment/chat-sequencer",
      "StatefulSet/chat-id",
      "StatefulSet/chat-presence",
    ]);
    for (const c of COMPONENTS) expect(containerOf(objects, c).args).toEqual(["start", "--role", c]);
    const presence = find<V1StatefulSet>(objects, "StatefulSet", "chat-presence");
    expect(presence?.spec).toMatchObject({
      replicas: 3,
      serviceName: "chat-presence",
      podManagementPolicy: "Parallel",
      selector: {
        matchLabels: {
          "app.kubernetes.io/name": "switchboard",
          "app.kubernetes.io/instance": "chat",
          "app.kubernetes.io/component": "presence",
        },
      },
    });
    expect(find<V1StatefulSet>(objects, "StatefulSet", "chat-id")?.spec?.serviceName).toBe("chat-id");
  });

  it("gives the gateway the autoscaler's replicas and the others their spec's", () => {
    expect(find<V1Deployment>(objects, "Deployment", "chat-gateway")?.spec?.replicas).toBe(5);
    expect(find<V1Deployment>(objects, "Deployment", "chat-router")?.spec?.replicas).toBe(2);
    expect(find<V1StatefulSet>(objects, "StatefulSet", "chat-id")?.spec?.replicas).toBe(3);
    expect(find<V1Deployment>(objects, "Deployment", "chat-push")?.spec?.replicas).toBe(1);
  });

  it("rolls every Deployment new-before-old, one Pod at a time (a single push Pod is never gone)", () => {
    const strategy = (name: string) => find<V1Deployment>(objects, "Deployment", name)?.spec?.strategy;
    for (const name of ["chat-gateway", "chat-router", "chat-sequencer", "chat-push"])
      expect(strategy(name), name).toEqual({
        type: "RollingUpdate",
        rollingUpdate: { maxSurge: 1, maxUnavailable: 0 },
      });
    expect(find<V1Deployment>(objects, "Deployment", "chat-sequencer")?.spec?.replicas).toBe(2);
  });

  it("adds a disruption budget only where there are two replicas or more", () => {
    const pdbs = objects
      .filter((o) => o.kind === "PodDisruptionBudget")
      .map((o) => o.metadata?.name)
      .sort();
    expect(pdbs).toEqual(["chat-gateway", "chat-id", "chat-presence", "chat-router", "chat-sequencer"]);
    // Unready Pods (all of them, in a storage outage) may be evicted: a node drain never waits on them.
    for (const name of pdbs)
      expect(find<V1PodDisruptionBudget>(objects, "PodDisruptionBudget", name ?? "")?.spec).toEqual({
        maxUnavailable: 1,
        selector: {
          matchLabels: {
            "app.kubernetes.io/name": "switchboard",
            "app.kubernetes.io/instance": "chat",
            "app.kubernetes.io/component": name?.replace("chat-", ""),
          },
        },
        unhealthyPodEvictionPolicy: "AlwaysAllow",
      });
    const one = desiredObjects({ ...cluster, spec: { ...spec, sequencer: { replicas: 1 } } }, inputs);
    expect(find(one, "PodDisruptionBudget", "chat-sequencer")).toBeUndefined();
  });

  it("runs every Pod under the restricted Pod Security Standard", () => {
    const templates = objects
      .filter((o) => o.kind === "Deployment" || o.kind === "StatefulSet")
      .map((o) => (o as V1Deployment).spec?.template as V1PodTemplateSpec);
    expect(templates).toHaveLength(6);
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

  it("probes liveness only after a start, and kills a container only when it stays silent for long", () => {
    const containers = objects
      .filter((o) => o.kind === "Deployment" || o.kind === "StatefulSet")
      .flatMap((o) => (o as V1Deployment).spec?.template.spec?.containers ?? []);
    expect(containers).toHaveLength(6);
    for (const c of containers) {
      // A slow start is covered by the startup probe, never counted as liveness failures.
      expect(c.startupProbe?.httpGet?.path).toBe("/healthz");
      expect(
        (c.startupProbe?.periodSeconds ?? 10) * (c.startupProbe?.failureThreshold ?? 3),
      ).toBeGreaterThanOrEqual(60);
      // A busy process answering late is not a dead one.
      expect(c.livenessProbe?.httpGet?.path).toBe("/healthz");
      expect(c.livenessProbe?.timeoutSeconds ?? 1).toBeGreaterThanOrEqual(5);
      expect(c.livenessProbe?.failureThreshold ?? 3).toBeGreaterThanOrEqual(3);
      expect(c.readinessProbe?.httpGet?.path).toBe("/readyz");
      // On the port the Service sends clients to, not the internal one.
      for (const probe of [c.startupProbe, c.livenessProbe, c.readinessProbe])
        expect(probe?.httpGet?.port).toBe("http");
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
      tls: true,
      saslMechanism: "scram-sha-512",
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
    // /metrics on the internal port (9091), which no Service exposes.
    expect(config.http).toMatchObject({ host: "0.0.0.0", port: 8080, internalPort: 9091 });
    expect(config.grpc.port).toBe(9090);
    // Gateways replaced by a rolling update drain like a scale-down: min(10 s, drain timeout / 2).
    expect(config.gateway.shutdownDrainMs).toBe(10_000);
    // Without TLS or SASL in the spec, the ConfigMap says so.
    const none = loadConfig(
      find<V1ConfigMap>(desiredObjects(plain, inputs), "ConfigMap", "chat-config")?.data,
    );
    expect(none.kafka).toMatchObject({ tls: false, saslMechanism: "none" });
    // No OTLP endpoint in the spec: the services make no span.
    expect(config.tracing.enabled).toBe(false);
  });

  it("passes the spec's settings into every container when the services accept them all", () => {
    const settings = {
      "gateway.connectionsMax": "25000",
      "auth.allowedOrigins": "https://app.example.com",
      "tracing.sampleRatio": "0.05",
    };
    const tuned: ChatCluster = { ...cluster, spec: { ...spec, settings } };
    const objects = desiredObjects(tuned, inputs);
    for (const c of COMPONENTS) {
      const config = configOf(objects, c);
      expect(config.gateway.connectionsMax, c).toBe(25_000);
      expect(config.auth.allowedOrigins, c).toEqual(["https://app.example.com"]);
      expect(config.tracing.sampleRatio, c).toBe(0.05);
    }
    expect(refusedSettings(tuned)).toEqual([]);
    expect(refusedSettings(cluster)).toEqual([]);
  });

  it("refuses a change of the settings whole when one is refused, keeping those the ConfigMap holds", () => {
    const before = { "gateway.connectionsMax": "25000", "auth.allowedOrigins": "https://app.example.com" };
    const running = desiredObjects({ ...cluster, spec: { ...spec, settings: before } }, inputs);
    const current = find<V1ConfigMap>(running, "ConfigMap", "chat-config")?.data ?? {};
    const mistaken: ChatCluster = {
      ...cluster,
      spec: {
        ...spec,
        settings: {
          "gateway.connectionsMax": "30000",
          "tracing.sampleRatio": "0.05",
          "kafka.partitions": "3",
          "gateway.nope": "1",
          "gateway.frameBytesMax": "a lot",
        },
      },
    };
    const objects = desiredObjects(mistaken, { ...inputs, currentConfig: current });
    for (const c of COMPONENTS) {
      const config = configOf(objects, c);
      // What ran before runs on: the origins kept (their default admits every origin).
      expect(config.gateway.connectionsMax, c).toBe(25_000);
      expect(config.auth.allowedOrigins, c).toEqual(["https://app.example.com"]);
      expect(config.tracing.sampleRatio, c).toBe(loadConfig({}).tracing.sampleRatio);
      // The operator's own settings stay its own.
      expect(config.kafka.partitions, c).toBe(24);
    }
    // Nothing changed, so nothing rolls.
    expect(find<V1ConfigMap>(objects, "ConfigMap", "chat-config")?.data).toEqual(current);
    const refused = refusedSettings(mistaken);
    expect(refused).toHaveLength(3);
    expect(refused[0]).toMatch(/^gateway\.frameBytesMax: invalid configuration/);
    expect(refused[1]).toMatch(/^gateway\.nope: unknown configuration key/);
    expect(refused[2]).toMatch(/^kafka\.partitions: set by the operator/);
    // A first ConfigMap (none yet) takes none of them.
    const fresh = configOf(desiredObjects(mistaken, inputs), "gateway");
    expect(fresh.gateway.connectionsMax).toBe(loadConfig({}).gateway.connectionsMax);
  });

  it("refuses settings that do not fit together, though each fits alone", () => {
    const tuned: ChatCluster = {
      ...cluster,
      // Each fits the other's default, not the other: 12 × 108,000 + 3 KiB = 1,299,072 > 1,210,000.
      spec: {
        ...spec,
        settings: {
          "gateway.bodyCharsMax": "108000",
          "gateway.frameBytesMax": "1210000",
          "gateway.connectionsMax": "25000",
        },
      },
    };
    const config = configOf(desiredObjects(tuned, inputs), "gateway");
    expect(config.gateway.bodyCharsMax).toBe(loadConfig({}).gateway.bodyCharsMax);
    expect(config.gateway.connectionsMax).toBe(loadConfig({}).gateway.connectionsMax);
    expect(refusedSettings(tuned)).toEqual([expect.stringMatching(/^together: .*frameBytesMax/)]);
    // With a frame limit that fits, all are taken.
    const fitting: ChatCluster = {
      ...cluster,
      spec: { ...spec, settings: { ...tuned.spec.settings, "gateway.frameBytesMax": "1400000" } },
    };
    expect(configOf(desiredObjects(fitting, inputs), "gateway").gateway.bodyCharsMax).toBe(108_000);
    expect(refusedSettings(fitting)).toEqual([]);
  });

  it("lets the spec's settings name no setting the operator sets (every one it sets is among its own)", () => {
    const dotted = new Map(settingNames().map((name) => [envName(name.split(".")), name]));
    for (const c of COMPONENTS) {
      const set = Object.keys(containerEnv(objects, c)).filter((name) => dotted.has(name));
      expect(set.length, c).toBeGreaterThan(20);
      for (const name of set) expect(ownedByOperator(dotted.get(name)!), `${c}: ${name}`).toBe(true);
    }
  });

  it("passes several token issuers, each with its JWKS URL, as auth.issuers, and the clock leeway", () => {
    const multi: ChatCluster = {
      ...cluster,
      spec: {
        ...spec,
        auth: {
          issuers: [
            { issuer: "https://a.example", jwksUrl: "https://a.example/jwks?tenant=a" },
            { issuer: "b", jwksUrl: "https://b.example/keys" },
          ],
          audience: "chat",
          clockSkewSeconds: 30,
        },
      },
    };
    const config = loadConfig(
      find<V1ConfigMap>(desiredObjects(multi, inputs), "ConfigMap", "chat-config")?.data ?? {},
    );
    expect(config.auth).toMatchObject({ jwksUrl: "", issuer: "", audience: "chat", clockSkewSeconds: 30 });
    expect([...parseIssuers(config.auth.issuers)].map(([iss, url]) => [iss, url.href])).toEqual([
      ["https://a.example", "https://a.example/jwks?tenant=a"],
      ["b", "https://b.example/keys"],
    ]);
  });

  it("turns tracing on, with the OTLP endpoint, when the spec names one", () => {
    const traced: ChatCluster = {
      ...cluster,
      spec: {
        ...spec,
        observability: { ...spec.observability, otlp: { endpoint: "http://otel-collector:4318" } },
      },
    };
    const data = find<V1ConfigMap>(desiredObjects(traced, inputs), "ConfigMap", "chat-config")?.data ?? {};
    expect(data.OTEL_EXPORTER_OTLP_ENDPOINT).toBe("http://otel-collector:4318");
    expect(loadConfig(data).tracing.enabled).toBe(true);
  });

  it("passes the spec's log level to every service (info under a CRD that predates it)", () => {
    const data = (c: ChatCluster) =>
      loadConfig(find<V1ConfigMap>(desiredObjects(c, inputs), "ConfigMap", "chat-config")?.data);
    const { logLevel: _none, ...withoutLevel } = spec.observability;
    expect(data({ ...cluster, spec: { ...spec, observability: withoutLevel } }).log.level).toBe("info");
    const debug: ChatCluster = {
      ...cluster,
      spec: { ...spec, observability: { ...spec.observability, logLevel: "debug" } },
    };
    expect(data(debug).log.level).toBe("debug");
  });

  it("publishes the sequenced log only while a backend client may stream events", () => {
    const data = (c: ChatCluster) =>
      loadConfig(find<V1ConfigMap>(desiredObjects(c, inputs), "ConfigMap", "chat-config")?.data);
    const withClients = (clients: NonNullable<ChatCluster["spec"]["api"]>): ChatCluster => ({
      ...cluster,
      spec: { ...spec, api: clients },
    });
    expect(data(withClients({ clients: [] })).kafka.publishSequenced).toBe(false);
    const publisher = {
      name: "billing",
      serviceAccount: { namespace: "b", name: "b" },
      permissions: ["publish"],
    };
    expect(data(withClients({ clients: [publisher] })).kafka.publishSequenced).toBe(false);
    const archiver = {
      name: "archive",
      serviceAccount: { namespace: "a", name: "a" },
      permissions: ["events"],
    };
    expect(data(withClients({ clients: [publisher, archiver] })).kafka.publishSequenced).toBe(true);
  });

  it("names every component's headless Service, and each presence shard's Pod, as gRPC targets", () => {
    const config = loadConfig(find<V1ConfigMap>(objects, "ConfigMap", "chat-config")?.data);
    expect(config.cluster).toEqual({
      idTarget: "dns:///chat-id.prod.svc.cluster.local:9090",
      routerTarget: "dns:///chat-router.prod.svc.cluster.local:9090",
      pushTarget: "dns:///chat-push.prod.svc.cluster.local:9090",
      // Shard order is ordinal order.
      presenceTargets: [
        "dns:///chat-presence-0.chat-presence.prod.svc.cluster.local:9090",
        "dns:///chat-presence-1.chat-presence.prod.svc.cluster.local:9090",
        "dns:///chat-presence-2.chat-presence.prod.svc.cluster.local:9090",
      ],
      presenceShard: 0,
    });
  });

  it("keeps every credential out of the ConfigMap", () => {
    const data = find<V1ConfigMap>(objects, "ConfigMap", "chat-config")?.data ?? {};
    for (const key of Object.keys(data)) expect(key).not.toMatch(/USERNAME|PASSWORD|TLS_.*FILE/);
    const values = Object.values(data).join("\n");
    for (const secret of Object.values(SECRETS).flatMap((s) => Object.values(s)))
      expect(values).not.toContain(secret);
  });

  it("rolls the Pods when the configuration changes, and only then", () => {
    const hash = (objs: KubernetesObject[], c: ComponentName = "router") =>
      (STATEFUL.includes(c)
        ? find<V1StatefulSet>(objs, "StatefulSet", `chat-${c}`)
        : find<V1Deployment>(objs, "Deployment", `chat-${c}`)
      )?.spec?.template.metadata?.annotations?.["switchboard.dev/config-hash"];
    const same = desiredObjects(cluster, { ...inputs, gatewayReplicas: 2 });
    const changed = desiredObjects(
      { ...cluster, spec: { ...spec, presence: { ...spec.presence, offlineAfterSeconds: 60 } } },
      inputs,
    );
    expect(hash(same)).toBe(hash(objects));
    expect(hash(changed)).not.toBe(hash(objects));
    // Presence replicas are the shard list of every Pod: changing them rolls everything.
    const resharded = desiredObjects(
      { ...cluster, spec: { ...spec, presence: { ...spec.presence, replicas: 4 } } },
      inputs,
    );
    for (const c of COMPONENTS) {
      expect(hash(objects, c)).toBe(hash(objects));
      expect(hash(resharded, c)).not.toBe(hash(objects, c));
    }
  });

  it("gives gateways their Pod name as routing id, their Pod IP as advertised address, and a drain grace", () => {
    const gw = containerOf(objects, "gateway");
    expect(gw.env).toContainEqual({
      name: "SWITCHBOARD_GATEWAY_ID",
      valueFrom: { fieldRef: { fieldPath: "metadata.name" } },
    });
    // Dependent env expansion: POD_IP is declared before the variable that refers to it.
    const names = (gw.env ?? []).map((e) => e.name);
    expect(gw.env).toContainEqual({ name: "POD_IP", valueFrom: { fieldRef: { fieldPath: "status.podIP" } } });
    expect(gw.env).toContainEqual({ name: "SWITCHBOARD_GATEWAY_ADVERTISE_ADDRESS", value: "$(POD_IP):9090" });
    expect(names.indexOf("POD_IP")).toBeLessThan(names.indexOf("SWITCHBOARD_GATEWAY_ADVERTISE_ADDRESS"));
    const config = configOf(objects, "gateway");
    expect(config.gateway).toMatchObject({ id: POD.name, advertiseAddress: "10.244.0.7:9090" });
    expect(podSpec(objects, "gateway").terminationGracePeriodSeconds).toBe(150);
    for (const c of COMPONENTS)
      if (c !== "gateway") expect(configOf(objects, c).gateway.advertiseAddress, c).toBe("");
  });

  it("gives id Pods their ordinal as worker id and presence Pods theirs as shard", () => {
    const ordinal = { fieldRef: { fieldPath: "metadata.labels['apps.kubernetes.io/pod-index']" } };
    expect(containerOf(objects, "id").env).toContainEqual({
      name: "SWITCHBOARD_ID_WORKER_ID",
      valueFrom: ordinal,
    });
    expect(containerOf(objects, "presence").env).toContainEqual({
      name: "SWITCHBOARD_CLUSTER_PRESENCE_SHARD",
      valueFrom: ordinal,
    });
    expect(configOf(objects, "id").id.workerId).toBe(1);
    expect(configOf(objects, "presence").cluster.presenceShard).toBe(1);
    for (const c of COMPONENTS) {
      const env = (containerOf(objects, c).env ?? []).map((e) => e.name);
      expect(env.includes("SWITCHBOARD_ID_WORKER_ID"), c).toBe(c === "id");
      expect(env.includes("SWITCHBOARD_CLUSTER_PRESENCE_SHARD"), c).toBe(c === "presence");
    }
  });

  it("hands storage credentials to the components that use storage, from their Secrets", () => {
    for (const c of STORAGE) {
      const container = containerOf(objects, c);
      for (const [name, secret, key] of [
        ["SWITCHBOARD_KAFKA_SASL_USERNAME", "kafka-user", "username"],
        ["SWITCHBOARD_KAFKA_SASL_PASSWORD", "kafka-user", "password"],
        ["SWITCHBOARD_CASSANDRA_USERNAME", "cassandra-user", "username"],
        ["SWITCHBOARD_CASSANDRA_PASSWORD", "cassandra-user", "password"],
      ] as const)
        expect(container.env, `${c} ${name}`).toContainEqual({
          name,
          valueFrom: { secretKeyRef: { name: secret, key } },
        });
      // The Kafka TLS Secret, mounted read-only, named by the file settings.
      expect(container.volumeMounts).toContainEqual({
        name: "kafka-tls",
        mountPath: "/etc/switchboard/kafka-tls",
        readOnly: true,
      });
      expect(podSpec(objects, c).volumes).toContainEqual({
        name: "kafka-tls",
        secret: { secretName: "kafka-tls" },
      });
      const config = configOf(objects, c);
      expect(config.kafka, c).toMatchObject({
        tls: true,
        tlsCaFile: "/etc/switchboard/kafka-tls/ca.crt",
        tlsCertFile: "/etc/switchboard/kafka-tls/tls.crt",
        tlsKeyFile: "/etc/switchboard/kafka-tls/tls.key",
        saslMechanism: "scram-sha-512",
        saslUsername: "kafka-alice",
        saslPassword: "kafka-pw",
      });
      expect(config.cassandra, c).toMatchObject({ username: "cass-bob", password: "cass-pw" });
    }
  });

  it("mounts the push Pods' provider keys (webhook, FCM, APNs, VAPID) from their Secrets and sets the providers' settings, in push Pods only", () => {
    const withPush: ChatCluster = {
      ...cluster,
      spec: {
        ...spec,
        push: {
          replicas: 1,
          webhook: { url: "https://push.example.com/hook", secretRef: { name: "hook" } },
          fcm: { secretRef: { name: "firebase", key: "sa.json" } },
          apns: {
            secretRef: { name: "apple" },
            keyId: "ABC123DEFG",
            teamId: "DEF123GHIJ",
            topic: "com.example.chat",
            environment: "development",
          },
          webpush: {
            secretRef: { name: "vapid" },
            vapidPublicKey: "BPublicKey",
            subject: "mailto:ops@example.com",
          },
        },
      },
    };
    const pushObjects = desiredObjects(withPush, inputs);
    expect(podSpec(pushObjects, "push").volumes).toContainEqual({
      name: "push-credentials",
      projected: {
        sources: [
          { secret: { name: "hook", items: [{ key: "signing", path: "webhook.secret" }] } },
          { secret: { name: "firebase", items: [{ key: "sa.json", path: "fcm-service-account.json" }] } },
          { secret: { name: "apple", items: [{ key: "AuthKey.p8", path: "apns-key.p8" }] } },
          { secret: { name: "vapid", items: [{ key: "vapid-private-key", path: "vapid-private-key" }] } },
        ],
      },
    });
    expect(containerOf(pushObjects, "push").volumeMounts).toContainEqual({
      name: "push-credentials",
      mountPath: "/etc/switchboard/push",
      readOnly: true,
    });
    expect(configOf(pushObjects, "push").push).toMatchObject({
      webhookUrl: "https://push.example.com/hook",
      webhookSecretFile: "/etc/switchboard/push/webhook.secret",
      fcm: { serviceAccountFile: "/etc/switchboard/push/fcm-service-account.json" },
      apns: {
        keyFile: "/etc/switchboard/push/apns-key.p8",
        keyId: "ABC123DEFG",
        teamId: "DEF123GHIJ",
        topic: "com.example.chat",
        environment: "development",
      },
      webpush: {
        vapidPublicKey: "BPublicKey",
        vapidPrivateKeyFile: "/etc/switchboard/push/vapid-private-key",
        subject: "mailto:ops@example.com",
      },
    });
    for (const c of COMPONENTS.filter((c) => c !== "push")) {
      expect(
        podSpec(pushObjects, c).volumes?.map((v) => v.name),
        c,
      ).not.toContain("push-credentials");
    }
    // Without secretRefs (the shared spec), no volume.
    expect(podSpec(objects, "push").volumes?.map((v) => v.name)).not.toContain("push-credentials");
  });

  it("sets only the Kafka TLS files the Secret has", () => {
    const caOnly = desiredObjects(cluster, { ...inputs, kafkaTlsKeys: ["ca.crt"] });
    for (const c of STORAGE) {
      const config = configOf(caOnly, c);
      expect(config.kafka).toMatchObject({
        tlsCaFile: "/etc/switchboard/kafka-tls/ca.crt",
        tlsCertFile: "",
        tlsKeyFile: "",
      });
    }
    // TLS on without a Secret: the system's CAs, no mount.
    const systemCas = desiredObjects(
      { ...cluster, spec: { ...spec, kafka: { ...spec.kafka, tls: { enabled: true } } } },
      { gatewayReplicas: 2 },
    );
    for (const c of STORAGE) {
      expect(configOf(systemCas, c).kafka).toMatchObject({ tls: true, tlsCaFile: "", tlsCertFile: "" });
      expect(storageVolumes(podSpec(systemCas, c).volumes)).toEqual(["tmp"]);
    }
  });

  it("connects to Cassandra over TLS when the spec says, with the Secret's CAs mounted where storage is used", () => {
    const secured: ChatCluster = {
      ...cluster,
      spec: {
        ...spec,
        cassandra: { ...spec.cassandra, tls: { enabled: true, secretRef: { name: "cass-ca" } } },
      },
    };
    const objects = desiredObjects(secured, inputs);
    for (const c of STORAGE) {
      expect(configOf(objects, c).cassandra, c).toMatchObject({
        tls: true,
        tlsCaFile: "/etc/switchboard/cassandra-tls/ca.crt",
      });
      const pod = podSpec(objects, c);
      expect(pod.volumes?.find((v) => v.name === "cassandra-tls")?.secret?.secretName, c).toBe("cass-ca");
      expect(pod.containers[0]?.volumeMounts, c).toContainEqual({
        name: "cassandra-tls",
        mountPath: "/etc/switchboard/cassandra-tls",
        readOnly: true,
      });
    }
    expect(podSpec(objects, "id").volumes?.some((v) => v.name === "cassandra-tls")).toBe(false);
    // TLS on without a Secret: the system's CAs, no mount; off by default.
    const systemCas = desiredObjects(
      { ...cluster, spec: { ...spec, cassandra: { ...spec.cassandra, tls: { enabled: true } } } },
      inputs,
    );
    const plainObjects = desiredObjects(cluster, inputs);
    for (const c of STORAGE) {
      expect(configOf(systemCas, c).cassandra, c).toMatchObject({ tls: true, tlsCaFile: "" });
      expect(
        podSpec(systemCas, c).volumes?.some((v) => v.name === "cassandra-tls"),
        c,
      ).toBe(false);
      expect(configOf(plainObjects, c).cassandra.tls, c).toBe(false);
    }
  });

  it("gives id no storage environment, mounts or Secrets", () => {
    const id = containerOf(objects, "id");
    expect(id.env?.filter((e) => e.valueFrom?.secretKeyRef)).toEqual([]);
    expect((id.env ?? []).map((e) => e.name).filter((n) => /KAFKA|CASSANDRA/.test(n))).toEqual([]);
    expect(storageVolumes(id.volumeMounts)).toEqual(["tmp"]);
    expect(storageVolumes(podSpec(objects, "id").volumes)).toEqual(["tmp"]);
    const config = configOf(objects, "id");
    expect(config.kafka).toMatchObject({ saslUsername: "", saslPassword: "", tlsCaFile: "" });
    expect(config.cassandra).toMatchObject({ username: "", password: "" });
  });

  it("adds no credentials where the spec has none", () => {
    const objs = desiredObjects(plain, { gatewayReplicas: 2 });
    for (const c of COMPONENTS) {
      const container = containerOf(objs, c);
      expect(
        container.env?.filter((e) => e.valueFrom?.secretKeyRef),
        c,
      ).toEqual([]);
      expect(storageVolumes(container.volumeMounts), c).toEqual(["tmp"]);
      expect(configOf(objs, c).kafka, c).toMatchObject({ tls: false, saslMechanism: "none", tlsCaFile: "" });
    }
  });

  it("makes every Service but the gateway's headless, and gives the sequencer none (it serves no gRPC)", () => {
    const services = objects.filter((o) => o.kind === "Service") as V1Service[];
    expect(services.map((s) => s.metadata?.name).sort()).toEqual([
      "chat-gateway",
      "chat-id",
      "chat-presence",
      "chat-push",
      "chat-router",
    ]);
    for (const c of ["id", "presence", "push", "router"] as const) {
      const svc = find<V1Service>(objects, "Service", `chat-${c}`);
      expect(svc?.spec, c).toEqual({
        clusterIP: "None",
        selector: {
          "app.kubernetes.io/name": "switchboard",
          "app.kubernetes.io/instance": "chat",
          "app.kubernetes.io/component": c,
        },
        ports: [
          { name: "http", port: 8080, targetPort: "http", protocol: "TCP" },
          { name: "grpc", port: 9090, targetPort: "grpc", protocol: "TCP" },
        ],
      });
    }
    const gateway = find<V1Service>(objects, "Service", "chat-gateway");
    expect(gateway?.metadata?.annotations).toEqual({
      "example.com/lb": "internal",
      "switchboard.dev/version": "0.1.0",
    });
    expect(gateway?.spec).toMatchObject({ type: "LoadBalancer" });
    expect(gateway?.spec?.clusterIP).toBeUndefined();
    // HTTP only: the client-facing Service (a LoadBalancer here) does not expose the gateways' gRPC,
    // which routers and the operator reach on each Pod's IP.
    // Nor the internal port (/metrics): the clients' load balancer shows no metrics.
    expect(gateway?.spec?.ports).toEqual([{ name: "http", port: 80, targetPort: "http", protocol: "TCP" }]);
    for (const svc of services)
      expect(
        svc.spec?.ports?.filter(
          (p) => p.port === 9091 || p.targetPort === "internal" || p.targetPort === 9091,
        ),
        svc.metadata?.name,
      ).toEqual([]);
    expect(containerOf(objects, "sequencer").ports).toEqual([
      { name: "http", containerPort: 8080, protocol: "TCP" },
      { name: "internal", containerPort: 9091, protocol: "TCP" },
    ]);
    for (const c of COMPONENTS) {
      if (c !== "sequencer")
        expect(containerOf(objects, c).ports).toEqual([
          { name: "http", containerPort: 8080, protocol: "TCP" },
          { name: "grpc", containerPort: 9090, protocol: "TCP" },
          { name: "internal", containerPort: 9091, protocol: "TCP" },
        ]);
      // The process listens where the Pod says it does.
      expect(configOf(objects, c).http.internalPort, c).toBe(9091);
    }
  });

  it("lets gRPC in only from the components that call it (and the operator, on gateways)", () => {
    const from = (c: ComponentName) => {
      const np = find<NetworkPolicyJson>(objects, "NetworkPolicy", `chat-${c}`);
      expect(np?.spec?.podSelector?.matchLabels?.["app.kubernetes.io/component"]).toBe(c);
      expect(np?.spec?.policyTypes).toEqual(["Ingress"]);
      const [http, grpc, ...rest] = np?.spec?.ingress ?? [];
      // HTTP (WebSocket, probes) and the internal port (/metrics) from anywhere: the scraper may
      // run anywhere (no Service exposes the internal port to the load balancer).
      expect(http).toEqual({
        ports: [
          { port: 8080, protocol: "TCP" },
          { port: 9091, protocol: "TCP" },
        ],
      });
      expect(rest).toEqual([]);
      if (!grpc) return [];
      expect(grpc.ports).toEqual([{ port: 9090, protocol: "TCP" }]);
      return (grpc.from ?? []).map((p) => {
        if (p.namespaceSelector) {
          expect(p.namespaceSelector).toEqual({});
          return `operator:${p.podSelector?.matchLabels?.["app.kubernetes.io/name"]}`;
        }
        expect(p.podSelector?.matchLabels).toMatchObject({
          "app.kubernetes.io/name": "switchboard",
          "app.kubernetes.io/instance": "chat",
        });
        return p.podSelector?.matchLabels?.["app.kubernetes.io/component"];
      });
    };
    expect(from("gateway")).toEqual(["router", "operator:switchboard-operator"]);
    // Routers take ids for the server API's sends (ADR 0005).
    expect(from("id")).toEqual(["gateway", "router"]);
    // Routers read presence for the server API's GetPresence.
    expect(from("presence")).toEqual(["gateway", "router"]);
    // Routers relay the server API's group changes through the router a conversation is pinned to.
    expect(from("router")).toEqual(["gateway", "presence", "router"]);
    expect(from("push")).toEqual(["gateway", "router"]);
    expect(from("sequencer")).toEqual([]);
    // Knowing its own namespace (its ServiceAccount's), the operator lets only that one in: the Pod
    // label alone is anyone's to set.
    const withAccount = desiredObjects(cluster, {
      ...inputs,
      operatorAccount: { namespace: "switchboard-system", name: "switchboard-operator" },
    });
    const gateway = find<NetworkPolicyJson>(withAccount, "NetworkPolicy", "chat-gateway");
    expect(gateway?.spec?.ingress?.[1]?.from?.find((p) => p.namespaceSelector)).toEqual({
      namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "switchboard-system" } },
      podSelector: { matchLabels: { "app.kubernetes.io/name": "switchboard-operator" } },
    });
  });

  it("lets the server API's clients reach the routers' gRPC: from their ServiceAccounts' namespaces, or anywhere for a certificate", () => {
    const routerPeers = (clients: NonNullable<ChatCluster["spec"]["api"]>["clients"]) => {
      const objects = desiredObjects({ ...cluster, spec: { ...spec, api: { clients } } }, inputs);
      const np = find<NetworkPolicyJson>(objects, "NetworkPolicy", "chat-router");
      return (np?.spec?.ingress?.[1]?.from ?? []).filter((p) => p.namespaceSelector !== undefined);
    };
    const account = (name: string, namespace: string) => ({
      name,
      serviceAccount: { namespace, name },
      permissions: ["publish"],
    });
    expect(routerPeers([])).toEqual([]);
    expect(
      routerPeers([account("billing", "billing"), account("crm", "crm"), account("bot", "billing")]),
    ).toEqual([
      { namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "billing" } } },
      { namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "crm" } } },
    ]);
    const certified = {
      name: "ext",
      certificate: { uri: "switchboard://client:ext" },
      permissions: ["publish"],
    };
    expect(routerPeers([account("billing", "billing"), certified])).toEqual([{ namespaceSelector: {} }]);
  });

  it("opens each component's gRPC port to every role that METHOD_RULES lets call one of its methods, and to no other", () => {
    // The service each gRPC package belongs to; the server API (api.v1 ChatService) is the routers'.
    const served = (path: string): ComponentName => {
      const pkg = /^\/switchboard\.([a-z]+)\.v1\./.exec(path)?.[1];
      return (pkg === "api" ? "router" : pkg) as ComponentName;
    };
    const callers = Object.fromEntries(COMPONENTS.map((c) => [c, new Set<string>()])) as Record<
      ComponentName,
      Set<string>
    >;
    for (const [path, rule] of METHOD_RULES)
      for (const principal of rule.callers)
        if (principal.startsWith("role:")) callers[served(path)].add(principal.slice("role:".length));
    for (const c of COMPONENTS) expect([...GRPC_CALLERS[c]].sort(), c).toEqual([...callers[c]].sort());
  });

  it("labels the version only with a valid label value, keeps the whole version in an annotation, and pulls a digest by digest", () => {
    const digest = `sha256:${"ab12".repeat(16)}`;
    const at = (version: string) => {
      const objs = desiredObjects({ ...cluster, spec: { ...spec, version } }, inputs);
      const router = find<V1Deployment>(objs, "Deployment", "chat-router");
      return {
        image: containerOf(objs, "router").image,
        labels: new Set(objs.map((o) => o.metadata?.labels?.["app.kubernetes.io/version"])),
        podLabel: router?.spec?.template.metadata?.labels?.["app.kubernetes.io/version"],
        annotations: new Set(objs.map((o) => o.metadata?.annotations?.["switchboard.dev/version"])),
      };
    };
    expect(at("0.1.0")).toEqual({
      image: "ghcr.io/switchboard-chat/switchboard:0.1.0",
      labels: new Set(["0.1.0"]),
      podLabel: "0.1.0",
      annotations: new Set(["0.1.0"]),
    });
    // A tag pinned to a digest: the runtime pulls the digest; the label is the tag.
    expect(at(`0.1.0@${digest}`)).toEqual({
      image: `ghcr.io/switchboard-chat/switchboard:0.1.0@${digest}`,
      labels: new Set(["0.1.0"]),
      podLabel: "0.1.0",
      annotations: new Set([`0.1.0@${digest}`]),
    });
    // A digest alone: repo@digest (repo:sha256:… is no image reference), and no label (a colon is not
    // allowed in one, and the API server would refuse every object).
    expect(at(digest)).toEqual({
      image: `ghcr.io/switchboard-chat/switchboard@${digest}`,
      labels: new Set([undefined]),
      podLabel: undefined,
      annotations: new Set([digest]),
    });
    // A tag longer than a label value may be (63): no label either.
    const long = `1.0.0-${"x".repeat(70)}`;
    expect(at(long)).toMatchObject({
      image: `ghcr.io/switchboard-chat/switchboard:${long}`,
      labels: new Set([undefined]),
      annotations: new Set([long]),
    });
    expect(isLabelValue("0.1.0")).toBe(true);
    expect(isLabelValue(digest)).toBe(false);
    expect(isLabelValue("x".repeat(64))).toBe(false);
    expect(isLabelValue("-x")).toBe(false);
  });

  it("gives every container default requests and a memory limit equal to its request, no CPU limit, unless the spec sets resources", () => {
    for (const c of COMPONENTS) {
      const resources = containerOf(objects, c).resources;
      expect(resources, c).toEqual(defaultResources(c));
      expect(resources?.requests?.cpu, c).toMatch(/^[0-9]+m$/);
      expect(resources?.limits, c).toEqual({ memory: resources?.requests?.memory });
    }
    // The spec's own replace the defaults whole (here: limits only, which Kubernetes copies to requests).
    const own = { limits: { cpu: "2", memory: "1Gi" } };
    const custom = desiredObjects(
      { ...cluster, spec: { ...spec, router: { replicas: 2, resources: own } } },
      inputs,
    );
    expect(containerOf(custom, "router").resources).toEqual(own);
    expect(containerOf(custom, "gateway").resources).toEqual(defaultResources("gateway"));
    // An empty object: none at all (BestEffort), as asked.
    const none = desiredObjects(
      { ...cluster, spec: { ...spec, push: { replicas: 1, resources: {} } } },
      inputs,
    );
    expect(containerOf(none, "push").resources).toEqual({});
  });

  it("spreads every role's Pods over the nodes, softly, unless the spec says how to spread them", () => {
    for (const c of COMPONENTS)
      expect(podSpec(objects, c).topologySpreadConstraints, c).toEqual([
        {
          maxSkew: 1,
          topologyKey: "kubernetes.io/hostname",
          whenUnsatisfiable: "ScheduleAnyway",
          labelSelector: {
            matchLabels: {
              "app.kubernetes.io/name": "switchboard",
              "app.kubernetes.io/instance": "chat",
              "app.kubernetes.io/component": c,
            },
          },
        },
      ]);
    const zones = [
      { maxSkew: 2, topologyKey: "topology.kubernetes.io/zone", whenUnsatisfiable: "DoNotSchedule" },
    ];
    const custom = desiredObjects(
      {
        ...cluster,
        spec: {
          ...spec,
          router: { replicas: 2, scheduling: { topologySpreadConstraints: zones } },
          // An empty list: no spreading at all.
          id: { replicas: 3, scheduling: { topologySpreadConstraints: [] } },
          // Other scheduling settings leave the default spread in place.
          push: { replicas: 1, scheduling: { nodeSelector: { pool: "chat" } } },
        },
      },
      inputs,
    );
    expect(podSpec(custom, "router").topologySpreadConstraints).toEqual(zones);
    expect(podSpec(custom, "id").topologySpreadConstraints).toEqual([]);
    expect(podSpec(custom, "push").topologySpreadConstraints?.[0]?.whenUnsatisfiable).toBe("ScheduleAnyway");
    expect(podSpec(custom, "push").nodeSelector).toEqual({ pool: "chat" });
  });

  it("delays a gateway's SIGTERM with the kubelet's sleep (no shell in the image), within its grace period", () => {
    const gateway = containerOf(objects, "gateway");
    expect(gateway.lifecycle).toEqual({ preStop: { sleep: { seconds: 5 } } });
    expect(podSpec(objects, "gateway").terminationGracePeriodSeconds).toBeGreaterThan(5);
    // A drain timeout of 0 still leaves the sleep inside the grace period.
    const quick = desiredObjects(
      {
        ...cluster,
        spec: {
          ...spec,
          gateway: { ...spec.gateway, autoscaling: { ...spec.gateway.autoscaling, drainTimeoutSeconds: 0 } },
        },
      },
      inputs,
    );
    // The sleep, the process's own stop bound (30 s) and a margin: 5 + 0 + 30 + 10.
    expect(podSpec(quick, "gateway").terminationGracePeriodSeconds).toBe(45);
    for (const c of COMPONENTS)
      if (c !== "gateway") expect(containerOf(objects, c).lifecycle, c).toBeUndefined();
  });

  it("gives every role's Pods a grace period past their own stop bound, so the kubelet's kill never ends a stop", () => {
    // Not Kubernetes' default 30 s, which is the processes' own shutdownTimeoutMs.
    for (const c of COMPONENTS)
      if (c !== "gateway") expect(podSpec(objects, c).terminationGracePeriodSeconds, c).toBe(40);
  });
});

/** The names of volumes (or mounts) other than the gRPC identity's (grpc-identity.test.ts checks those). */
function storageVolumes(volumes: readonly { name: string }[] | undefined): string[] {
  const identity = ["grpc-token", "kube-api", "grpc-policy"];
  return (volumes ?? []).map((v) => v.name).filter((n) => !identity.includes(n));
}
