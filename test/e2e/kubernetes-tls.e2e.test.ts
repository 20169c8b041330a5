import { X509Certificate } from "node:crypto";
import type { PeerCertificate } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import type { V1Pod } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ChatService } from "../../gen/switchboard/api/v1/chat_pb.js";
import { signDevToken } from "../../internal/lib/auth.js";
import { grpcClient } from "../../internal/lib/rpc.js";
import type { ChatCluster } from "../../operator/api/v1alpha1.js";
import type { KubeClient } from "../../operator/kube/client.js";
import { type IncomingMessage, SwitchboardClient } from "../../sdk/src/index.js";
import { type Issued, TestPki } from "../helpers/certificates.js";
import { waitFor } from "../kube/helpers.js";
import { type Plane, reportingFailure, startPlane } from "./plane.js";

const CLUSTER = "chat";
const SERVING = ["id", "router", "presence", "push", "gateway"] as const;

let plane: Plane;
/** Shorthands for the plane's, set in beforeAll. */
let NS: string;
let suffix: string;
let kube: KubeClient;
let tokenDir: string;
const pki = new TestPki();
const ca = pki.ca("chat-ca");
const clients: SwitchboardClient[] = [];
const grpcClients: Array<{ close(): void }> = [];

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
  plane = await startPlane({ name: "e2etls", podSubnet: 220 });
  ({ namespace: NS, suffix, kube, tokenDir } = plane);
  for (const component of SERVING) await createTlsSecret(component);
  await kube.create(tlsCluster(plane.storage.kafka, plane.storage.cassandra, plane.storage.datacenter));
}, 600_000);

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close()));
  for (const c of grpcClients) c.close();
  await plane?.close();
  pki.close();
}, 300_000);

const onFailure = (fn: () => Promise<void>) => reportingFailure(() => plane, fn);

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
