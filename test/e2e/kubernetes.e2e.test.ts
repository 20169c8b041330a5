import { readFileSync } from "node:fs";
import { join } from "node:path";
import { loadAllYaml, type V1Pod } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { signDevToken } from "../../internal/lib/auth.js";
import type { ChatCluster } from "../../operator/api/v1alpha1.js";
import type { KubeClient } from "../../operator/kube/client.js";
import { type IncomingMessage, SwitchboardClient } from "../../sdk/src/index.js";
import { root, waitFor } from "../kube/helpers.js";
import { checkHistory, type DeviceRecord, type SentRecord, type StoredRecord } from "./checker.js";
import { type Plane, reportingFailure, startPlane } from "./plane.js";

const CLUSTER = "chat";
const USERS = 100; // × 2 devices = 200 clients
const GROUPS = 4;
const GROUP_SIZE = 20;
/** Gateways hold ~100 connections each at the target: 200 devices → 2 gateways, +200 idle → 4. */
const TARGET_CONNECTIONS = 110;
const TRAFFIC_MIN_MS = 60_000;

let plane: Plane;
/** Shorthands for the plane's, set in beforeAll. */
let NS: string;
let suffix: string;
let kube: KubeClient;
/** A data dir holding the same HS256 secret the gateways read from the auth Secret. */
let tokenDir: string;
const kubectl = (args: string[], input?: string) => plane.kubectl(args, input);

/** The example ChatCluster, pointed at the test servers and scheduled onto the agent's node. */
function exampleCluster(kafka: string[], cassandra: string[], datacenter: string): ChatCluster {
  const docs = loadAllYaml(readFileSync(join(root, "k8s/examples/chatcluster.yaml"), "utf8")) as Array<{
    kind: string;
  }>;
  const c = structuredClone(docs.find((d) => d.kind === "ChatCluster")) as unknown as ChatCluster;
  c.metadata.namespace = NS;
  const s = c.spec as unknown as Record<string, Record<string, unknown>>;
  const onAgentNode = {
    nodeSelector: { "switchboard.dev/node-agent": "true" },
    tolerations: [{ key: "switchboard.dev/node-agent", operator: "Exists", effect: "NoSchedule" }],
  };
  for (const component of ["gateway", "router", "presence", "push", "id", "sequencer"]) {
    const spec = s[component]!;
    spec.scheduling = { ...(spec.scheduling as object), ...onAgentNode };
    spec.resources = {}; // none (not the defaults): the agent runs no cgroups; requests would only constrain scheduling
  }
  // Fewer replicas than production (2 cores run everything here); still 2+ of what the test kills.
  s.router!.replicas = 2;
  s.presence!.replicas = 2;
  s.push!.replicas = 1;
  s.id!.replicas = 2;
  s.sequencer!.replicas = 2;
  s.gateway!.autoscaling = {
    enabled: true,
    minReplicas: 2,
    maxReplicas: 4,
    targetConnectionsPerPod: TARGET_CONNECTIONS,
    stabilizationWindowSeconds: 10,
    drainTimeoutSeconds: 20,
  };
  delete s.gateway!.service;
  delete s.push!.webhook;
  s.kafka = {
    bootstrapServers: kafka,
    topicPrefix: `e2e-${suffix}.`,
    topics: { partitions: 4, replicationFactor: 1, retentionHours: 1 },
  };
  s.cassandra = {
    contactPoints: cassandra,
    datacenter,
    keyspace: `e2e_${suffix}`,
    replication: { class: "SimpleStrategy", factor: 1 },
  };
  s.auth = { secretRef: { name: "chat-auth", key: "secret" } };
  return c;
}

const pods = async (component: string): Promise<V1Pod[]> =>
  (
    JSON.parse(
      await kubectl([
        "get",
        "pods",
        "-n",
        NS,
        "-l",
        `app.kubernetes.io/instance=${CLUSTER},app.kubernetes.io/component=${component}`,
        "-o",
        "json",
      ]),
    ) as { items: V1Pod[] }
  ).items;

const isReady = (p: V1Pod) =>
  !p.metadata?.deletionTimestamp &&
  p.status?.phase === "Running" &&
  p.status.conditions?.some((c) => c.type === "Ready" && c.status === "True") === true;

async function readyGateways(): Promise<string[]> {
  const { items } = await kube.list<V1Pod>(
    { apiVersion: "v1", kind: "Pod", namespace: NS },
    `app.kubernetes.io/instance=${CLUSTER},app.kubernetes.io/component=gateway`,
  );
  return items
    .filter(isReady)
    .map((p) => p.status?.podIP ?? "")
    .filter(Boolean)
    .sort();
}

/** The ready gateways as clients see them: one API read shared by every device connecting at once. */
let gatewayView: { at: number; ips: Promise<string[]> } | undefined;
function currentGateways(): Promise<string[]> {
  if (!gatewayView || Date.now() - gatewayView.at > 1_000)
    gatewayView = { at: Date.now(), ips: readyGateways() };
  return gatewayView.ips;
}

async function getCluster(): Promise<ChatCluster> {
  return kube.get<ChatCluster>({
    apiVersion: "switchboard.dev/v1alpha1",
    kind: "ChatCluster",
    namespace: NS,
    name: CLUSTER,
  });
}

async function waitClusterReady(what: string, timeoutMs = 180_000): Promise<number> {
  const started = Date.now();
  await waitFor(
    what,
    async () => {
      const c = await getCluster();
      const ready = c.status?.conditions?.find((x) => x.type === "Ready");
      return ready?.status === "True" && c.status?.observedGeneration === c.metadata.generation;
    },
    timeoutMs,
  );
  return Date.now() - started;
}

/** The process id the agent runs a Pod's container as (`agent://<pid>`). */
function containerPid(p: V1Pod): number {
  const id = p.status?.containerStatuses?.[0]?.containerID ?? "";
  const pid = Number(/^agent:\/\/(\d+)$/.exec(id)?.[1]);
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`no process for ${p.metadata?.name}: ${id}`);
  return pid;
}

interface Device extends DeviceRecord {
  client: SwitchboardClient;
  gateways: string[];
}

/** A device whose connection goes to a ready gateway chosen through that gateway's /v1/connect. */
function device(userId: string, index: number, preferred: number): Device {
  let next = preferred;
  const d: Device = {
    name: `${userId}/${index}`,
    userId,
    shown: [],
    gateways: [],
    client: new SwitchboardClient({
      url: async () => {
        const ips = await currentGateways();
        if (ips.length === 0) throw new Error("no ready gateway");
        const ip = ips[next++ % ips.length]!;
        const res = await fetch(`http://${ip}:8080/v1/connect`, { signal: AbortSignal.timeout(10_000) });
        // 503 from a gateway that began to drain since it was listed: the SDK asks again.
        if (!res.ok) throw new Error(`${ip}: /v1/connect answered ${res.status}`);
        const { url } = (await res.json()) as { url: string };
        d.gateways.push(ip);
        return url;
      },
      token: () => signDevToken(tokenDir, userId, 3600),
      reconnect: { baseMs: 100, maxMs: 2_000 },
    }),
  };
  clients.push(d.client);
  d.client.on("message", (m: IncomingMessage) => {
    d.shown.push(m.message);
    const sentAt = sentAtByBody.get(m.message.body);
    if (sentAt !== undefined) latencies.push(performance.now() - sentAt);
  });
  return d;
}

const sentAtByBody = new Map<string, number>();
/** Every client the test opened (closed in afterAll whatever happened). */
const clients: SwitchboardClient[] = [];
const latencies: number[] = [];
const percentile = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? Number.NaN;
};

beforeAll(async () => {
  plane = await startPlane({ name: "e2e", podSubnet: 240 });
  ({ namespace: NS, suffix, kube, tokenDir } = plane);
  const cluster = exampleCluster(plane.storage.kafka, plane.storage.cassandra, plane.storage.datacenter);
  await kube.create(cluster);
}, 600_000);

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await plane?.close();
}, 300_000);

const onFailure = (fn: () => Promise<void>) => reportingFailure(() => plane, fn);

describe("Switchboard on Kubernetes, end to end", () => {
  it(
    "runs the example ChatCluster as real processes and keeps every message through gateway loss, a router kill -9, a rolling update and scaling",
    onFailure(async () => {
      const readyMs = await waitClusterReady("the ChatCluster Ready");
      for (const component of ["gateway", "router"]) {
        const ps = (await pods(component)).filter(isReady);
        expect(ps.length, `${component} Pods`).toBeGreaterThanOrEqual(2);
        for (const p of ps) {
          expect(p.spec?.nodeName).toBe(plane.node);
          process.kill(containerPid(p), 0); // a live process, not a kwok fake
          const res = await fetch(`http://${p.status?.podIP}:8080/readyz`);
          expect(res.status).toBe(200);
          // Metrics on the internal port (the PodMonitor's `internal`), none on the clients' port.
          const metrics = await fetch(`http://${p.status?.podIP}:9091/metrics`);
          expect(metrics.status).toBe(200);
          expect(await metrics.text()).toMatch(/^# HELP switchboard_/m);
          expect((await fetch(`http://${p.status?.podIP}:8080/metrics`)).status).toBe(404);
        }
      }
      process.stdout.write(`e2e: ChatCluster Ready with live processes in ${readyMs} ms\n`);

      // 100 users, two devices each on different gateways.
      const devices: Device[] = [];
      for (let u = 0; u < USERS; u++) for (const i of [0, 1]) devices.push(device(`e2e-${u}`, i, u + i));
      await Promise.all(devices.map((d) => d.client.connect({ timeoutMs: 60_000 })));
      expect(new Set(devices.flatMap((d) => d.gateways)).size).toBeGreaterThanOrEqual(2);
      const first = new Map<string, Device>();
      for (const d of devices) if (!first.has(d.userId)) first.set(d.userId, d);
      const deviceOf = (u: number) => first.get(`e2e-${u}`)!;

      // Conversations: 50 pairs (1:1) and 4 groups of 20.
      const members = new Map<string, Set<string>>();
      const conversations: Array<{
        target: { toUser: string } | { conversationId: string };
        from: number[];
        id?: string;
      }> = [];
      for (let u = 0; u < USERS; u += 2) {
        const [a, b] = [`e2e-${u}`, `e2e-${u + 1}`].sort() as [string, string];
        members.set(`dm:${a}~${b}`, new Set([a, b]));
        conversations.push({ target: { toUser: `e2e-${u + 1}` }, from: [u], id: `dm:${a}~${b}` });
      }
      for (let g = 0; g < GROUPS; g++) {
        const users = Array.from({ length: GROUP_SIZE }, (_, i) => (g * GROUP_SIZE + i) % USERS);
        const created = await deviceOf(users[0]!).client.createGroup({
          name: `e2e ${g}`,
          members: users.slice(1).map((u) => `e2e-${u}`),
        });
        members.set(created.id, new Set(users.map((u) => `e2e-${u}`)));
        conversations.push({ target: { conversationId: created.id }, from: users, id: created.id });
      }

      // Traffic: ~8 messages a second, from a random member's device, until the faults are done.
      const sent: SentRecord[] = [];
      const pending: Array<Promise<unknown>> = [];
      /** Sends that failed for good (the SDK retries until its deadline): each one is a finding. */
      const sendFailures: string[] = [];
      let sending = true;
      let n = 0;
      const traffic = (async () => {
        while (sending) {
          const c = conversations[n % conversations.length]!;
          const from = c.from[Math.floor(n / conversations.length) % c.from.length]!;
          const sender = devices.find((d) => d.userId === `e2e-${from}` && d.name.endsWith(`/${n % 2}`))!;
          const body = `e2e ${n} from ${from}`;
          const record: SentRecord = { conversationId: c.id!, sender: sender.userId, body };
          sent.push(record);
          sentAtByBody.set(body, performance.now());
          pending.push(
            sender.client.send(c.target, body).then(
              (ack) => {
                record.ack = { messageId: ack.messageId, seq: ack.seq };
              },
              (error: unknown) => {
                sendFailures.push(`${body}: ${error instanceof Error ? error.message : String(error)}`);
              },
            ),
          );
          n++;
          await new Promise((r) => setTimeout(r, 125));
        }
      })();
      const trafficStarted = Date.now();
      /** The devices of the message's conversation that have not shown it yet. */
      const lacking = (body: string) =>
        devices
          .filter((d) => members.get(sent.find((s) => s.body === body)!.conversationId)?.has(d.userId))
          .filter((d) => !d.shown.some((m) => m.body === body));
      const delivered = (body: string) => lacking(body).length === 0;
      /** Time from `since` until a message sent now reaches every device of its conversation. */
      const recovery = async (what: string, since: number) => {
        const probe = sent.length;
        await waitFor(
          `${what}: traffic delivered again`,
          async () => sent.length > probe + 8 || undefined,
          120_000,
        );
        await waitFor(
          `${what}: recovered`,
          async () => {
            const record = sent[probe + 8]!;
            const missing = lacking(record.body);
            if (missing.length === 0) return true;
            // Says, if the wait times out, where the message got stuck.
            throw new Error(
              `"${record.body}" ${record.ack ? `acked as seq ${record.ack.seq}` : "not acked"}, not shown on ${missing
                .map((d) => `${d.name} (${d.client.state}, ${d.client.pendingSends} sends pending)`)
                .join(
                  ", ",
                )}; ${sendFailures.length} sends failed${sendFailures.length ? `, first: ${sendFailures[0]}` : ""}`,
            );
          },
          180_000,
        );
        return Date.now() - since;
      };
      const recoveries: Record<string, number> = {};
      try {
        await new Promise((r) => setTimeout(r, 5_000));

        // 1. A gateway Pod is deleted: its clients reconnect to the others and resume.
        const victim = (await pods("gateway")).filter(isReady)[0]!;
        let t = Date.now();
        await kubectl(["delete", "pod", "-n", NS, victim.metadata!.name!, "--wait=false"]);
        recoveries["gateway Pod deleted"] = await recovery("gateway deleted", t);

        // 2. A router process is killed with -9.
        const router = (await pods("router")).filter(isReady)[0]!;
        t = Date.now();
        process.kill(containerPid(router), "SIGKILL");
        recoveries["router kill -9"] = await recovery("router killed", t);

        // 3. The gateways roll: a gateway-only spec change.
        t = Date.now();
        await kube.mergePatch(
          { apiVersion: "switchboard.dev/v1alpha1", kind: "ChatCluster", namespace: NS, name: CLUSTER },
          { spec: { gateway: { resources: { requests: { memory: "96Mi" } } } } },
        );
        await waitClusterReady("the gateways rolled");
        recoveries["rolling update of the gateways"] = await recovery("rolled", t);

        // 4. Scale up by adding connections, then back down (drain first).
        t = Date.now();
        const extra = Array.from({ length: 2 * TARGET_CONNECTIONS }, (_, i) => device(`e2e-idle-${i}`, 0, i));
        await Promise.all(extra.map((d) => d.client.connect({ timeoutMs: 60_000 })));
        await waitFor("4 gateways", async () => (await readyGateways()).length >= 4 || undefined, 180_000);
        recoveries["scale-up to 4 gateways"] = Date.now() - t;
        await Promise.all(extra.map((d) => d.client.close()));
        t = Date.now();
        await waitFor(
          "back to 2 gateways",
          async () => (await readyGateways()).length === 2 || undefined,
          240_000,
        );
        recoveries["scale-down to 2 (drained)"] = await recovery("scaled down", t);

        const elapsed = Date.now() - trafficStarted;
        if (elapsed < TRAFFIC_MIN_MS) await new Promise((r) => setTimeout(r, TRAFFIC_MIN_MS - elapsed));
      } finally {
        // Stop the traffic whatever happened, so that a failed step is reported as itself and not
        // as a stream of sends on clients that the clean-up closed.
        sending = false;
        await traffic;
        await Promise.all(pending);
      }
      // Everything acked must reach every device; give the tail time to arrive.
      await waitFor(
        "every message on every device",
        async () => sent.every((s) => delivered(s.body)) || undefined,
        120_000,
      ).catch(
        () => undefined, // the checker below says precisely what is missing
      );
      await new Promise((r) => setTimeout(r, 1_000));

      // The stored history of every conversation, read back through a member's device.
      const stored = new Map<string, StoredRecord[]>();
      for (const c of conversations) {
        const reader = deviceOf(c.from[0]!);
        const rows: StoredRecord[] = [];
        for (let after = 0; ; ) {
          const page = await reader.client.history({ conversationId: c.id!, afterSeq: after, limit: 500 });
          rows.push(...page.messages.map((m) => ({ ...m })));
          if (!page.hasMore || page.messages.length === 0) break;
          after = page.messages.at(-1)!.seq;
        }
        stored.set(c.id!, rows);
      }
      const summary = checkHistory({ sent, stored, members, devices });
      process.stdout.write(
        `e2e: ${summary.messagesAcked} messages acked, ${summary.messagesStored} stored, ${summary.deliveriesChecked} deliveries checked on ${devices.length} devices over ${Math.round((Date.now() - trafficStarted) / 1000)} s\n` +
          `e2e: send→deliver across processes p50 ${percentile(latencies, 50).toFixed(0)} ms, p99 ${percentile(latencies, 99).toFixed(0)} ms (${latencies.length} deliveries)\n` +
          `e2e: recovery ${Object.entries(recoveries)
            .map(([k, v]) => `${k} ${(v / 1000).toFixed(1)} s`)
            .join("; ")}\n`,
      );
      expect(summary.violations).toEqual([]);
      expect(sendFailures).toEqual([]);
      expect(summary.messagesAcked).toBe(sent.length);
      await Promise.all(devices.map((d) => d.client.close()));
    }),
    1_200_000,
  );
});
