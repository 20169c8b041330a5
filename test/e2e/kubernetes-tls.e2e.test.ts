/**
 * spec.grpc.tls end to end (ADR 0007): the chart's operator runs a ChatCluster with mTLS on every gRPC
 * port, its Pods real `switchboard` processes of the node agent (ADR 0006). The Secrets are made by
 * openssl here, as provided Secrets (no issuerRef): cert-manager is not part of the test plane, and
 * the operator treats a Secret it filled and one it was given alike. Two users on the gateway exchange
 * a message (gateway → router Relay and router → gateway Deliver, each side presenting its role's
 * certificate and checking the other's), and a backend client authenticated by its certificate alone
 * (`certificate` in spec.api.clients) sends through the server API; plaintext and a certificate of
 * another CA are refused.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes, X509Certificate } from "node:crypto";
import { once } from "node:events";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { PeerCertificate } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { KubeConfig, type V1Pod } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ChatService } from "../../gen/switchboard/api/v1/chat_pb.js";
import { DEV_SECRET_FILE, signDevToken } from "../../internal/lib/auth.js";
import { grpcClient } from "../../internal/lib/rpc.js";
import type { ChatCluster } from "../../operator/api/v1alpha1.js";
import { KubeClient } from "../../operator/kube/client.js";
import { type IncomingMessage, SwitchboardClient } from "../../sdk/src/index.js";
import { type Issued, TestPki } from "../helpers/certificates.js";
import { ensureServer } from "../infra/servers.js";
import { kubectl as kubectlWith, kubeTools, root, type Tools, waitFor } from "../kube/helpers.js";
import {
  installChartOperator,
  type OperatorProcess,
  removeChartAndClusters,
} from "../kube/operator-process.js";

const suffix = randomBytes(3).toString("hex");
const NS = `sb-e2etls-${suffix}`;
const SYSTEM_NS = `sb-e2etls-sys-${suffix}`;
const RELEASE = `sbe2etls-${suffix}`;
const CHART = { release: RELEASE, systemNamespace: SYSTEM_NS };
const NODE = `sb-e2etls-node-${suffix}`;
const CLUSTER = "chat";
const SERVING = ["id", "router", "presence", "push", "gateway"] as const;

let tools: Tools;
let kube: KubeClient;
let operator: OperatorProcess;
let agent: ChildProcess | undefined;
let agentLog = "";
let stateDir: string;
let tokenDir: string;
const pki = new TestPki();
const ca = pki.ca("chat-ca");
const clients: SwitchboardClient[] = [];
const grpcClients: Array<{ close(): void }> = [];

const kubectl = (args: string[], input?: string) => kubectlWith(tools, args, input);

function apiServerHost(): string {
  const kc = new KubeConfig();
  kc.loadFromFile(tools.KUBECONFIG);
  const server = kc.getCurrentCluster()?.server;
  if (!server) throw new Error(`no server in ${tools.KUBECONFIG}`);
  return new URL(server).host;
}

async function startAgent(dns: string): Promise<void> {
  const child = spawn(
    process.execPath,
    [
      join(root, "dist/test/infra/node-agent/main.js"),
      ...["--kubeconfig", tools.KUBECONFIG, "--node", NODE],
      // Not loopback (the apiserver refuses loopback IPs in EndpointSlices); apart from the other e2e's.
      ...["--pod-cidr", `198.19.${220 + (process.pid % 10)}.0/24`],
      ...["--dns", dns, "--state-dir", stateDir],
      ...["--image", `switchboard=${process.execPath} ${join(root, "dist/cmd/switchboard.js")}`],
      ...["--api-server", apiServerHost()],
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  agent = child;
  child.stderr?.setEncoding("utf8").on("data", (d: string) => {
    agentLog = (agentLog + d).slice(-100_000);
  });
  let out = "";
  child.stdout?.setEncoding("utf8").on("data", (d: string) => (out += d));
  await waitFor("node agent start", async () => out.includes('"started"') || undefined, 60_000);
}

function tlsCluster(kafka: string[], cassandra: string[], datacenter: string): ChatCluster {
  const onAgentNode = {
    replicas: 1,
    scheduling: {
      nodeSelector: { "switchboard.dev/node-agent": "true" },
      tolerations: [{ key: "switchboard.dev/node-agent", operator: "Exists", effect: "NoSchedule" }],
    },
  };
  return {
    apiVersion: "switchboard.dev/v1alpha1",
    kind: "ChatCluster",
    metadata: { name: CLUSTER, namespace: NS },
    spec: {
      gateway: onAgentNode,
      router: onAgentNode,
      presence: onAgentNode,
      push: onAgentNode,
      id: onAgentNode,
      sequencer: onAgentNode,
      kafka: {
        bootstrapServers: kafka,
        topicPrefix: `e2etls-${suffix}.`,
        topics: { partitions: 2, replicationFactor: 1, retentionHours: 1 },
      },
      cassandra: {
        contactPoints: cassandra,
        datacenter,
        keyspace: `e2etls_${suffix}`,
        replication: { class: "SimpleStrategy", factor: 1 },
      },
      auth: { secretRef: { name: "chat-auth", key: "secret" } },
      grpc: { tls: { enabled: true } },
      api: {
        clients: [
          {
            name: "billing",
            certificate: { uri: "switchboard://client:billing" },
            permissions: ["sendToUsers"],
          },
        ],
      },
    },
  } as unknown as ChatCluster;
}

/** The Secret of a component's certificate, as cert-manager would write it. */
async function createTlsSecret(component: string): Promise<void> {
  const identity = pki.issue(ca, { uri: `switchboard://role:${component}` });
  const data = { "tls.crt": identity.cert, "tls.key": identity.key, "ca.crt": ca.cert };
  await kube.create({
    apiVersion: "v1",
    kind: "Secret",
    metadata: { name: `${CLUSTER}-${component}-grpc-tls`, namespace: NS },
    type: "kubernetes.io/tls",
    data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v).toString("base64")])),
  } as never);
}

async function readyPod(component: string): Promise<V1Pod> {
  const { items } = await kube.list<V1Pod>(
    { apiVersion: "v1", kind: "Pod", namespace: NS },
    `app.kubernetes.io/instance=${CLUSTER},app.kubernetes.io/component=${component}`,
  );
  const pod = items.find(
    (p) =>
      !p.metadata?.deletionTimestamp &&
      p.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") &&
      p.status.podIP,
  );
  if (!pod) throw new Error(`no ready ${component} Pod`);
  return pod;
}

/** A server API client on a router Pod: TLS with `identity` (or none), accepting only role:router. */
function billingClient(routerIp: string, identity: Issued | undefined, trusted: Issued = ca) {
  const credentials = grpc.credentials.createSsl(
    Buffer.from(trusted.cert),
    identity ? Buffer.from(identity.key) : null,
    identity ? Buffer.from(identity.cert) : null,
    {
      checkServerIdentity: (_host: string, cert: PeerCertificate) =>
        new X509Certificate(cert.raw).subjectAltName?.includes("URI:switchboard://role:router")
          ? undefined
          : new Error("not a router"),
    },
  );
  const client = grpcClient(ChatService, `${routerIp}:9090`, {
    credentials,
    serverName: "router.switchboard",
  });
  grpcClients.push(client);
  return client;
}

beforeAll(async () => {
  tools = await kubeTools();
  const kubeEnv = await ensureServer("kube");
  const storage = { ...(await ensureServer("kafka")), ...(await ensureServer("cassandra")) };
  const kc = new KubeConfig();
  kc.loadFromFile(tools.KUBECONFIG);
  kube = new KubeClient(kc);
  stateDir = mkdtempSync(join(tmpdir(), "switchboard-e2etls-agent-"));
  tokenDir = mkdtempSync(join(tmpdir(), "switchboard-e2etls-token-"));
  const secret = randomBytes(32).toString("hex");
  mkdirSync(tokenDir, { recursive: true });
  writeFileSync(join(tokenDir, DEV_SECRET_FILE), secret, { mode: 0o600 });
  const dns = kubeEnv.CLUSTER_DNS;
  if (!dns) throw new Error("test/infra/up.sh kube printed no CLUSTER_DNS (the plane's CoreDNS)");
  await startAgent(dns);
  operator = await installChartOperator(tools, CHART);
  await operator.start();
  await kubectl(["create", "namespace", NS]);
  await kubectl(["label", "namespace", NS, "pod-security.kubernetes.io/enforce=restricted"]);
  await kubectl(["create", "secret", "generic", "chat-auth", "-n", NS, `--from-literal=secret=${secret}`]);
  await waitFor("default ServiceAccount", () => kubectl(["get", "serviceaccount", "default", "-n", NS]));
  for (const component of SERVING) await createTlsSecret(component);
  await kube.create(
    tlsCluster(
      (storage.KAFKA_BROKERS as string).split(","),
      (storage.CASSANDRA_CONTACT_POINTS as string).split(","),
      storage.CASSANDRA_DATACENTER ?? "datacenter1",
    ),
  );
}, 600_000);

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close()));
  for (const c of grpcClients) c.close();
  await operator?.kill("SIGTERM");
  if (agent && agent.exitCode === null) {
    const exited = once(agent, "exit");
    agent.kill("SIGTERM");
    await exited;
  }
  if (tools) await removeChartAndClusters(tools, CHART, NS);
  rmSync(stateDir, { recursive: true, force: true });
  rmSync(tokenDir, { recursive: true, force: true });
  pki.close();
}, 300_000);

function onFailure(fn: () => Promise<void>): () => Promise<void> {
  return async () => {
    try {
      await fn();
    } catch (err) {
      console.error(`--- operator log (tail) ---\n${operator.tail(30)}`);
      console.error(`--- node agent log (tail) ---\n${agentLog.trimEnd().split("\n").slice(-30).join("\n")}`);
      throw err;
    }
  };
}

describe("Switchboard on Kubernetes with spec.grpc.tls, end to end", () => {
  it(
    "runs every role over mTLS: users exchange messages, a certificate client sends through the server API, plaintext and a foreign CA are refused",
    onFailure(async () => {
      await waitFor(
        "the ChatCluster Ready, GrpcTLS True",
        async () => {
          const c = await kube.get<ChatCluster>({
            apiVersion: "switchboard.dev/v1alpha1",
            kind: "ChatCluster",
            namespace: NS,
            name: CLUSTER,
          });
          const status = (type: string) => c.status?.conditions?.find((x) => x.type === type)?.status;
          return (
            status("Ready") === "True" &&
            status("GrpcTLS") === "True" &&
            c.status?.observedGeneration === c.metadata.generation
          );
        },
        240_000,
      );
      const gateway = await readyPod("gateway");
      const router = await readyPod("router");

      // Two users on the gateway: alice's message goes gateway → router (Relay) → gateway (Deliver).
      const user = (id: string) => {
        const client = new SwitchboardClient({
          url: `ws://${gateway.status?.podIP}:8080/ws`,
          token: () => signDevToken(tokenDir, id, 3600),
          reconnect: { baseMs: 100, maxMs: 2_000 },
        });
        clients.push(client);
        const shown: string[] = [];
        client.on("message", (m: IncomingMessage) => shown.push(`${m.message.sender}: ${m.message.body}`));
        return { client, shown };
      };
      const alice = user("tls-alice");
      const bob = user("tls-bob");
      await Promise.all([
        alice.client.connect({ timeoutMs: 60_000 }),
        bob.client.connect({ timeoutMs: 60_000 }),
      ]);
      await alice.client.send({ toUser: "tls-bob" }, "over mTLS");
      await waitFor(
        "bob receives alice's message",
        async () => bob.shown.includes("tls-alice: over mTLS") || undefined,
        30_000,
      );

      // A backend client authenticated by its certificate alone (no token), as spec.api.clients names it.
      const billing = billingClient(
        router.status?.podIP ?? "",
        pki.issue(ca, { uri: "switchboard://client:billing" }),
      );
      const sent = await billing.sendToUser({
        userId: "tls-bob",
        idempotencyKey: "receipt-1",
        body: "your receipt",
      });
      expect(sent.message?.sender).toBe("bot:billing");
      await waitFor(
        "bob receives the receipt",
        async () => bob.shown.includes("bot:billing: your receipt") || undefined,
        30_000,
      );

      // Without a certificate or a token: UNAUTHENTICATED (the port admits bearer callers, so the
      // handshake lets it through and the call is refused).
      const anonymous = billingClient(router.status?.podIP ?? "", undefined);
      await expect(
        anonymous.sendToUser({ userId: "tls-bob", idempotencyKey: "r2", body: "x" }),
      ).rejects.toMatchObject({
        code: grpc.status.UNAUTHENTICATED,
      });
      // A certificate of another CA: no credential either.
      const foreignCa = pki.ca("foreign-ca");
      const foreign = billingClient(
        router.status?.podIP ?? "",
        pki.issue(foreignCa, { uri: "switchboard://client:billing" }),
      );
      await expect(
        foreign.sendToUser({ userId: "tls-bob", idempotencyKey: "r3", body: "x" }),
      ).rejects.toThrow();
      // Plaintext to the TLS port: no call at all.
      const plaintext = grpcClient(ChatService, `${router.status?.podIP}:9090`);
      grpcClients.push(plaintext);
      await expect(
        plaintext.sendToUser({ userId: "tls-bob", idempotencyKey: "r4", body: "x" }, { timeoutMs: 5_000 }),
      ).rejects.toThrow();
      expect(bob.shown.filter((s) => s.endsWith(": x"))).toEqual([]);
    }),
    420_000,
  );
});
