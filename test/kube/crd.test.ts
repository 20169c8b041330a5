/**
 * The ChatCluster CRD (k8s/crd) as the real API server serves it: a documented structural schema,
 * defaults, validation (OpenAPI and CEL), pruning checked against the TypeScript API, the status
 * subresource and the printer columns. The CRD is cluster-scoped and shared with the operator tests:
 * applied server-side, never deleted; every object lives in this file's own namespace.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { KubeConfig } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PERMISSIONS } from "../../internal/grpc-auth/policy.js";
import { API_VERSION, type ChatCluster, type ChatClusterSpec, KIND } from "../../operator/api/v1alpha1.js";
import { isConflict, KubeClient, resourcePath } from "../../operator/kube/client.js";
import { CRD_FILE, installCrd, kubectl, kubeTools, root, run, type Tools, waitFor } from "./helpers.js";

const NS = `sb-crd-${randomBytes(3).toString("hex")}`;
const EXAMPLE_FILE = join(root, "k8s", "examples", "chatcluster.yaml");
let tools: Tools;
let kube: KubeClient;

/**
 * T with every optional field made required, all the way down: a value of Full<ChatClusterSpec> sets
 * every field the TypeScript API has, so tsc fails here when a field is added to the types (and the
 * create-and-read-back test below fails when the CRD lacks one: the API server prunes unknown fields).
 */
type Full<T> = T extends readonly (infer U)[]
  ? Full<U>[]
  : T extends object
    ? { [K in keyof T]-?: Full<T[K]> }
    : T;

const minimal = (name: string, spec: Record<string, unknown> = {}) => ({
  apiVersion: API_VERSION as typeof API_VERSION,
  kind: KIND as typeof KIND,
  metadata: { name, namespace: NS },
  spec: {
    kafka: { bootstrapServers: ["kafka:9092"] },
    cassandra: { contactPoints: ["cassandra:9042"] },
    auth: { jwksUrl: "https://auth.example.com/jwks.json" },
    ...spec,
  },
});

const ref = (name: string) => ({ apiVersion: API_VERSION, kind: KIND, namespace: NS, name });

/**
 * Creates the object as a server dry run: it is defaulted, validated (schema and CEL) and pruned
 * exactly as a real create, and the API server answers with the object it would store, but nothing is
 * stored. The operator tests may run at the same time, and their operator reconciles every ChatCluster
 * in the cluster: objects it never sees keep the two tests out of each other's way.
 */
async function dryRunCreate(obj: unknown): Promise<ChatCluster> {
  const path = resourcePath({ apiVersion: API_VERSION, kind: KIND, namespace: NS });
  return (await kube.request("POST", `${path}?dryRun=All`, obj)) as ChatCluster;
}

/** Creates the object with kubectl (server dry run) and returns the error; fails the test if accepted. */
async function createError(obj: unknown): Promise<string> {
  const r = await run(
    tools.KUBECTL,
    [`--kubeconfig=${tools.KUBECONFIG}`, "create", "--dry-run=server", "-f", "-"],
    { input: JSON.stringify(obj) },
  );
  expect(r.code, `accepted: ${JSON.stringify(obj)}`).not.toBe(0);
  return r.stderr;
}

/** Reads the YAML documents of a file as JSON objects (kubectl parses them; nothing is sent). */
async function readManifests(file: string): Promise<Record<string, unknown>[]> {
  const docs = (await readFile(file, "utf8")).split(/^---$/m).filter((d) => /^kind:/m.test(d));
  return Promise.all(
    docs.map(async (doc) =>
      JSON.parse(await kubectl(tools, ["create", "--dry-run=client", "-o", "json", "-f", "-"], doc)),
    ),
  );
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
  if (!tools) return;
  await removeClusters().catch(() => undefined);
  await kubectl(tools, ["delete", "namespace", NS, "--wait=false"]).catch(() => "");
});

/**
 * Deletes this file's stored ChatClusters, dropping any finalizer an operator running meanwhile may
 * have added (it may be gone by then, and the namespace would never finish terminating).
 */
async function removeClusters(): Promise<void> {
  const names = (await kubectl(tools, ["get", "chatclusters", "-n", NS, "-o", "name"])).split("\n");
  for (const name of names.filter(Boolean)) {
    await kubectl(tools, ["delete", name, "-n", NS, "--wait=false"]);
    await kubectl(tools, [
      "patch",
      name,
      "-n",
      NS,
      "--type=merge",
      "-p",
      '{"metadata":{"finalizers":null}}',
    ]).catch(
      () => "", // already gone
    );
  }
}

async function retryOnConflict<T>(fn: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (!isConflict(err) || attempt >= 10) throw err;
    }
  }
}

describe("ChatCluster CRD", () => {
  it("is served as chatclusters.switchboard.dev/v1alpha1 (short name chat) with a documented schema", async () => {
    const [crd] = (await readManifests(CRD_FILE)) as [
      {
        spec: {
          group: string;
          scope: string;
          names: { kind: string; plural: string; singular: string; shortNames: string[] };
          versions: {
            name: string;
            served: boolean;
            storage: boolean;
            schema: { openAPIV3Schema: Schema };
          }[];
        };
      },
    ];
    expect(crd.spec).toMatchObject({
      group: "switchboard.dev",
      scope: "Namespaced",
      names: { kind: "ChatCluster", plural: "chatclusters", singular: "chatcluster", shortNames: ["chat"] },
    });
    expect(crd.spec.versions.map((v) => [v.name, v.served, v.storage])).toEqual([["v1alpha1", true, true]]);
    // Every field (and every list item and map value) says what it is, for `kubectl explain`.
    const undocumented: string[] = [];
    const walk = (s: Schema, path: string) => {
      if (!s.description) undocumented.push(path);
      for (const [k, v] of Object.entries(s.properties ?? {})) walk(v, `${path}.${k}`);
      if (s.items) walk(s.items, `${path}[]`);
      if (typeof s.additionalProperties === "object") walk(s.additionalProperties, `${path}{}`);
    };
    const top = crd.spec.versions[0]!.schema.openAPIV3Schema;
    for (const field of ["spec", "status"]) walk(top.properties![field]!, `.${field}`);
    expect(undocumented).toEqual([]);
    // The permissions a client may be granted are exactly the policy's.
    const clientSchema = top.properties!.spec!.properties!.api!.properties!.clients!.items!;
    expect(clientSchema.properties!.permissions!.items!.enum).toEqual([...PERMISSIONS]);
    // ...as `kubectl explain` shows (once the API server has published the CRD's OpenAPI).
    const explained = await waitFor("kubectl explain chatclusters", async () => {
      const text = await kubectl(tools, ["explain", "chatclusters.spec.gateway.autoscaling"]);
      return text.includes("targetConnectionsPerPod") && text;
    });
    expect(explained).toContain("Live connections per gateway to aim for.");
  });

  it("fills in every default", async () => {
    const created = await dryRunCreate(minimal("defaults"));
    const s = created.spec;
    expect(s.image).toBe("ghcr.io/switchboard-chat/switchboard");
    expect(s.version).toBe("0.1.0");
    expect(s.imagePullPolicy).toBe("IfNotPresent");
    expect([
      s.gateway.replicas,
      s.router.replicas,
      s.presence.replicas,
      s.push.replicas,
      s.id.replicas,
      s.sequencer.replicas,
    ]).toEqual([2, 2, 2, 1, 1, 2]);
    expect(s.sequencer).toEqual({ replicas: 2 });
    expect(s.gateway.autoscaling).toEqual({
      enabled: false,
      minReplicas: 2,
      maxReplicas: 10,
      targetConnectionsPerPod: 10000,
      stabilizationWindowSeconds: 300,
      drainTimeoutSeconds: 120,
    });
    expect(s.gateway.service).toEqual({ type: "ClusterIP" });
    expect(s.presence).toEqual({ replicas: 2, heartbeatIntervalSeconds: 5, offlineAfterSeconds: 30 });
    expect(s.kafka).toEqual({
      bootstrapServers: ["kafka:9092"],
      topicPrefix: "switchboard.",
      topics: { partitions: 12, replicationFactor: 3, retentionHours: 168 },
    });
    expect(s.cassandra).toEqual({
      contactPoints: ["cassandra:9042"],
      datacenter: "datacenter1",
      keyspace: "switchboard",
      consistency: "LOCAL_QUORUM",
      replication: { class: "NetworkTopologyStrategy", factor: 3 },
    });
    expect(s.observability).toEqual({
      metrics: { enabled: true, podMonitor: { enabled: false } },
      logLevel: "info",
    });
    expect(s.grpc).toEqual({ tls: { enabled: false } });
    // A partly given object keeps its values and gets the rest.
    const partial = await dryRunCreate(
      minimal("partial", {
        gateway: { autoscaling: { enabled: true, maxReplicas: 4 } },
        auth: { secretRef: { name: "jwt" } },
        kafka: { bootstrapServers: ["k:9092"], tls: {} },
      }),
    );
    expect(partial.spec.gateway.autoscaling).toMatchObject({ enabled: true, minReplicas: 2, maxReplicas: 4 });
    expect(partial.spec.auth).toEqual({ secretRef: { name: "jwt", key: "secret" } });
    expect(partial.spec.kafka.tls).toEqual({ enabled: false });
    // An issuer named by name alone is a cert-manager Issuer in the cluster's namespace.
    const issued = await dryRunCreate(
      minimal("issued", { grpc: { tls: { enabled: true, issuerRef: { name: "ca" } } } }),
    );
    expect(issued.spec.grpc).toEqual({
      tls: { enabled: true, issuerRef: { name: "ca", kind: "Issuer", group: "cert-manager.io" } },
    });
  });

  it("accepts k8s/examples/chatcluster.yaml and fills in what it leaves out", async () => {
    const docs = await readManifests(EXAMPLE_FILE);
    expect(docs.map((d) => d.kind)).toEqual(["Namespace", "ChatCluster"]);
    const example = docs[1] as unknown as ChatCluster;
    expect(example.metadata.namespace).toBe("chat");
    const created = await dryRunCreate({ ...example, metadata: { ...example.metadata, namespace: NS } });
    expect(created.metadata).toMatchObject({ name: "chat", namespace: NS, generation: 1 });
    // Everything the example says is kept as it is (scheduling passes through unpruned)...
    expect(created.spec).toMatchObject(example.spec as unknown as Record<string, unknown>);
    expect(created.spec.gateway.autoscaling.enabled).toBe(true);
    // ...and what it leaves out is defaulted.
    expect(created.spec.image).toBe("ghcr.io/switchboard-chat/switchboard");
    expect(created.spec.kafka.topicPrefix).toBe("switchboard.");
    expect(created.spec.cassandra.consistency).toBe("LOCAL_QUORUM");
    expect(created.spec.gateway.replicas).toBe(2);
    expect(created.spec.presence).toMatchObject({ heartbeatIntervalSeconds: 5, offlineAfterSeconds: 30 });
  });

  it("keeps every field of a fully populated spec (the schema knows every field of the TypeScript API)", async () => {
    const component = (replicas: number, pool: string): Full<ChatClusterSpec["router"]> => ({
      replicas,
      resources: { requests: { cpu: "250m", memory: "256Mi" }, limits: { cpu: "2", memory: "1Gi" } },
      scheduling: {
        nodeSelector: { pool },
        tolerations: [{ key: pool, operator: "Exists", effect: "NoSchedule" }],
        affinity: {
          podAntiAffinity: {
            preferredDuringSchedulingIgnoredDuringExecution: [
              { weight: 100, podAffinityTerm: { topologyKey: "kubernetes.io/hostname" } },
            ],
          },
        },
        topologySpreadConstraints: [{ maxSkew: 1, topologyKey: "zone", whenUnsatisfiable: "ScheduleAnyway" }],
        priorityClassName: `${pool}-high`,
      },
    });
    const full: Full<ChatClusterSpec> = {
      image: "registry.example.com/sb",
      version: "9.9.9",
      imagePullPolicy: "Always",
      imagePullSecrets: [{ name: "pull" }],
      gateway: {
        ...component(3, "edge"),
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
      router: component(4, "router"),
      presence: { ...component(3, "presence"), heartbeatIntervalSeconds: 10, offlineAfterSeconds: 60 },
      push: {
        ...component(2, "push"),
        webhook: { url: "https://push.example.com/", secretRef: { name: "hook", key: "signing" } },
        fcm: { secretRef: { name: "fcm", key: "sa.json" } },
        apns: {
          secretRef: { name: "apns", key: "key.p8" },
          keyId: "ABC123DEFG",
          teamId: "DEF123GHIJ",
          topic: "com.example.chat",
          environment: "development",
        },
        webpush: {
          secretRef: { name: "vapid", key: "private" },
          vapidPublicKey: `B${"A".repeat(86)}`,
          subject: "mailto:ops@example.com",
        },
      },
      id: component(5, "id"),
      sequencer: component(3, "sequencer"),
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
        tls: { enabled: true, secretRef: { name: "cassandra-tls" } },
      },
      // Every branch of auth, for Full<>: the CEL rule allows one at a time, so each is created below.
      auth: {
        jwksUrl: "https://auth.example.com/jwks.json",
        secretRef: { name: "jwt", key: "hs256" },
        issuers: [
          { issuer: "https://a.example", jwksUrl: "https://a.example/jwks.json" },
          { issuer: "https://b.example", jwksUrl: "https://b.example/jwks.json" },
        ],
        issuer: "https://iss",
        audience: "aud",
        clockSkewSeconds: 30,
      },
      observability: {
        metrics: {
          enabled: true,
          podMonitor: { enabled: true, labels: { release: "kube-prometheus-stack" }, interval: "1m30s" },
        },
        otlp: { endpoint: "http://otel:4317" },
        logLevel: "debug",
      },
      // Both ways to authenticate and both kinds of conversations, for Full<>: one of each is created.
      api: {
        clients: [
          {
            name: "billing",
            serviceAccount: { namespace: "billing", name: "billing-api" },
            certificate: { uri: "switchboard://client:billing" },
            permissions: ["publish", "readHistory"],
            sendAs: ["billing-bot"],
            conversations: { all: true, ids: ["g:1"] },
          },
        ],
      },
      grpc: {
        tls: {
          enabled: true,
          issuerRef: { name: "chat-ca", kind: "ClusterIssuer", group: "cert-manager.io" },
        },
      },
      settings: { "gateway.connectionsMax": "25000", "auth.allowedOrigins": "https://app.example.com" },
    };
    const [both] = full.api.clients;
    const { certificate: _certificate, ...bySa } = both!;
    const { serviceAccount: _serviceAccount, ...byCert } = both!;
    const api = {
      clients: [
        { ...bySa, conversations: { ids: ["g:1"] } },
        {
          ...byCert,
          name: "moderation",
          certificate: { uri: "switchboard://client:moderation" },
          conversations: { all: true },
        },
      ],
    };
    const { issuer, audience, clockSkewSeconds } = full.auth;
    for (const [name, auth] of [
      ["full-secret", { secretRef: full.auth.secretRef, issuer, audience, clockSkewSeconds }],
      ["full-jwks", { jwksUrl: full.auth.jwksUrl, issuer, audience, clockSkewSeconds }],
      ["full-issuers", { issuers: full.auth.issuers, audience, clockSkewSeconds }],
    ] as const) {
      const spec: ChatClusterSpec = { ...full, auth, api };
      const created = await dryRunCreate({ ...minimal(name), spec });
      expect(created.spec).toEqual(spec);
    }
  });

  it("keeps the TypeScript of this file in step with operator/api/v1alpha1.ts (tsc)", async () => {
    // tsconfig.json leaves tests out, so the Full<ChatClusterSpec> above is checked here: a field
    // added to the types and not to the spec above (nor, then, to the CRD) fails this test.
    const dir = await mkdtemp(join(tmpdir(), "sb-crd-tsc-"));
    try {
      const config = join(dir, "tsconfig.json");
      await writeFile(
        config,
        JSON.stringify({
          extends: join(root, "tsconfig.json"),
          compilerOptions: { noEmit: true, incremental: false, rootDir: root },
          include: [],
          files: [fileURLToPath(import.meta.url)],
        }),
      );
      const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
      const r = await run(process.execPath, [tsc, "-p", config]);
      expect(r.stdout + r.stderr).toBe("");
      expect(r.code).toBe(0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("keeps where the data lives as created: partitions, topic prefix and keyspace cannot change", async () => {
    try {
      await kubectl(tools, ["create", "-f", "-"], JSON.stringify(minimal("fixed-partitions")));
      const patch = (spec: Record<string, unknown>) =>
        run(
          tools.KUBECTL,
          [
            `--kubeconfig=${tools.KUBECONFIG}`,
            "patch",
            "chatcluster",
            "fixed-partitions",
            "-n",
            NS,
            "--type=merge",
            "--dry-run=server",
            "-p",
            JSON.stringify({ spec }),
          ],
          {},
        );
      const changed = await patch({ kafka: { topics: { partitions: 24 } } });
      expect(changed.code).not.toBe(0);
      expect(changed.stderr).toContain("kafka.topics.partitions is fixed once the topics exist");
      // The same values again (the defaults) are no change.
      expect((await patch({ kafka: { topics: { partitions: 12 } } })).code).toBe(0);
      expect((await patch({ kafka: { topicPrefix: "switchboard." } })).code).toBe(0);
      expect((await patch({ cassandra: { keyspace: "switchboard" } })).code).toBe(0);
      // Another prefix or keyspace would point the running cluster at empty storage.
      const prefix = await patch({ kafka: { topicPrefix: "other." } });
      expect(prefix.code).not.toBe(0);
      expect(prefix.stderr).toContain("kafka.topicPrefix is fixed once the cluster exists");
      const keyspace = await patch({ cassandra: { keyspace: "other" } });
      expect(keyspace.code).not.toBe(0);
      expect(keyspace.stderr).toContain("cassandra.keyspace is fixed once the cluster exists");
      // Still free to change: the replicas, say.
      expect((await patch({ router: { replicas: 3 } })).code).toBe(0);
    } finally {
      await removeClusters();
    }
  });

  it("rejects invalid specs with messages that say what is wrong", async () => {
    // The name makes the Services' and StatefulSets' names (DNS labels, with room for their suffix).
    expect((await dryRunCreate(minimal(`a${"b".repeat(41)}9`))).metadata.name).toHaveLength(43);
    for (const name of [`a${"b".repeat(42)}9`, "chat.eu", "1chat"])
      expect(await createError(minimal(name)), name).toContain(
        "the name must be at most 43 lowercase letters",
      );
    // A limit on every count, and an image the runtime could pull.
    expect(await createError(minimal("many-routers", { router: { replicas: 10_001 } }))).toContain(
      "spec.router.replicas in body should be less than or equal to 10000",
    );
    for (const image of ["switchboard", "localhost:5000/sb/switchboard", "ghcr.io/a-b/c_d.e"])
      expect((await dryRunCreate(minimal("good-image", { image }))).spec.image, image).toBe(image);
    for (const image of ["UPPER CASE!!", "ghcr.io/Switchboard", "a//b", "ghcr.io/sb:1.0"])
      expect(await createError(minimal("bad-image", { image })), image).toContain(
        "spec.image in body should match",
      );
    // A client's senders and conversations as ids of their kinds: said at admission, where the
    // platform would only let a malformed one grant nothing.
    const withClient = (more: Record<string, unknown>) =>
      minimal("api-ids", {
        api: {
          clients: [
            {
              name: "support",
              serviceAccount: { namespace: "support", name: "support-api" },
              permissions: ["readHistory"],
              ...more,
            },
          ],
        },
      });
    const good = {
      sendAs: ["system", "bot:support", "ann.b@x"],
      conversations: { ids: ["g:12", "dm:ann~bob"] },
    };
    expect((await dryRunCreate(withClient(good))).spec.api?.clients[0]?.conversations?.ids).toEqual([
      "g:12",
      "dm:ann~bob",
    ]);
    expect(await createError(withClient({ sendAs: ["not a user"] }))).toContain(
      "spec.api.clients[0].sendAs[0] in body should match",
    );
    for (const id of ["g-1", "g:abc", "dm:ann", "general"])
      expect(await createError(withClient({ conversations: { ids: [id] } })), id).toContain(
        "spec.api.clients[0].conversations.ids[0] in body should match",
      );
    expect(
      await createError(
        minimal("bad-scale", { gateway: { autoscaling: { minReplicas: 5, maxReplicas: 3 } } }),
      ),
    ).toContain("minReplicas must not exceed maxReplicas");
    expect(
      await createError(
        minimal("bad-auth", { auth: { jwksUrl: "https://a/jwks", secretRef: { name: "s" } } }),
      ),
    ).toContain("set exactly one of auth.jwksUrl, auth.secretRef and auth.issuers");
    expect(await createError(minimal("no-auth", { auth: {} }))).toContain(
      "set exactly one of auth.jwksUrl, auth.secretRef and auth.issuers",
    );
    const issuers = [
      { issuer: "https://a.test", jwksUrl: "https://a.test/jwks" },
      { issuer: "https://b.test", jwksUrl: "https://b.test/jwks" },
    ];
    // Alone, with an audience, several issuers are a valid spec.
    expect(
      (await dryRunCreate(minimal("issuers", { auth: { issuers, audience: "chat" } }))).spec.auth.issuers,
    ).toEqual(issuers);
    expect(
      await createError(minimal("issuers-and-url", { auth: { issuers, jwksUrl: "https://c/jwks" } })),
    ).toContain("set exactly one of auth.jwksUrl, auth.secretRef and auth.issuers");
    expect(
      await createError(minimal("issuers-and-issuer", { auth: { issuers, issuer: "https://a.test" } })),
    ).toContain("auth.issuers names each issuer; leave auth.issuer unset");
    expect(
      await createError(minimal("issuers-twice", { auth: { issuers: [issuers[0], issuers[0]] } })),
    ).toMatch(/Duplicate value/);
    expect(
      await createError(
        minimal("issuer-with-comma", { auth: { issuers: [{ issuer: "a,b", jwksUrl: "https://a/jwks" }] } }),
      ),
    ).toMatch(/spec\.auth\.issuers\[0\]\.issuer/);
    for (const field of ["kafka", "cassandra", "auth"]) {
      const missing = minimal(`no-${field}`) as { spec: Record<string, unknown> };
      delete missing.spec[field];
      expect(await createError(missing)).toMatch(new RegExp(`spec\\.${field}: Required value`));
    }
    expect(await createError(minimal("no-brokers", { kafka: { bootstrapServers: [] } }))).toMatch(
      /spec\.kafka\.bootstrapServers.*at least 1 items/,
    );
    expect(await createError(minimal("bad-broker", { kafka: { bootstrapServers: ["kafka"] } }))).toMatch(
      /spec\.kafka\.bootstrapServers\[0\]: Invalid value: "kafka"/,
    );
    expect(
      await createError(minimal("bad-ks", { cassandra: { contactPoints: ["c"], keyspace: "Bad-Name" } })),
    ).toMatch(/spec\.cassandra\.keyspace: Invalid value: "Bad-Name"/);
    expect(await createError(minimal("bad-ids", { id: { replicas: 1025 } }))).toMatch(
      /spec\.id\.replicas: Invalid value: 1025.*less than or equal to 1024/,
    );
    expect(await createError(minimal("bad-sequencers", { sequencer: { replicas: -1 } }))).toMatch(
      /spec\.sequencer\.replicas: Invalid value: -1.*greater than or equal to 0/,
    );
    expect(
      await createError(
        minimal("bad-presence", { presence: { heartbeatIntervalSeconds: 30, offlineAfterSeconds: 10 } }),
      ),
    ).toContain("offlineAfterSeconds must be at least twice heartbeatIntervalSeconds");
    expect(await createError(minimal("bad-hook", { push: { webhook: { url: "::nope" } } }))).toMatch(
      /spec\.push\.webhook\.url.*must be of type uri/,
    );
    expect(
      await createError(
        minimal("half-apns", { push: { apns: { secretRef: { name: "apns" }, keyId: "K" } } }),
      ),
    ).toMatch(/spec\.push\.apns\.teamId: Required value/);
    expect(
      await createError(
        minimal("bad-vapid", {
          push: {
            webpush: { secretRef: { name: "v" }, vapidPublicKey: "short", subject: "ops@example.com" },
          },
        }),
      ),
    ).toMatch(/spec\.push\.webpush\.(vapidPublicKey|subject): Invalid value/);
    expect(
      await createError(minimal("bad-cpu", { gateway: { resources: { requests: { cpu: "lots" } } } })),
    ).toMatch(/spec\.gateway\.resources\.requests\.cpu: Invalid value: "lots"/);
    expect(await createError(minimal("bad-policy", { imagePullPolicy: "Sometimes" }))).toMatch(
      /spec\.imagePullPolicy: Unsupported value: "Sometimes"/,
    );
    expect(await createError(minimal("bad-log", { observability: { logLevel: "verbose" } }))).toMatch(
      /spec\.observability\.logLevel: Unsupported value: "verbose"/,
    );
    expect(
      await createError(
        minimal("bad-sasl", {
          kafka: { bootstrapServers: ["k:1"], sasl: { mechanism: "md5", secretRef: { name: "s" } } },
        }),
      ),
    ).toMatch(/spec\.kafka\.sasl\.mechanism: Unsupported value: "md5"/);
    // A PodMonitor scrapes /metrics: it cannot be asked for with metrics off.
    expect(
      await createError(
        minimal("bad-monitor", {
          observability: { metrics: { enabled: false, podMonitor: { enabled: true } } },
        }),
      ),
    ).toContain("metrics.podMonitor needs metrics.enabled");
    expect(
      await createError(
        minimal("bad-interval", {
          observability: { metrics: { podMonitor: { enabled: true, interval: "30 seconds" } } },
        }),
      ),
    ).toMatch(/spec\.observability\.metrics\.podMonitor\.interval: Invalid value: "30 seconds"/);
    // Metrics off with the PodMonitor off (the default) is fine.
    expect(
      (await dryRunCreate(minimal("no-metrics", { observability: { metrics: { enabled: false } } }))).spec
        .observability,
    ).toEqual({ metrics: { enabled: false, podMonitor: { enabled: false } }, logLevel: "info" });
    // gRPC API clients (ADR 0007): one way to authenticate, a certificate naming the client, known
    // permissions (the enum is PERMISSIONS of internal/grpc-auth/policy.ts: checked below).
    const client = { name: "billing", permissions: ["publish"] };
    expect(await createError(minimal("bad-client-none", { api: { clients: [client] } }))).toContain(
      "a client authenticates by exactly one of serviceAccount and certificate",
    );
    expect(
      await createError(
        minimal("bad-client-uri", {
          api: { clients: [{ ...client, certificate: { uri: "switchboard://client:other" } }] },
        }),
      ),
    ).toContain("certificate.uri must be switchboard://client:<name>");
    expect(
      await createError(
        minimal("bad-client-perm", {
          api: {
            clients: [{ ...client, permissions: ["root"], serviceAccount: { namespace: "b", name: "b" } }],
          },
        }),
      ),
    ).toMatch(/spec\.api\.clients\[0\]\.permissions\[0\]: Unsupported value: "root"/);
    // The last id: the snowflake worker ids are 0..1023.
    expect((await dryRunCreate(minimal("max-ids", { id: { replicas: 1024 } }))).spec.id.replicas).toBe(1024);
    // spec.version: a tag, a tag pinned to a digest, or a digest alone; nothing an image reference
    // cannot carry after `image:` (or `image@`).
    const digest = `sha256:${"0123456789abcdef".repeat(4)}`;
    for (const version of ["0.1.0", "v1.2.3-rc.1_build", `0.1.0@${digest}`, digest, "x".repeat(128)])
      expect((await dryRunCreate(minimal("good-version", { version }))).spec.version, version).toBe(version);
    for (const version of ["1.0 beta", "-1.0", "sha256:abc", `@${digest}`, "repo:1.0", "x".repeat(129)])
      expect(await createError(minimal("bad-version", { version })), version).toMatch(
        /spec\.version: (Invalid value|Too long)/,
      );
  });

  it("keeps status apart from spec (status subresource) and prints its columns", async () => {
    // Stored, unlike the other objects of this file, so a running operator (the operator tests') may
    // reconcile it: it names a Kafka SASL Secret that does not exist, so such an operator gives up on
    // it before any Kafka call, and nothing below depends on what it writes.
    const columns = minimal("columns", {
      kafka: {
        bootstrapServers: ["kafka:9092"],
        sasl: { mechanism: "plain", secretRef: { name: "absent" } },
      },
    });
    await kubectl(tools, ["create", "-f", "-"], JSON.stringify(columns));
    try {
      // A status in a spec write is ignored...
      const c = await kube.mergePatch<ChatCluster>(ref("columns"), {
        spec: { router: { replicas: 3 } },
        status: { connections: 99 },
      });
      expect(c.spec.router.replicas).toBe(3);
      expect(c.status?.connections).not.toBe(99);
      expect(c.metadata.generation).toBe(2);
      // ...a status write ignores the spec and leaves the generation alone...
      const status = {
        observedGeneration: 2,
        connections: 1234,
        gatewayDesiredReplicas: 2,
        provisionedGeneration: 2,
        components: {
          gateway: { replicas: 2, readyReplicas: 2 },
          id: { replicas: 1, readyReplicas: 1 },
          sequencer: { replicas: 2, readyReplicas: 1 },
        },
        gateways: [
          { pod: "columns-gateway-a", connections: 1000, draining: false },
          { pod: "columns-gateway-b", connections: 234, draining: true },
        ],
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
      };
      const writeStatus = async () =>
        (await kube.request(
          "PATCH",
          `${resourcePath(ref("columns"))}/status`,
          { spec: { router: { replicas: 7 } }, status },
          "application/merge-patch+json",
        )) as ChatCluster;
      const withStatus = await writeStatus();
      expect(withStatus.metadata.generation).toBe(2);
      expect(withStatus.spec.router.replicas).toBe(3);
      expect(withStatus.status).toMatchObject(status);
      // ...and a spec update, even a whole-object replace carrying another status, keeps the status.
      const [before, after] = await retryOnConflict(async () => {
        const current = await kube.get<ChatCluster>(ref("columns"));
        const replaced = await kube.replace<ChatCluster>({
          ...current,
          spec: { ...current.spec, version: "0.2.0" },
          status: { connections: 0 },
        });
        return [current, replaced] as const;
      });
      expect(after.spec.version).toBe("0.2.0");
      expect(after.metadata.generation).toBe(3);
      expect(after.status).toEqual(before.status);

      // The printer columns, read from the status just written (written again should anything else
      // have changed it in between).
      const row = await waitFor("the printer columns", async () => {
        const table = await kubectl(tools, ["get", "chat", "columns", "-n", NS]);
        const [header, line] = table.split("\n");
        expect(header).toMatch(/^NAME\s+READY\s+GATEWAYS\s+CONNECTIONS\s+VERSION\s+AGE$/);
        if (/^columns\s+True\s+2\s+1234\s+0\.2\.0\s+\S+$/.test(line ?? "")) return line;
        await writeStatus();
        return undefined;
      });
      expect(row).toMatch(/^columns\s+True\s+2\s+1234\s+0\.2\.0\s+\S+$/);
    } finally {
      await removeClusters();
    }
  });
});

interface Schema {
  description?: string;
  enum?: unknown[];
  properties?: Record<string, Schema>;
  items?: Schema;
  additionalProperties?: Schema | boolean;
}
