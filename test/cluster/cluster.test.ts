/**
 * The platform as separate processes (test/infra/cluster: 2 gateways, 2 routers, presence, push,
 * id, sequencer, each `switchboard start --role X`) on real Kafka and Cassandra: messages, typing,
 * receipts and presence cross from one gateway process to another; a router killed with -9 and a
 * gateway killed with -9 cost no acknowledged message, no duplicate and no reordering, and the
 * clients of the killed gateway resume on the other one; the same with the router and the gateway
 * frozen (SIGSTOP) past the session timeout and continued; the same when the network silently
 * drops the routers' open streams to a gateway, and when the sequencer, the id service and presence
 * (one process each) and a router are killed with -9 and restarted (the router rejoining its group as
 * the member it was); a push process killed with -9 while it
 * retries a notification leaves it to its restart, which sends it once; a pull-model channel's
 * messages cross gateways live. Prints the recovery times.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ChatService, type StreamEventsRequestSchema } from "../../gen/switchboard/api/v1/chat_pb.js";
import { Provider, PushService } from "../../gen/switchboard/push/v1/push_pb.js";
import { keyedGroupId } from "../../internal/conversations/conversations.js";
import { AsyncQueue } from "../../internal/lib/async-queue.js";
import { signDevToken } from "../../internal/lib/auth.js";
import { grpcClient } from "../../internal/lib/rpc.js";
import { defaultMemberFile } from "../../internal/process/backends.js";
import { pinnedRouter } from "../../internal/process/relay-routes.js";
import {
  type Conversation,
  type IncomingMessage,
  type PresenceStatus,
  type ReceiptInfo,
  SwitchboardClient,
  type TypingInfo,
} from "../../sdk/src/index.js";
import { OtlpReceiver, type OtlpSpan, resourceAttribute } from "../helpers/otlp-receiver.js";
import { WebhookReceiver } from "../helpers/push-stand-ins/webhook.js";
import { TcpProxy } from "../helpers/tcp-proxy.js";
import { freePortRange, LocalCluster } from "../infra/cluster/cluster.js";
import { ensureServer } from "../infra/servers.js";

let cluster: LocalCluster;
let runDir: string;
/** Receives the push process's webhook notifications (signed with WEBHOOK_SECRET). */
let webhook: WebhookReceiver;
const WEBHOOK_SECRET = "whsec-cluster-test";
/** Every process of the cluster exports its spans here. */
let receiver: OtlpReceiver;
/** Carries the routers' Deliver streams to gateway-1 (its advertised address), so a test can cut them. */
let gateway1Link: TcpProxy;

/** What a cluster process keeps in its consumer-group member file (kafka.memberFile's default). */
function memberFileOf(name: string): { pid: number; members: Record<string, string> } {
  const p = cluster.process(name);
  const path = join(cluster.state.tokenDataDir, defaultMemberFile(p.role, p.httpPort));
  return JSON.parse(readFileSync(path, "utf8")) as { pid: number; members: Record<string, string> };
}

beforeAll(async () => {
  const kafka = await ensureServer("kafka");
  const cassandra = await ensureServer("cassandra");
  runDir = mkdtempSync(join(tmpdir(), "switchboard-cluster-"));
  receiver = await OtlpReceiver.start();
  webhook = await new WebhookReceiver(WEBHOOK_SECRET).start();
  const secretFile = join(runDir, "webhook.secret");
  writeFileSync(secretFile, WEBHOOK_SECRET);
  gateway1Link = await TcpProxy.start();
  cluster = await LocalCluster.start({
    env: {
      ...receiver.env,
      // The server API's event stream reads the sequenced log.
      SWITCHBOARD_KAFKA_PUBLISH_SEQUENCED: "true",
      // Users' webhook devices on this machine's stand-in, signed.
      SWITCHBOARD_PUSH_ALLOW_PRIVATE_ENDPOINTS: "true",
      // Only the routers' own pings on their Deliver streams (router.deliverKeepaliveMs) may find the
      // silent cut below: the gateway's pings of its callers would end the dead streams too.
      SWITCHBOARD_GRPC_KEEPALIVE_MS: "60000",
      SWITCHBOARD_PUSH_WEBHOOK_SECRET_FILE: secretFile,
    },
    runDir,
    kafkaBrokers: kafka.KAFKA_BROKERS!,
    cassandraContactPoints: cassandra.CASSANDRA_CONTACT_POINTS!,
    cassandraDatacenter: cassandra.CASSANDRA_DATACENTER ?? "datacenter1",
    basePort: await freePortRange(16),
    envOf: (p) =>
      p.name === "gateway-1" ? { SWITCHBOARD_GATEWAY_ADVERTISE_ADDRESS: gateway1Link.address } : {},
  });
  gateway1Link.targetPort = cluster.process("gateway-1").grpcPort;
}, 300_000);

afterAll(async () => {
  await cluster?.stop();
  await gateway1Link?.close();
  receiver?.close();
  await webhook?.close();
  rmSync(runDir, { recursive: true, force: true });
});

interface Device {
  c: SwitchboardClient;
  received: IncomingMessage[];
  typing: TypingInfo[];
  receipts: ReceiptInfo[];
  presence: PresenceStatus[];
  /** The `conversation` events: groups of this user created or changed. */
  groups: Conversation[];
  urls: string[];
}

/** A device on gateway `gateway`; when that gateway goes away it moves to the next one. */
async function device(user: string, gateway: number): Promise<Device> {
  const urls = cluster.gatewayUrls;
  let next = gateway;
  const d: Device = {
    c: new SwitchboardClient({
      url: () => {
        const url = urls[next % urls.length]!;
        d.urls.push(url);
        next++;
        return url;
      },
      token: () => signDevToken(cluster.state.tokenDataDir, user, 600),
      reconnect: { baseMs: 50, maxMs: 500 },
    }),
    received: [],
    typing: [],
    receipts: [],
    presence: [],
    groups: [],
    urls: [],
  };
  d.c.on("message", (m) => d.received.push(m));
  d.c.on("typing", (t) => d.typing.push(t));
  d.c.on("receipt", (r) => d.receipts.push(r));
  d.c.on("presence", (p) => d.presence.push(p));
  d.c.on("conversation", (g) => d.groups.push(g));
  await d.c.connect();
  return d;
}

async function until(what: string, pred: () => boolean, timeoutMs = 30_000): Promise<number> {
  const started = Date.now();
  while (!pred()) {
    if (Date.now() - started > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return Date.now() - started;
}

/** The messages of one conversation a device received: each once, in seq order, 1..n. */
function expectExactlyOnceInOrder(d: Device, conversationId: string, bodies: string[]): void {
  const got = d.received.filter((m) => m.message.conversationId === conversationId);
  expect(got.map((m) => m.message.body)).toEqual(bodies);
  expect(got.map((m) => m.message.seq)).toEqual(bodies.map((_, i) => i + 1));
}

/**
 * `from` sends to `toUser` every 20 ms until `stop()`, which resolves with every send's ack (and
 * rejects if one failed). `bodies` grows with each send.
 */
function steadySends(from: Device, toUser: string) {
  const bodies: string[] = [];
  const sends: Array<Promise<unknown>> = [];
  let sending = true;
  const loop = (async () => {
    for (let i = 0; sending; i++) {
      const body = `m ${i}`;
      bodies.push(body);
      const sent = from.c.send({ toUser }, body);
      sent.catch(() => undefined); // awaited in stop(); a failure shows there
      sends.push(sent);
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  return {
    bodies,
    async stop(): Promise<unknown[]> {
      sending = false;
      await loop;
      return Promise.all(sends);
    },
  };
}

/** Stops `sender`; every send was acknowledged and reaches `to` once, in order. */
async function expectEveryAckDelivered(sender: ReturnType<typeof steadySends>, to: Device): Promise<void> {
  const acks = await sender.stop();
  expect(acks).toHaveLength(sender.bodies.length);
  await until(
    "every acked message reaches its recipient",
    () => to.received.length >= sender.bodies.length,
    60_000,
  );
  await settle();
  expectExactlyOnceInOrder(to, to.received[0]!.message.conversationId, sender.bodies);
}

const settle = () => new Promise((r) => setTimeout(r, 500)); // a duplicate would arrive now

/** `user`'s presence as `d` last heard it; asks again (in the background) at most every 250 ms. */
const presenceAsked = new WeakMap<Device, Map<string, { online?: boolean; askedAt: number }>>();
function presenceOf(d: Device, user: string): boolean | undefined {
  const ofDevice = presenceAsked.get(d) ?? new Map<string, { online?: boolean; askedAt: number }>();
  presenceAsked.set(d, ofDevice);
  const known = ofDevice.get(user) ?? { askedAt: 0 };
  ofDevice.set(user, known);
  if (Date.now() - known.askedAt >= 250) {
    known.askedAt = Date.now();
    d.c.subscribePresence([user]).then(
      (statuses) => {
        known.online = statuses.some((s) => s.userId === user && s.online);
      },
      () => undefined,
    );
  }
  return known.online;
}
/** How long a frozen process stays stopped: past the consumer groups' session timeout (10 s). */
const FREEZE_MS = 15_000;

describe("a multi-process cluster", () => {
  it("delivers 1:1 and group messages, typing, receipts and presence across gateway processes", async () => {
    const alice = await device("x-alice", 0);
    const bobPhone = await device("x-bob", 1);
    const bobLaptop = await device("x-bob", 0);
    const carol = await device("x-carol", 1);

    const started = performance.now();
    const bodies = Array.from({ length: 30 }, (_, i) => `dm ${i}`);
    const acks = await Promise.all(bodies.map((b) => alice.c.send({ toUser: "x-bob" }, b)));
    expect(acks.map((a) => a.seq)).toEqual(bodies.map((_, i) => i + 1));
    const dm = acks[0]!.conversationId;
    await until("bob's phone (other gateway) gets all 30", () => bobPhone.received.length >= 30);
    const crossMs = performance.now() - started;
    await until("bob's laptop (same gateway) gets all 30", () => bobLaptop.received.length >= 30);
    await settle();
    expectExactlyOnceInOrder(bobPhone, dm, bodies);
    expectExactlyOnceInOrder(bobLaptop, dm, bodies);
    expect(bobPhone.received.every((m) => m.source === "live")).toBe(true);

    const group = await carol.c.createGroup({ name: "cross", members: ["x-alice", "x-bob"] });
    // The members hear of it at once, on both gateways (relayed by a router for carol's gateway).
    await until("the group's creation reaches every member's devices", () =>
      [alice, bobPhone, bobLaptop].every((d) =>
        d.groups.some((g) => g.id === group.id && g.memberCount === 3),
      ),
    );
    const groupBodies = Array.from({ length: 10 }, (_, i) => `group ${i}`);
    for (const b of groupBodies) await carol.c.send({ conversationId: group.id }, b);
    await until("group messages on both gateways, and the sender's own", () =>
      [alice, bobPhone, bobLaptop, carol].every(
        (d) => d.received.filter((m) => m.message.conversationId === group.id).length >= 10,
      ),
    );
    await settle();
    for (const d of [alice, bobPhone, bobLaptop, carol]) expectExactlyOnceInOrder(d, group.id, groupBodies);

    alice.c.typing(group.id, true);
    await until("typing reaches the other gateway", () =>
      carol.typing.some((t) => t.userId === "x-alice" && t.typing),
    );
    await bobPhone.c.markRead(dm, 30);
    await until("read receipt reaches the other gateway", () =>
      alice.receipts.some((r) => r.userId === "x-bob" && r.kind === "read" && r.seq === 30),
    );
    const statuses = await carol.c.subscribePresence(["x-alice"]);
    expect(statuses).toMatchObject([{ userId: "x-alice", online: true }]);
    // A push token registered through a gateway lands in the push process.
    await bobPhone.c.registerDevice({ deviceId: "bob-phone", provider: "fcm", token: "fcm-token-1" });
    const pushAddress = `127.0.0.1:${cluster.process("push-0").grpcPort}`;
    // The processes' gRPC ports admit only authenticated callers (docs/adr/0007).
    const anonymous = grpcClient(PushService, pushAddress);
    await expect(anonymous.listDevices({ userId: "x-bob" })).rejects.toMatchObject({
      reason: "UNAUTHENTICATED",
    });
    anonymous.close();
    // A backend client, even one with every permission, is refused the push process's internal
    // method; it reads the devices through the server API, whose router asks the push process.
    const push = grpcClient(PushService, pushAddress, { bearer: () => cluster.probeKey() });
    await expect(push.listDevices({ userId: "x-bob" })).rejects.toMatchObject({
      reason: "METHOD_NOT_ALLOWED",
    });
    push.close();
    const api = grpcClient(ChatService, `127.0.0.1:${cluster.process("router-1").grpcPort}`, {
      bearer: () => cluster.probeKey(),
    });
    const devices = (await api.listDevices({ userId: "x-bob" })).devices;
    expect(devices.map((d) => [d.deviceId, d.provider, d.token])).toEqual([
      ["bob-phone", Provider.FCM, "fcm-token-1"],
    ]);
    api.close();

    process.stdout.write(
      `cluster: 30 pipelined 1:1 messages sent on gateway-0, all on gateway-1 in ${crossMs.toFixed(0)} ms\n`,
    );
    for (const d of [alice, bobPhone, bobLaptop, carol]) await d.c.close();
  }, 120_000);

  it("sends a pull-model channel's messages live across gateway processes; a device catches up by seq", async () => {
    const owner = await device("x-chan-owner", 0);
    const near = await device("x-chan-near", 0);
    const far = await device("x-chan-far", 1);
    let channel = await owner.c.createGroup({
      name: "channel",
      members: ["x-chan-near", "x-chan-far", "x-chan-late"],
    });
    // Past groups.pullThreshold (100) with members who never connect.
    channel = await owner.c.addMembers(
      channel.id,
      Array.from({ length: 150 }, (_, i) => `x-chan-offline-${i}`),
    );
    expect(channel).toMatchObject({ memberCount: 154, delivery: "pull" });
    const late = await device("x-chan-late", 1);
    await late.c.listConversations(); // the SDK follows the channel from here

    const ofChannel = (d: Device) => d.received.filter((m) => m.message.conversationId === channel.id);
    const bodies = Array.from({ length: 12 }, (_, i) => `channel ${i}`);
    for (const b of bodies.slice(0, 4)) await owner.c.send({ conversationId: channel.id }, b);
    await until("the first messages on both gateways", () =>
      [near, far, late].every((d) => ofChannel(d).length >= 4),
    );
    // A device away while the channel moves on comes back from its positions and fetches the rest.
    const positions = late.c.pullPositions;
    expect(positions[channel.id]).toBe(4);
    await late.c.close();
    for (const b of bodies.slice(4)) await owner.c.send({ conversationId: channel.id }, b);
    const back = new SwitchboardClient({
      url: cluster.gatewayUrls[1]!,
      token: () => signDevToken(cluster.state.tokenDataDir, "x-chan-late", 600),
      pullPositions: positions,
    });
    const caughtUp: IncomingMessage[] = [];
    back.on("message", (m) => caughtUp.push(m));
    await back.connect();
    await until("the returning device's catch-up", () => caughtUp.length >= 8);
    await until("live on both gateways", () => [near, far].every((d) => ofChannel(d).length >= 12));
    await settle();
    for (const d of [near, far, owner]) expectExactlyOnceInOrder(d, channel.id, bodies);
    expect(ofChannel(near).every((m) => m.cursor === 0 && m.source === "live")).toBe(true);
    expect(caughtUp.map((m) => m.message.body)).toEqual(bodies.slice(4));
    for (const d of [owner, near, far]) await d.c.close();
    await back.close();
  }, 120_000);

  it("serves the server API from a router: a bot's message, the event stream and a disconnect cross processes", async () => {
    const dana = await device("x-dana", 1);
    const disconnects: Array<{ code: number; reason: string; willReconnect: boolean }> = [];
    dana.c.on("disconnected", (d) => disconnects.push(d));
    const api = grpcClient(ChatService, `127.0.0.1:${cluster.process("router-0").grpcPort}`, {
      bearer: () => cluster.probeKey(),
    });
    const { conversation } = await api.createGroup({
      owner: "x-dana",
      name: "alerts",
      members: ["bot:probe"],
    });
    const sent = await api.publish({
      conversationId: conversation!.id,
      idempotencyKey: "alert-1",
      body: "disk full",
    });
    expect(sent.message).toMatchObject({ sender: "bot:probe", seq: 1n });
    // A group made through the server API reaches its member's devices too (relayed by that router).
    await until("the group made through the server API reaches dana", () =>
      dana.groups.some((g) => g.id === conversation!.id && g.name === "alerts"),
    );
    await until("the bot's message reaches dana on a gateway process", () =>
      dana.received.some((m) => m.message.body === "disk full"),
    );
    // A backend's group change goes through the router its conversation is pinned to, as a
    // member's does (ADR 0005): here the other router, which router-0 relays it to.
    const routers = ["router-0", "router-1"].map((n) => `127.0.0.1:${cluster.process(n).grpcPort}`);
    let key = 0;
    while (pinnedRouter(keyedGroupId("client:probe", `pin-${key}`), routers) !== routers[1]) key++;
    const { conversation: pinned } = await api.createGroup({
      owner: "x-dana",
      name: "pinned",
      members: ["bot:probe"], // the probe's grant covers the groups its bot is in
      idempotencyKey: `pin-${key}`,
    });
    expect(pinned!.id).toBe(keyedGroupId("client:probe", `pin-${key}`));
    await api.updateGroup({ conversationId: pinned!.id, name: "pinned elsewhere" });
    await until("a group change relayed from router-0 through router-1 reaches dana", () =>
      dana.groups.some((g) => g.id === pinned!.id && g.name === "pinned elsewhere"),
    );

    // The event stream, from the other router, sees the message.
    const events = grpcClient(ChatService, `127.0.0.1:${cluster.process("router-1").grpcPort}`, {
      bearer: () => cluster.probeKey(),
    });
    const requests = new AsyncQueue<MessageInitShape<typeof StreamEventsRequestSchema>>(100);
    requests.push({ kind: { case: "subscribe", value: { subscription: "cluster" } } });
    const abort = new AbortController();
    let seen = false;
    for await (const r of events.streamEvents(requests, { signal: abort.signal })) {
      if (r.cursor === "") continue; // the stream is open
      seen ||= r.events.some(
        (e) => e.kind.case === "message" && e.kind.value.messageId === sent.message!.messageId,
      );
      requests.push({ kind: { case: "ack", value: { cursor: r.cursor } } });
      if (seen) break;
    }
    abort.abort();
    expect(seen).toBe(true);

    // Disconnect, asked of a router, closes dana's connection on the gateway process holding it.
    // (Routers learn sessions from the routing log: retry until this one has dana's.)
    let told = 0;
    for (let i = 0; i < 50 && told === 0; i++) {
      told = (await api.disconnect({ userId: "x-dana", reason: "account suspended" })).sessions;
      if (told === 0) await new Promise((r) => setTimeout(r, 100));
    }
    expect(told).toBe(1);
    await until("dana is closed with 3503 and the reason", () => disconnects.length > 0);
    expect(disconnects[0]).toMatchObject({ code: 3503, reason: "account suspended", willReconnect: false });
    api.close();
    events.close();
  }, 120_000);

  it("follows a traced message across the gateway, sequencer, router and the other gateway's processes", async () => {
    const alice = await device("t-alice", 0);
    const bob = await device("t-bob", 1);
    const traceId = randomBytes(16).toString("hex");
    const clientSpanId = randomBytes(8).toString("hex");
    const ack = await alice.c.send({ toUser: "t-bob" }, "traced", {
      traceparent: `00-${traceId}-${clientSpanId}-01`,
    });
    expect(ack.traceId).toBe(traceId);
    await until("bob gets it on the other gateway", () => bob.received.length >= 1);
    const ours = () => receiver.spans.filter((s) => s.traceId === traceId);
    /** From a delivery span up through its ancestors, as far as they have arrived. */
    const chainFrom = (deliver: OtlpSpan) => {
      const byId = new Map(ours().map((x) => [x.spanId, x]));
      const chain: Array<[string, string | undefined]> = [];
      let s: OtlpSpan | undefined = deliver;
      while (s) {
        chain.push([s.name, resourceAttribute(s, "switchboard.role")]);
        s = s.parentSpanId ? byId.get(s.parentSpanId) : undefined;
      }
      return chain;
    };
    // Each process exports on its own schedule, and a parent span ends (and is sent) after its
    // children: wait until both deliveries and every ancestor have arrived.
    // Two deliveries: bob's on gateway 1, and alice's own copy (her other devices) on gateway 0.
    await until("the whole trace arrives", () => {
      const delivers = ours().filter((x) => x.name === "deliver");
      return delivers.length >= 2 && delivers.every((d) => chainFrom(d).at(-1)?.[0] === "send");
    });
    const chain = chainFrom(ours().find((x) => x.name === "deliver")!);
    // One trace, made by four processes of three roles, back to the client's span.
    expect(chain).toEqual([
      ["deliver", "gateway"],
      ["route", "router"],
      ["inbox", "router"],
      ["sequence", "sequencer"],
      ["send", "gateway"],
    ]);
    const send = ours().find((x) => x.name === "send")!;
    expect(send.parentSpanId).toBe(clientSpanId);
    // Sent through one gateway process, delivered by both.
    const pids = (name: string) =>
      new Set(
        ours()
          .filter((x) => x.name === name)
          .map((x) => resourceAttribute(x, "process.pid")),
      );
    const [sender] = pids("send");
    expect(sender).toBeDefined();
    expect(pids("deliver")).toContain(sender);
    expect([...pids("deliver")].filter((p) => p !== sender && p !== undefined)).toHaveLength(1);
    for (const d of [alice, bob]) await d.c.close();
  }, 60_000);

  it("logged no error line in any process while every process was healthy", () => {
    // Before the kill tests: from here on, errors are what they provoke. An error line is what an
    // SRE alerts on, so a healthy cluster's start and traffic must print none (kafkajs's retried
    // responses included: internal/lib/kafkajs-log.ts).
    const errors = cluster.state.processes.flatMap((p) =>
      readFileSync(cluster.logPath(p.name), "utf8")
        .split("\n")
        .filter((line) => line.startsWith("{") && (JSON.parse(line) as { level?: string }).level === "error")
        .map((line) => `${p.name}: ${line}`),
    );
    expect(errors).toEqual([]);
  });

  it("delivers a notification once after kill -9 of the push process that was retrying it", async () => {
    const [sender, sleeper] = [await device("p-sender", 0), await device("p-sleeper", 1)];
    await sleeper.c.registerDevice({
      deviceId: "crm",
      provider: "webhook",
      token: `${webhook.origin}/p-sleeper`,
    });
    await sleeper.c.close(); // offline: its messages are notified
    // The provider is down: the push process retries, honouring Retry-After.
    webhook.script.byToken.set("/p-sleeper", { status: 503, headers: { "retry-after": "1" } });
    const arrivals = () => webhook.script.arrivals.filter((a) => a.token === "/p-sleeper").length;
    // The routers learn of the closed connection through the routing topic: until both know, one
    // would hand the message to a gateway instead of notifying.
    const routers = ["router-0", "router-1"].map((n) =>
      grpcClient(ChatService, `127.0.0.1:${cluster.process(n).grpcPort}`, {
        bearer: () => cluster.probeKey(),
      }),
    );
    const offlineBy = Date.now() + 30_000;
    for (;;) {
      const known = await Promise.all(routers.map((r) => r.listSessions({ userId: "p-sleeper" })));
      if (known.every((k) => k.sessions.length === 0)) break;
      if (Date.now() > offlineBy) throw new Error("the routers still list p-sleeper's closed session");
      await new Promise((r) => setTimeout(r, 50));
    }
    await sender.c.send({ toUser: "p-sleeper" }, "are you there?");
    await until("the push process's first attempt", () => arrivals() >= 1);
    await cluster.kill("push-0");
    webhook.script.byToken.delete("/p-sleeper");
    const restarted = performance.now();
    await cluster.restart("push-0");
    const recoveryMs = await until(
      "the restarted push process delivers the job it left",
      () => webhook.delivered.some((d) => d.path === "/p-sleeper"),
      60_000,
    );
    await settle();
    await new Promise((r) => setTimeout(r, 1_000));
    const delivered = webhook.delivered.filter((d) => d.path === "/p-sleeper");
    expect(delivered).toHaveLength(1);
    expect(delivered[0]!.body).toMatchObject({ user_id: "p-sleeper", body: "are you there?" });
    expect(webhook.script.violations).toEqual([]);
    process.stdout.write(
      `cluster: a push job pending a retry survived kill -9 of push-0 (delivered ${Math.round(performance.now() - restarted)} ms after the restart began, ${recoveryMs} ms after it was ready)\n`,
    );
    await sender.c.close();
  }, 120_000);

  it("loses, repeats and reorders nothing when a router and then a gateway are killed with -9", async () => {
    const alice = await device("k-alice", 0);
    const bob = await device("k-bob", 1);
    const sender = steadySends(alice, "k-bob");
    const { bodies } = sender;
    await until("traffic flows", () => bob.received.length >= 20);

    await cluster.kill("router-0");
    const routerKilledAt = bodies.length;
    const routerRecoveryMs = await until(
      "messages sent after the router died are delivered",
      () => bob.received.length >= routerKilledAt + 20,
      60_000,
    );

    await cluster.kill("gateway-1"); // bob's gateway: bob moves to gateway-0
    const gatewayKilledAt = bodies.length;
    const gatewayRecoveryMs = await until(
      "bob resumes on the other gateway",
      () => bob.received.length >= gatewayKilledAt + 20,
      60_000,
    );

    await expectEveryAckDelivered(sender, bob);
    expect(bob.urls.at(-1)).toBe(cluster.gatewayUrls[0]);
    process.stdout.write(
      `cluster: ${bodies.length} messages through kill -9 of router-0 (delivery resumed in ${routerRecoveryMs} ms) and of gateway-1 (client resumed on gateway-0 in ${gatewayRecoveryMs} ms); none lost, repeated or reordered\n`,
    );
    await alice.c.close();
    await bob.c.close();
    await cluster.restart("router-0");
    await cluster.restart("gateway-1");
  }, 240_000);

  it("loses, repeats and reorders nothing when the sequencer, the id service, presence and a router are killed with -9 and restarted", async () => {
    // The first three run once in the cluster: while one is down, sends wait (the SDK resends with the
    // same clientMsgId), and once it is back every acknowledged message arrives once, in order.
    const alice = await device("s-alice", 0);
    const bob = await device("s-bob", 1);
    const sender = steadySends(alice, "s-bob");
    const { bodies } = sender;
    const report: string[] = [];
    let carol: Device | undefined;
    try {
      await until("traffic flows", () => bob.received.length >= 20);
      // Alice watches carol (offline) from before presence dies: her gateway subscribes the watch
      // again on the restarted shard, so carol coming online afterwards reaches her.
      await alice.c.send({ toUser: "s-carol" }, "hello carol");
      expect((await alice.c.subscribePresence(["s-carol"]))[0]?.online).toBe(false);
      const resubscribed = () =>
        readFileSync(cluster.logPath("gateway-0"), "utf8").split("presence had lost watches").length - 1;
      const resubscribedBefore = resubscribed();
      // Both routers keep their consumer-group member ids in the one data dir they share, each in a
      // file of its own: a restarted router rejoins the inbox group as the member it was instead of
      // waiting out its dead self's session (it did, ~10 s, when the two wrote one file).
      const inboxGroup = `${cluster.state.topicPrefix}inbox`;
      const routerMembers = ["router-0", "router-1"].map((name) => memberFileOf(name));
      for (const [i, name] of ["router-0", "router-1"].entries()) {
        expect(routerMembers[i]!.pid).toBe(cluster.process(name).pid);
        expect(routerMembers[i]!.members[inboxGroup]).toBeDefined();
      }
      expect(routerMembers[0]!.members[inboxGroup]).not.toBe(routerMembers[1]!.members[inboxGroup]);
      for (const name of ["sequencer-0", "id-0", "presence-0", "router-1"]) {
        const killedAt = bodies.length;
        const started = performance.now();
        await cluster.kill(name);
        await cluster.restart(name);
        const readyMs = performance.now() - started;
        if (name === "router-1") {
          const after = memberFileOf(name);
          expect(after.pid).toBe(cluster.process(name).pid);
          expect(after.members[inboxGroup]).toBe(routerMembers[1]!.members[inboxGroup]);
        }
        const resumedMs = await until(
          `messages sent after ${name} died are delivered`,
          () => bob.received.length >= killedAt + 20,
          60_000,
        );
        report.push(
          `${name} (ready ${readyMs.toFixed(0)} ms after the kill, delivering ${resumedMs} ms later)`,
        );
      }
      // Presence lives in memory: the restarted shard learns bob is online from his next heartbeat.
      const onlineMs = await until(
        "bob is online again on the restarted presence shard",
        () => presenceOf(alice, "s-bob") === true,
        30_000,
      );
      const resubscribedMs = await until(
        "alice's gateway subscribes her watches again on the restarted presence shard",
        () => resubscribed() > resubscribedBefore,
        30_000,
      );
      carol = await device("s-carol", 1);
      await until("alice hears carol come online, without asking again", () =>
        alice.presence.some((p) => p.userId === "s-carol" && p.online),
      );
      await expectEveryAckDelivered(sender, bob);
      process.stdout.write(
        `cluster: ${bodies.length} messages through kill -9 and restart of ${report.join(", ")}; bob online again ${onlineMs} ms after, alice's watches subscribed again ${resubscribedMs} ms after; none lost, repeated or reordered\n`,
      );
    } finally {
      void sender.stop().catch(() => undefined);
      await alice.c.close();
      await bob.c.close();
      await carol?.c.close();
    }
  }, 240_000);

  it("loses, repeats and reorders nothing when a router and then a gateway are frozen past the session timeout", async () => {
    const alice = await device("f-alice", 0);
    const bob = await device("f-bob", 1);
    const sender = steadySends(alice, "f-bob");
    const { bodies } = sender;
    const frozen: string[] = [];
    const freeze = async (name: string) => {
      cluster.pause(name);
      frozen.push(name);
      try {
        await new Promise((r) => setTimeout(r, FREEZE_MS));
      } finally {
        cluster.resume(name);
      }
    };
    try {
      await until("traffic flows", () => bob.received.length >= 20);

      // router-0 stops answering with its inbox partitions, its Kafka sessions and its Deliver
      // streams open; the group moves its partitions to router-1, and router-0 comes back a zombie.
      const routerFrozenAt = bodies.length;
      await freeze("router-0");
      const routerRecoveryMs = await until(
        "messages sent after the router froze are delivered",
        () => bob.received.length >= routerFrozenAt + 20,
        60_000,
      );

      // bob's gateway stops answering: bob's heartbeats go unanswered and it moves to gateway-0,
      // while the routers' streams to gateway-1 hang until it comes back.
      const gatewayFrozenAt = bodies.length;
      const frozenGateway = freeze("gateway-1");
      const gatewayRecoveryMs = await until(
        "bob resumes on the other gateway",
        () => bob.received.length >= gatewayFrozenAt + 20,
        60_000,
      );
      await frozenGateway;

      await expectEveryAckDelivered(sender, bob);
      expect(bob.urls.at(-1)).toBe(cluster.gatewayUrls[0]);
      process.stdout.write(
        `cluster: ${bodies.length} messages through ${FREEZE_MS / 1000} s freezes of router-0 (messages sent since delivered ${routerRecoveryMs} ms after it came back) and of gateway-1 (bob resumed on gateway-0 in ${gatewayRecoveryMs} ms); none lost, repeated or reordered\n`,
      );
    } finally {
      void sender.stop().catch(() => undefined);
      for (const name of frozen) cluster.resume(name);
      await alice.c.close();
      await bob.c.close();
    }
  }, 240_000);

  it("delivers again soon when the network silently drops the routers' open streams to a gateway", async () => {
    // The routers' Deliver connections to bob's gateway go dead without a FIN or RST (a lost
    // conntrack entry), while bob's own connection and new connections to the gateway work.
    const alice = await device("h-alice", 0);
    const bob = await device("h-bob", 1);
    const sender = steadySends(alice, "h-bob");
    const { bodies } = sender;
    try {
      await until("traffic flows", () => bob.received.length >= 20);
      expect(gateway1Link.blackholeOpen()).toBeGreaterThan(0);
      const cutAt = bodies.length;
      // The routers' pings on those streams (router.deliverKeepaliveMs, 2 s) go unanswered for
      // grpc.keepaliveTimeoutMs (5 s); then they dial again through a new connection and have the
      // gateway re-check bob's inbox. (With gRPC's usual 30 s + 20 s this took 50 s.)
      const outageMs = await until(
        "messages sent after the cut are delivered",
        () => bob.received.length >= cutAt + 20,
        2_000 + 5_000 + 8_000,
      );
      await expectEveryAckDelivered(sender, bob);
      // bob's device never moved: only the routers' side was cut.
      expect(new Set(bob.urls)).toEqual(new Set([cluster.gatewayUrls[1]]));
      expect(gateway1Link.openFlows).toBeGreaterThan(0); // the routers dialled again
      process.stdout.write(
        `cluster: ${bodies.length} messages through a silent cut of the routers' streams to gateway-1 (delivery resumed in ${outageMs} ms); none lost, repeated or reordered\n`,
      );
    } finally {
      void sender.stop().catch(() => undefined);
      await alice.c.close();
      await bob.c.close();
    }
  }, 240_000);
});
