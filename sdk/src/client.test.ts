import { afterEach, describe, expect, test, vi } from "vitest";
import { WebSocket as WsWebSocket } from "ws";
import { Code, ConversationKind, DeliveryModel } from "../../gen/switchboard/common/v1/common_pb.js";
import { FakeServer } from "../test/fake-server.js";
import { PRESENCE_RENEWAL_WAIT_MAX_MS, presenceRenewalWaitMs } from "./client.js";
import {
  type Checkpoint,
  type DisconnectInfo,
  type IncomingMessage,
  type SendAck,
  SwitchboardClient,
  SwitchboardClientError,
  type SwitchboardClientOptions,
  type SyncedInfo,
} from "./index.js";
import { GAP_RETRY_DELAYS_MS } from "./pull-follower.js";

// Small, deterministic-enough backoff so reconnect tests take milliseconds.
const FAST = { baseMs: 5, maxMs: 20 };

let server: FakeServer | undefined;
const clients: SwitchboardClient[] = [];

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await server?.close();
  server = undefined;
});

async function startServer(options: Parameters<typeof FakeServer.start>[0] = {}): Promise<FakeServer> {
  server = await FakeServer.start(options);
  return server;
}

function newClient(srv: FakeServer, options: Partial<SwitchboardClientOptions> = {}) {
  const client = new SwitchboardClient({ url: srv.url, token: "token-alice", reconnect: FAST, ...options });
  clients.push(client);
  const messages: IncomingMessage[] = [];
  const disconnects: DisconnectInfo[] = [];
  const synced: SyncedInfo[] = [];
  const errors: SwitchboardClientError[] = [];
  let connected = 0;
  client.on("message", (m) => messages.push(m));
  client.on("disconnected", (d) => disconnects.push(d));
  client.on("synced", (s) => synced.push(s));
  client.on("error", (e) => errors.push(e));
  client.on("connected", () => connected++);
  return {
    client,
    messages,
    disconnects,
    synced,
    errors,
    connected: () => connected,
  };
}

function settledOnce<T>(p: Promise<T>) {
  const state = { value: undefined as T | undefined, error: undefined as unknown, settled: false };
  p.then(
    (v) => {
      state.value = v;
      state.settled = true;
    },
    (e: unknown) => {
      state.error = e;
      state.settled = true;
    },
  );
  return state;
}

describe.each(["json", "binary"] as const)("with %s encoding", (encoding) => {
  test("reconnects after the server drops the socket, then syncs again", async () => {
    const srv = await startServer();
    const t = newClient(srv, { encoding });
    const welcome = await t.client.connect();
    expect(welcome.userId).toBe("alice");
    await srv.waitFor(() => t.synced.length === 1, "first sync");

    srv.conns[0]!.ws.terminate();
    await srv.waitFor(() => t.synced.length === 2, "sync after reconnect");

    expect(srv.conns).toHaveLength(2);
    expect(t.connected()).toBe(2);
    expect(t.disconnects).toHaveLength(1);
    expect(t.disconnects[0]).toMatchObject({ code: 1006, willReconnect: true });
    expect(t.disconnects[0]!.reconnectInMs).toBeGreaterThanOrEqual(0);
    expect(t.disconnects[0]!.reconnectInMs).toBeLessThanOrEqual(FAST.maxMs);
    // Both connections used the requested encoding for every frame.
    expect(srv.frames.every((f) => f.binary === (encoding === "binary"))).toBe(true);
    expect(srv.framesOf("sync").map((f) => f.conn.index)).toEqual([0, 1]);
  });

  test("re-sends an unacknowledged send with the same clientMsgId after reconnect and resolves it once", async () => {
    const srv = await startServer();
    // First attempt: store durably, then drop the connection before the ack (a lost ack).
    srv.hook = (conn, frame, s) => {
      if (frame.kind.case !== "send" || s.framesOf("send").length > 1) return undefined;
      s.store("alice", "dm:alice~bob", frame.kind.value.clientMsgId, frame.kind.value.body, ["alice", "bob"]);
      conn.ws.terminate();
      return true;
    };
    const t = newClient(srv, { encoding });
    await t.client.connect();
    const acks: SendAck[] = [];
    const p = t.client.send({ toUser: "bob" }, "hello bob");
    p.then((a) => acks.push(a));
    const ack = await p;

    const sends = srv.framesOf("send");
    expect(sends).toHaveLength(2);
    expect(sends[0]!.conn.index).toBe(0);
    expect(sends[1]!.conn.index).toBe(1);
    expect(sends[1]!.value.clientMsgId).toBe(sends[0]!.value.clientMsgId);
    expect(sends[0]!.value.clientMsgId).toMatch(/^[0-9a-f-]{36}$/);
    // Only the first transmission of a key the client made up says it is the first.
    expect(sends.map((s) => s.value.firstAttempt)).toEqual([true, false]);
    expect(ack).toMatchObject({
      conversationId: "dm:alice~bob",
      seq: 1,
      duplicate: true,
      clientMsgId: sends[0]!.value.clientMsgId,
    });
    expect(srv.inbox.get("bob")).toHaveLength(1); // stored once
    expect(t.client.pendingSends).toBe(0);

    // The own message comes back through sync exactly once, whatever happened on the wire.
    await srv.waitFor(() => t.synced.length >= 2, "sync after reconnect");
    await new Promise((r) => setTimeout(r, 30));
    expect(acks).toHaveLength(1);
    expect(t.messages.map((m) => m.message.clientMsgId)).toEqual([sends[0]!.value.clientMsgId]);
  });

  test("the app sees a message once even when the server delivers it twice", async () => {
    const srv = await startServer();
    srv.addMessage("dm:alice~bob", "bob", "m1", ["alice", "bob"]);
    // Right after the welcome, before answering the sync, push m1 live: it repeats inside the sync.
    srv.hook = (conn, frame, s) => {
      if (frame.kind.case === "sync" && s.framesOf("sync").length === 1) {
        s.push(conn, { kind: { case: "message", value: s.inbox.get("alice")![0]! } });
      }
      return undefined;
    };
    const t = newClient(srv, { encoding });
    await t.client.connect();
    await srv.waitFor(() => t.synced.length === 1, "sync");

    srv.addMessage("dm:alice~bob", "bob", "m2", ["alice", "bob"]);
    const m2 = srv.inbox.get("alice")![1]!;
    srv.push(srv.conns[0]!, { kind: { case: "message", value: m2 } }); // second copy of m2
    srv.addMessage("dm:alice~bob", "bob", "m3", ["alice", "bob"]);
    await srv.waitFor(() => t.messages.length >= 3, "three messages");
    await new Promise((r) => setTimeout(r, 30));

    expect(t.messages.map((m) => m.message.body)).toEqual(["m1", "m2", "m3"]);
    expect(t.messages.map((m) => m.source)).toEqual(["sync", "live", "live"]);
    expect(t.client.cursor).toBe(3);
  });

  test("a stored cursor past the inbox's head (another data set) syncs from 0 instead", async () => {
    const srv = await startServer({ syncPageSize: 2 });
    // A direct conversation: a group would also make the client list its conversations.
    for (let i = 1; i <= 3; i++) srv.addMessage("dm:alice~bob", "bob", `m${i}`, ["alice", "bob"]);
    const t = newClient(srv, { encoding, cursor: 50 });
    await t.client.connect();
    await srv.waitFor(() => t.synced.length === 1, "sync");
    expect(srv.framesOf("sync").map((f) => Number(f.value.cursor))).toEqual([50, 0, 2]);
    expect(t.messages.map((m) => [m.message.body, m.cursor])).toEqual([
      ["m1", 1],
      ["m2", 2],
      ["m3", 3],
    ]);
    expect(t.client.cursor).toBe(3);
    expect([t.errors, t.disconnects]).toEqual([[], []]);
  });

  test("starts over from 0 when the server names another data set than the checkpoint's (a restored backup)", async () => {
    const srv = await startServer({ syncPageSize: 10 });
    for (let i = 1; i <= 3; i++) srv.addMessage("dm:alice~bob", "bob", `m${i}`, ["alice", "bob"]);
    // The device had synced to 5 on the data before the restore; the restored server has 3, and
    // would hand 4 and 5 out again: the cursor must not be trusted.
    const t = newClient(srv, {
      encoding,
      checkpoint: { cursor: 5, pullPositions: { "g:9": 40 }, dataSet: "before-restore" },
    });
    const changes: Array<{ previous: string; current: string }> = [];
    t.client.on("dataSetChanged", (c) => changes.push(c));
    await t.client.connect();
    await srv.waitFor(() => t.synced.length === 1, "sync");
    expect(changes).toEqual([{ previous: "before-restore", current: "data-set-1" }]);
    expect(srv.framesOf("sync").map((f) => Number(f.value.cursor))).toEqual([0]);
    expect(t.messages.map((m) => m.message.body)).toEqual(["m1", "m2", "m3"]);
    expect(t.client.checkpoint).toMatchObject({ cursor: 3, dataSet: "data-set-1" });
    expect(t.client.checkpoint.pullPositions["g:9"]).toBeUndefined();
  });

  test("emits every message again after the server it is connected to was restored, those emitted before included", async () => {
    const srv = await startServer({ syncPageSize: 10 });
    for (let i = 1; i <= 3; i++) srv.addMessage("dm:alice~bob", "bob", `m${i}`, ["alice", "bob"]);
    const t = newClient(srv, { encoding });
    await t.client.connect();
    await srv.waitFor(() => t.synced.length === 1, "first sync");
    const changes: unknown[] = [];
    t.client.on("dataSetChanged", (c) => {
      changes.push(c);
      t.messages.length = 0; // the app drops what it held, as the event asks
    });
    // Restored from a backup holding the same three messages: the app dropped them and needs them again.
    srv.dataSet = "data-set-2";
    srv.conns[0]!.ws.terminate();
    await srv.waitFor(() => t.synced.length === 2, "sync after the restore");
    expect(changes).toEqual([{ previous: "data-set-1", current: "data-set-2" }]);
    expect(t.messages.map((m) => m.message.body)).toEqual(["m1", "m2", "m3"]);
  });

  test("keeps its positions with the same data set, and takes the server's when the checkpoint names none", async () => {
    const srv = await startServer({ syncPageSize: 10 });
    for (let i = 1; i <= 3; i++) srv.addMessage("dm:alice~bob", "bob", `m${i}`, ["alice", "bob"]);
    const same = newClient(srv, {
      encoding,
      checkpoint: { cursor: 2, pullPositions: {}, dataSet: "data-set-1" },
    });
    const older = newClient(srv, { encoding, checkpoint: { cursor: 2, pullPositions: {} } });
    const changes: unknown[] = [];
    for (const t of [same, older]) {
      t.client.on("dataSetChanged", (c) => changes.push(c));
      await t.client.connect();
      await srv.waitFor(() => t.synced.length === 1, "sync");
      expect(t.messages.map((m) => m.message.body)).toEqual(["m3"]);
      expect(t.client.checkpoint).toMatchObject({ cursor: 3, dataSet: "data-set-1" });
    }
    expect(changes).toEqual([]);
    expect(srv.framesOf("sync").map((f) => Number(f.value.cursor))).toEqual([2, 2]);
  });

  test("resumes from the stored cursor and pages the sync while hasMore", async () => {
    const srv = await startServer({ syncPageSize: 2 });
    for (let i = 1; i <= 6; i++) srv.addMessage("g:1", "bob", `m${i}`, ["alice", "bob"]);
    const t = newClient(srv, { encoding, cursor: 1 });
    await t.client.connect();
    await srv.waitFor(() => t.synced.length === 1, "sync");

    // Pages of two from cursor 1: (1,3] (3,5] (5,6].
    expect(srv.framesOf("sync").map((f) => Number(f.value.cursor))).toEqual([1, 3, 5]);
    expect(t.messages.map((m) => [m.message.body, m.cursor, m.source])).toEqual([
      ["m2", 2, "sync"],
      ["m3", 3, "sync"],
      ["m4", 4, "sync"],
      ["m5", 5, "sync"],
      ["m6", 6, "sync"],
    ]);
    expect(t.synced[0]).toEqual({ cursor: 6, delivered: 5 });
    expect(t.client.cursor).toBe(6);

    // A live message, then an outage during which another one arrives: resume from cursor 7.
    srv.addMessage("g:1", "bob", "m7", ["alice", "bob"]);
    await srv.waitFor(() => t.messages.length === 6, "live m7");
    expect(t.client.cursor).toBe(7);
    srv.conns[0]!.ws.terminate();
    await srv.waitFor(() => srv.conns[0]!.closed, "server saw the close");
    srv.addMessage("g:1", "bob", "m8", ["alice", "bob"]);
    // m8 comes by the second sync, or live if the client resynced before it was added: either way once.
    await srv.waitFor(() => t.synced.length === 2 && t.messages.length >= 7, "second sync and m8");

    expect(srv.framesOf("sync").map((f) => [f.conn.index, Number(f.value.cursor)])).toEqual([
      [0, 1],
      [0, 3],
      [0, 5],
      [1, 7],
    ]);
    expect(t.messages.map((m) => m.message.body)).toEqual(["m2", "m3", "m4", "m5", "m6", "m7", "m8"]);
    expect(t.client.cursor).toBe(8);
  });

  test("a request answered with an error rejects with a typed SwitchboardClientError", async () => {
    const srv = await startServer();
    srv.hook = (conn, frame, s) => {
      if (frame.kind.case !== "createGroup") return undefined;
      s.error(conn, frame, Code.RESOURCE_EXHAUSTED, "GROUP_FULL");
      return true;
    };
    const t = newClient(srv, { encoding });
    await t.client.connect();
    const err = await t.client.createGroup({ name: "big", members: ["bob"] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SwitchboardClientError);
    expect(err).toMatchObject({ code: Code.RESOURCE_EXHAUSTED, reason: "GROUP_FULL" });

    // A non-retryable send error rejects the send (and it is not re-sent).
    const sendErr = await t.client.send({ conversationId: "g:404" }, "hi").catch((e: unknown) => e);
    expect(sendErr).toBeInstanceOf(SwitchboardClientError);
    expect(sendErr).toMatchObject({ code: Code.PERMISSION_DENIED, reason: "NOT_MEMBER" });
    expect(srv.framesOf("send")).toHaveLength(1);
    expect(t.client.pendingSends).toBe(0);
  });
});

test("backoff grows exponentially (full jitter ceiling) while the server keeps dropping, and resets after a sync", async () => {
  const srv = await startServer();
  const stamps: number[] = [];
  srv.onConnect = (conn) => {
    stamps.push(Date.now());
    if (conn.index >= 4) return undefined;
    conn.ws.terminate(); // accept the upgrade, then drop before the welcome
    return true;
  };
  // random() = 1 makes every delay the full ceiling: base * 2^attempt.
  const t = newClient(srv, { reconnect: { baseMs: 20, maxMs: 1_000 }, random: () => 1 });
  await t.client.connect();
  await srv.waitFor(() => t.synced.length === 1, "a sync after four drops");

  expect(t.disconnects.map((d) => d.reconnectInMs)).toEqual([20, 40, 80, 160]);
  const gaps = stamps.slice(1).map((s, i) => s - stamps[i]!);
  [20, 40, 80, 160].forEach((delay, i) => {
    expect(gaps[i]).toBeGreaterThanOrEqual(delay - 2);
  });
  // A successful sync resets the backoff.
  srv.conns[4]!.ws.terminate();
  await srv.waitFor(() => t.disconnects.length === 5, "fifth disconnect");
  expect(t.disconnects[4]!.reconnectInMs).toBe(20);
});

test("close code 3500 (invalid token) is terminal: no reconnect, connect() and pending sends reject", async () => {
  const srv = await startServer();
  const t = newClient(srv, { token: "bad", auth: "frame", WebSocket: WsWebSocket });
  const pendingSend = settledOnce(t.client.send({ toUser: "bob" }, "queued before connect"));
  const err = await t.client.connect().catch((e: unknown) => e);
  expect(err).toBeInstanceOf(SwitchboardClientError);
  expect(err).toMatchObject({ reason: "INVALID_TOKEN", code: Code.UNAUTHENTICATED, closeCode: 3500 });
  expect(srv.framesOf("auth").map((f) => f.value.token)).toEqual(["bad"]);

  await new Promise((r) => setTimeout(r, 150)); // many times the 20 ms maximum backoff
  expect(srv.conns).toHaveLength(1);
  expect(t.client.state).toBe("closed");
  expect(t.disconnects).toEqual([{ code: 3500, reason: "invalid token", willReconnect: false }]);
  expect(pendingSend.settled).toBe(true);
  expect(pendingSend.error).toMatchObject({ reason: "INVALID_TOKEN" });
  expect(srv.framesOf("send")).toHaveLength(0);
});

test("HTTP 401 on the upgrade with a fixed token is terminal", async () => {
  const srv = await startServer();
  const t = newClient(srv, { token: "nope" }); // Node 20 without global WebSocket: ws + header auth
  const err = await t.client.connect().catch((e: unknown) => e);
  expect(err).toMatchObject({ reason: "INVALID_TOKEN", code: Code.UNAUTHENTICATED });
  await new Promise((r) => setTimeout(r, 100));
  expect(srv.headerTokens).toEqual(["nope"]);
  expect(t.client.state).toBe("closed");
});

test("the token function is called again on every connect; 3005 reconnects with the fresh token", async () => {
  const srv = await startServer({ authenticate: (tok) => (tok.startsWith("jwt-") ? "alice" : undefined) });
  let calls = 0;
  const t = newClient(srv, {
    token: async () => {
      calls++;
      await new Promise((r) => setTimeout(r, 1));
      return `jwt-${calls}`;
    },
  });
  await t.client.connect();
  await srv.waitFor(() => t.synced.length === 1, "first sync");
  srv.conns[0]!.ws.close(3005, "token expired");
  await srv.waitFor(() => t.synced.length === 2, "second sync");
  srv.conns[1]!.ws.terminate();
  await srv.waitFor(() => t.synced.length === 3, "third sync");

  expect(calls).toBe(3);
  expect(srv.conns.map((c) => c.token)).toEqual(["jwt-1", "jwt-2", "jwt-3"]);
  expect(t.disconnects.map((d) => [d.code, d.willReconnect])).toEqual([
    [3005, true],
    [1006, true],
  ]);
});

test("a token function may recover from one 401 (stale token), but two in a row are terminal", async () => {
  const srv = await startServer({ authenticate: (tok) => (tok === "good" ? "alice" : undefined) });
  const tokens = ["stale", "good"];
  const t = newClient(srv, { token: () => tokens.shift() ?? "bad" });
  await t.client.connect();
  expect(srv.headerTokens).toEqual(["stale", "good"]);

  const t2 = newClient(srv, { token: () => "bad" });
  const err = await t2.client.connect().catch((e: unknown) => e);
  expect(err).toMatchObject({ reason: "INVALID_TOKEN" });
  expect(srv.headerTokens).toEqual(["stale", "good", "bad", "bad"]);
});

test("a token function whose tokens had expired is asked again as long as it takes, as after 3005", async () => {
  const srv = await startServer({ authenticate: (tok) => (tok.startsWith("good.") ? "alice" : undefined) });
  /** A JWT-shaped token (the server checks nothing of it here) with an `exp` of its own. */
  const jwt = (prefix: string, expSeconds: number) =>
    `${prefix}.${Buffer.from(JSON.stringify({ sub: "alice", exp: expSeconds })).toString("base64url")}.sig`;
  const past = Math.floor(Date.now() / 1000) - 60;
  const tokens = [jwt("old", past), jwt("old", past), jwt("old", past), jwt("good", past + 3_600)];
  const t = newClient(srv, { token: () => tokens.shift()! });
  await t.client.connect();
  expect(srv.headerTokens).toHaveLength(4);
  expect(t.errors.map((e) => e.reason)).toEqual(["TOKEN_EXPIRED", "TOKEN_EXPIRED", "TOKEN_EXPIRED"]);
  // A token refused while still valid by its claims is not taken for a stale one: terminal, as before.
  const bad = newClient(srv, { token: () => jwt("bad", past + 3_600) });
  await expect(bad.client.connect()).rejects.toMatchObject({ reason: "INVALID_TOKEN" });
});

test("refuses a number argument that is not a whole number in range before sending anything", async () => {
  const srv = await startServer();
  const t = newClient(srv);
  await t.client.connect();
  const before = srv.frames.length;
  const calls: Array<Promise<unknown>> = [
    t.client.markRead("dm:alice~bob", 1.5),
    t.client.markDelivered("dm:alice~bob", Number.NaN),
    t.client.markRead("dm:alice~bob", -1),
    t.client.history({ conversationId: "dm:alice~bob", beforeSeq: 2.5 }),
    t.client.history({ conversationId: "dm:alice~bob", limit: -5 }),
    t.client.listConversations({ limit: 1.5 }),
    t.client.listMembers("g:1", { limit: -1 }),
    t.client.muteConversation("dm:alice~bob", Date.now() + 0.25),
    t.client.setDoNotDisturb({ startMinute: -1, endMinute: 60, timeZone: "UTC" }),
  ];
  for (const call of calls)
    await expect(call).rejects.toMatchObject({ reason: "INVALID_NUMBER", code: Code.INVALID_ARGUMENT });
  expect(srv.frames.length).toBe(before);
  // The connection is untouched: a good call goes through.
  await expect(t.client.listConversations({ limit: 10 })).resolves.toEqual([]);
});

test("3005 with a fixed string token is terminal (it cannot be renewed)", async () => {
  const srv = await startServer();
  const t = newClient(srv);
  await t.client.connect();
  srv.conns[0]!.ws.close(3005, "token expired");
  await srv.waitFor(() => t.disconnects.length === 1, "disconnect");
  expect(t.disconnects[0]).toMatchObject({ code: 3005, willReconnect: false });
  expect(t.errors.at(-1)).toMatchObject({ reason: "TOKEN_EXPIRED" });
});

test("a body over the limit is rejected locally without sending anything", async () => {
  const srv = await startServer({ bodyCharsMax: 10 });
  const t = newClient(srv);
  await t.client.connect();
  const err = await t.client.send({ toUser: "bob" }, "x".repeat(11)).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(SwitchboardClientError);
  expect(err).toMatchObject({ reason: "BODY_TOO_LARGE", code: Code.INVALID_ARGUMENT });
  // Counted in code points like the server: ten emoji (20 UTF-16 units) fit.
  await expect(t.client.send({ toUser: "bob" }, "😀".repeat(10))).resolves.toMatchObject({ seq: 1 });
  await expect(t.client.send({ toUser: "bob" }, "")).rejects.toMatchObject({ reason: "EMPTY_BODY" });
  await expect(t.client.send({ toUser: "bob" }, "x", { clientMsgId: "has space" })).rejects.toMatchObject({
    reason: "INVALID_CLIENT_MSG_ID",
  });
  // Before any welcome the default limit is 100,000 characters.
  const fresh = newClient(srv);
  await expect(fresh.client.send({ toUser: "bob" }, "x".repeat(100_001))).rejects.toMatchObject({
    reason: "BODY_TOO_LARGE",
  });
  expect(srv.framesOf("send")).toHaveLength(1);
});

test.each([
  ["announced while the device was online", true],
  ["that went to pull while the device was away", false],
])("a group %s is caught up by seq after the next sync", async (_, announce) => {
  const srv = await startServer();
  const group = "g:9";
  const joined = "g:10"; // a pull group this device was just added to: its history is not fetched
  srv.addMessage(group, "bob", "one", ["alice", "bob"]); // seq 1, from the inbox
  const later = [2n, 3n].map((seq) => ({
    conversationId: group,
    seq,
    messageId: String(1_000n + seq),
    sender: "bob",
    clientMsgId: `c${seq}`,
    body: `after the switch ${seq}`,
    createdAtMs: 1n,
  }));
  let groupLastSeq = 1n; // 3 once the messages past the switch are sent
  const listed = (id: string, lastSeq: bigint) => ({
    id,
    kind: ConversationKind.GROUP,
    delivery: DeliveryModel.PULL,
    lastSeq,
    memberCount: 200,
  });
  srv.hook = (conn, frame, s) => {
    const k = frame.kind;
    if (k.case === "listConversations") {
      s.reply(conn, frame, {
        case: "conversations",
        value: { conversations: [listed(group, groupLastSeq), listed(joined, 50n)] },
      });
      return true;
    }
    if (k.case === "history" && k.value.conversationId === group) {
      s.reply(conn, frame, {
        case: "history",
        value: {
          conversationId: group,
          messages: later.filter((m) => m.seq > k.value.afterSeq && m.seq <= groupLastSeq),
        },
      });
      return true;
    }
    return undefined;
  };
  const t = newClient(srv);
  let announced = 0;
  t.client.on("conversation", () => announced++);
  await t.client.connect();
  await srv.waitFor(() => t.messages.length === 1, "the inbox message");
  // The switch is announced while the device is online (events carry lastSeq 0, docs/protocol.md
  // §2.3); seqs 2 and 3 come while it is away.
  const [conn] = srv.openConns();
  for (const id of announce ? [group, joined] : [])
    srv.push(conn!, {
      kind: {
        case: "conversation",
        value: { conversation: { id, kind: ConversationKind.GROUP, delivery: DeliveryModel.PULL } },
      },
    });
  await srv.waitFor(() => announced === (announce ? 2 : 0), "the announcements");
  groupLastSeq = 3n;
  conn!.ws.terminate();
  await srv.waitFor(() => t.messages.length === 3, "the messages past the switch, fetched by seq");
  expect(t.messages.map((m) => [m.message.seq, m.source])).toEqual([
    [1, "sync"],
    [2, "sync"],
    [3, "sync"],
  ]);
  expect(srv.framesOf("history").map((h) => h.value.conversationId)).not.toContain(joined);
  expect(t.client.pullPositions[joined]).toBe(50);
});

test("a retryable send error (rate limited) is retried with the same clientMsgId", async () => {
  const srv = await startServer();
  srv.hook = (conn, frame, s) => {
    if (frame.kind.case !== "send" || s.framesOf("send").length > 2) return undefined;
    s.error(conn, frame, Code.RESOURCE_EXHAUSTED, "RATE_LIMITED", 15);
    return true;
  };
  const t = newClient(srv);
  await t.client.connect();
  const ack = await t.client.send({ toUser: "bob" }, "hi", { clientMsgId: "my-key-1" });
  expect(ack).toMatchObject({ clientMsgId: "my-key-1", duplicate: false });
  const sends = srv.framesOf("send");
  expect(sends.map((s) => s.value.clientMsgId)).toEqual(["my-key-1", "my-key-1", "my-key-1"]);
  // The caller's own key may have been sent before (by an outbox restored after a restart).
  expect(sends.map((s) => s.value.firstAttempt)).toEqual([false, false, false]);
  expect(srv.conns).toHaveLength(1);
});

test("a backlog drains at the server's rate: after a RATE_LIMITED, sends go out at welcome's sendsPerSecond", async () => {
  const srv = await startServer();
  // The server's send bucket, as welcome says (100 a second), 10 at once; a refusal is charged (debt)
  // and says when the next send gets through.
  const rate = 100;
  let tokens = 10;
  let at = Date.now();
  let refused = 0;
  srv.hook = (conn, frame, s) => {
    if (frame.kind.case !== "send") return undefined;
    const now = Date.now();
    tokens = Math.min(10, tokens + ((now - at) * rate) / 1000);
    at = now;
    if (tokens >= 1) {
      tokens -= 1;
      return undefined;
    }
    // As the gateway's bucket does: the refusal is debt, and the wait is until a whole token.
    tokens = Math.max(tokens - 1, -10);
    refused++;
    s.error(conn, frame, Code.RESOURCE_EXHAUSTED, "RATE_LIMITED", Math.ceil(((1 - tokens) * 1000) / rate));
    return true;
  };
  const t = newClient(srv);
  const SENDS = 150;
  const acks = Array.from({ length: SENDS }, (_, i) => t.client.send({ toUser: "bob" }, `m${i}`));
  await t.client.connect();
  // (Order across a refusal is the real server's to keep, PREVIOUS_SEND_FAILED: not this fake's.)
  expect(await Promise.all(acks)).toHaveLength(SENDS);
  // Refused: what was in flight when the first refusal came back (the window of 64, and a few sent
  // as the first acks freed slots), then nothing: paced below the rate. (Unpaced, each refused send
  // went out again at its own time, and every refusal deepened the debt: over 6,000 refusals here.)
  expect(refused).toBeLessThan(2 * 64);
});

test("a send refused with INTERNAL or a code-named CANCELLED is resent, as docs/protocol.md §6 says", async () => {
  const srv = await startServer();
  const refusals: Array<[Code, string]> = [
    [Code.INTERNAL, "INTERNAL"],
    [Code.CANCELLED, "CANCELLED"],
  ];
  srv.hook = (conn, frame, s) => {
    if (frame.kind.case !== "send") return undefined;
    const next = refusals.shift();
    if (!next) return undefined;
    s.error(conn, frame, next[0], next[1]);
    return true;
  };
  const t = newClient(srv);
  await t.client.connect();
  const ack = await t.client.send({ toUser: "bob" }, "hi", { clientMsgId: "k-internal" });
  expect(ack).toMatchObject({ clientMsgId: "k-internal", seq: 1 });
  expect(srv.framesOf("send").map((f) => f.value.clientMsgId)).toEqual([
    "k-internal",
    "k-internal",
    "k-internal",
  ]);
});

test("a send is marked a first attempt only for a server that lists the feature", async () => {
  // A server of an earlier version refuses the unknown field in JSON frames.
  const srv = await startServer({ features: [] });
  const t = newClient(srv);
  await t.client.connect();
  await t.client.send({ toUser: "bob" }, "hi");
  expect(srv.framesOf("send").map((s) => s.value.firstAttempt)).toEqual([false]);
});

test("listMembers sends after and limit only to a server that lists member_pages", async () => {
  for (const features of [["first_attempt", "member_pages"], ["first_attempt"]]) {
    const srv = await startServer({ features });
    const t = newClient(srv);
    await t.client.connect();
    await t.client.listMembers("g:1", { after: "bob", limit: 10 });
    const [frame] = srv.framesOf("listMembers");
    // A server without the feature refuses the fields in JSON, and answers every member anyway.
    expect({ after: frame?.value.after, limit: frame?.value.limit }).toEqual(
      features.includes("member_pages") ? { after: "bob", limit: 10 } : { after: "", limit: 0 },
    );
    t.client.close();
    await srv.close();
  }
});

test("a retryable error pauses every queued send, not just the failed one", async () => {
  const srv = await startServer();
  let refusedAt = 0;
  const laterSendsAt: number[] = [];
  srv.hook = (conn, frame, s) => {
    if (frame.kind.case !== "send") return undefined;
    if (refusedAt !== 0) {
      laterSendsAt.push(Date.now());
      return undefined;
    }
    refusedAt = Date.now();
    s.error(conn, frame, Code.UNAVAILABLE, "STORAGE_UNAVAILABLE", 300);
    return true;
  };
  const t = newClient(srv, { maxInflightSends: 1 });
  await t.client.connect();
  const acks = await Promise.all(
    Array.from({ length: 5 }, (_, i) => t.client.send({ toUser: "bob" }, `m${i}`)),
  );
  expect(acks).toHaveLength(5);
  // With one send in flight, the refusal came before the others went out: all of them waited.
  expect(laterSendsAt).toHaveLength(5);
  for (const at of laterSendsAt) expect(at - refusedAt).toBeGreaterThanOrEqual(290);
});

test("sends queue while disconnected, go out in order, and the queue is bounded", async () => {
  const srv = await startServer();
  const t = newClient(srv, { maxPendingSends: 3 });
  const a = t.client.send({ toUser: "bob" }, "1");
  const b = t.client.send({ toUser: "bob" }, "2");
  const again = t.client.send({ toUser: "bob" }, "2 again", { clientMsgId: "k3" });
  const same = t.client.send({ toUser: "bob" }, "2 again", { clientMsgId: "k3" });
  await expect(t.client.send({ toUser: "bob" }, "4")).rejects.toMatchObject({ reason: "SEND_QUEUE_FULL" });
  expect(same).toBe(again); // same key while pending: one send, one promise
  await t.client.connect();
  const acks = await Promise.all([a, b, again]);
  expect(acks.map((x) => x.seq)).toEqual([1, 2, 3]);
  expect(srv.framesOf("send").map((f) => f.value.body)).toEqual(["1", "2", "2 again"]);
});

test("close() rejects pending work and stops reconnecting", async () => {
  const srv = await startServer();
  srv.hook = (_conn, frame) => frame.kind.case === "send" || frame.kind.case === "listMembers" || undefined;
  const t = newClient(srv);
  await t.client.connect();
  const s = settledOnce(t.client.send({ toUser: "bob" }, "never acked"));
  const r = settledOnce(t.client.listMembers("g:1"));
  await srv.waitFor(() => srv.framesOf("listMembers").length === 1, "request on the wire");
  await t.client.close();
  await new Promise((res) => setTimeout(res, 10));
  expect(s.error).toMatchObject({ reason: "CLOSED" });
  expect(r.error).toMatchObject({ reason: "CLOSED" });
  await new Promise((res) => setTimeout(res, 80));
  expect(srv.conns).toHaveLength(1);
  expect(srv.conns[0]!.closeCode).toBe(1000);
  expect(t.disconnects).toEqual([{ code: 1000, reason: "client closed", willReconnect: false }]);
  await expect(t.client.history({ conversationId: "g:1" })).rejects.toMatchObject({
    reason: "NOT_CONNECTED",
  });
});

test("a send refused again and again until its timeout names the last refusal in its TIMEOUT", async () => {
  const srv = await startServer();
  srv.hook = (conn, frame, s) => {
    if (frame.kind.case !== "send") return undefined;
    s.error(conn, frame, Code.RESOURCE_EXHAUSTED, "STORAGE_FULL", 50);
    return true;
  };
  const t = newClient(srv);
  await t.client.connect();
  const sent = t.client.send({ toUser: "bob" }, "hi", { timeoutMs: 300 });
  await expect(sent).rejects.toMatchObject({ reason: "TIMEOUT", code: Code.DEADLINE_EXCEEDED });
  await expect(sent).rejects.toThrow(/last refused with STORAGE_FULL: .*it may still be stored/);
  expect(srv.framesOf("send").length).toBeGreaterThan(1); // retried meanwhile
});

test("a send acknowledged late, once it went out again, frees its place in the window for the next", async () => {
  // Seen under a Cassandra freeze: every send in the window timed out and went out again, their
  // first attempts' acks came late, and the sends queued behind the window never went out.
  const srv = await startServer();
  let late: (() => void) | undefined;
  srv.hook = (conn, frame, s) => {
    if (frame.kind.case !== "send" || frame.kind.value.body !== "first") return undefined;
    const server = s as unknown as { handle(c: typeof conn, f: typeof frame): void };
    if (!late) {
      late = () => server.handle(conn, frame); // answered only once it went out again
      return true;
    }
    late(); // the first attempt's ack, after its request timed out; the second attempt: no answer
    return true;
  };
  const t = newClient(srv, { maxInflightSends: 1, requestTimeoutMs: 200 });
  await t.client.connect();
  const first = t.client.send({ toUser: "bob" }, "first");
  const second = t.client.send({ toUser: "bob" }, "second");
  expect((await first).seq).toBe(1);
  const stuck = new Promise((resolve) => setTimeout(() => resolve("still queued after 2 s"), 2_000));
  expect(await Promise.race([second, stuck])).toMatchObject({ seq: 2 });
});

test("a send that times out in the window gives its place to the next", async () => {
  const srv = await startServer();
  srv.hook = (_conn, frame) => (frame.kind.case === "send" && frame.kind.value.body === "first") || undefined;
  const t = newClient(srv, { maxInflightSends: 1 });
  await t.client.connect();
  const first = t.client.send({ toUser: "bob" }, "first", { timeoutMs: 200 });
  const second = t.client.send({ toUser: "bob" }, "second");
  await expect(first).rejects.toMatchObject({ reason: "TIMEOUT" });
  const stuck = new Promise((resolve) => setTimeout(() => resolve("still queued after 2 s"), 2_000));
  expect(await Promise.race([second, stuck])).toMatchObject({ seq: 1 });
});

test("a request without an answer times out with reason TIMEOUT", async () => {
  const srv = await startServer();
  srv.hook = (_conn, frame) => frame.kind.case === "listMembers" || undefined; // never answered
  const t = newClient(srv, { requestTimeoutMs: 300 });
  await t.client.connect();
  const started = Date.now();
  await expect(t.client.listMembers("g:1")).rejects.toMatchObject({
    reason: "TIMEOUT",
    code: Code.DEADLINE_EXCEEDED,
  });
  expect(Date.now() - started).toBeGreaterThanOrEqual(295);
});

test("a non-idempotent request in flight when the connection drops fails with CONNECTION_LOST, not re-sent", async () => {
  const srv = await startServer();
  let dropped = false;
  srv.hook = (conn, frame) => {
    if (frame.kind.case !== "createGroup" || dropped) return undefined;
    dropped = true;
    conn.ws.terminate();
    return true;
  };
  const t = newClient(srv);
  await t.client.connect();
  await expect(t.client.createGroup({ name: "x" })).rejects.toMatchObject({
    reason: "CONNECTION_LOST",
    code: Code.UNAVAILABLE,
  });
  await srv.waitFor(() => t.connected() === 2, "reconnected");
  expect(srv.framesOf("createGroup")).toHaveLength(1);
  // The next call works on the new connection.
  await expect(t.client.createGroup({ name: "y" })).resolves.toMatchObject({ name: "y", kind: "group" });
});

test("a request refused with RATE_LIMITED (before it did anything) is asked again after retryAfterMs", async () => {
  const srv = await startServer();
  let refusals = 0;
  srv.hook = (conn, frame, s) => {
    if (frame.kind.case !== "createGroup" || refusals >= 2) return undefined;
    refusals++;
    s.error(conn, frame, Code.RESOURCE_EXHAUSTED, "RATE_LIMITED", 20);
    return true;
  };
  const t = newClient(srv);
  await t.client.connect();
  await expect(t.client.createGroup({ name: "x" })).resolves.toMatchObject({ name: "x", kind: "group" });
  expect(srv.framesOf("createGroup")).toHaveLength(3);
  // One whose wait would pass its timeout is the caller's.
  refusals = 0;
  srv.hook = (conn, frame, s) => {
    if (frame.kind.case !== "createGroup") return undefined;
    s.error(conn, frame, Code.RESOURCE_EXHAUSTED, "RATE_LIMITED", 60_000);
    return true;
  };
  await expect(t.client.createGroup({ name: "y" })).rejects.toMatchObject({ reason: "RATE_LIMITED" });
});

test("heartbeats at the welcome's interval; a connection whose heartbeats go unanswered is replaced", async () => {
  const srv = await startServer({ heartbeatIntervalMs: 20 });
  let answer = true;
  srv.hook = (_conn, frame) => (frame.kind.case === "heartbeat" && !answer) || undefined;
  const t = newClient(srv, { requestTimeoutMs: 400 });
  await t.client.connect();
  await srv.waitFor(() => srv.framesOf("heartbeat").length >= 3, "three heartbeats");
  expect(t.disconnects).toHaveLength(0);
  answer = false;
  await srv.waitFor(() => t.disconnects.length === 1, "heartbeat timeout");
  answer = true;
  expect(t.disconnects[0]).toMatchObject({ code: 1006, reason: "heartbeat timeout", willReconnect: true });
  await srv.waitFor(() => t.connected() === 2, "reconnected");
});

test("a server `reconnect` (drain) event moves the client within the announced window", async () => {
  const srv = await startServer();
  const t = newClient(srv);
  await t.client.connect();
  await srv.waitFor(() => t.synced.length === 1, "sync");
  const at = Date.now();
  srv.push(srv.conns[0]!, {
    kind: { case: "reconnect", value: { reason: "draining", delayMsMin: 40, delayMsMax: 60 } },
  });
  await srv.waitFor(() => t.connected() === 2, "second connection");
  expect(Date.now() - at).toBeGreaterThanOrEqual(38);
  expect(srv.conns[0]!.closeCode).toBe(1000);
  expect(t.disconnects[0]).toMatchObject({ code: 1000, willReconnect: true, reconnectInMs: 0 });
});

test("close 1009 drops the oversized send (never re-sent) and re-sends the others", async () => {
  const srv = await startServer();
  srv.hook = (conn, frame, s) => {
    if (frame.kind.case === "send" && frame.kind.value.body.length > 1000 && s.conns.length === 1) {
      conn.ws.close(1009, "frame too big");
      return true;
    }
    if (frame.kind.case === "send" && s.conns.length === 1) return true; // hold small ones unacked
    return undefined;
  };
  const t = newClient(srv);
  await t.client.connect();
  const small = t.client.send({ toUser: "bob" }, "small", { clientMsgId: "small" });
  const big = t.client.send({ toUser: "bob" }, "x".repeat(5000), { clientMsgId: "big" });
  await expect(big).rejects.toMatchObject({ reason: "FRAME_TOO_LARGE" });
  await expect(small).resolves.toMatchObject({ clientMsgId: "small" });
  expect(srv.framesOf("send").map((f) => [f.conn.index, f.value.clientMsgId])).toEqual([
    [0, "small"],
    [0, "big"],
    [1, "small"],
  ]);
});

test("presence subscriptions are renewed after a reconnect", async () => {
  const srv = await startServer();
  const t = newClient(srv);
  const presence: string[] = [];
  t.client.on("presence", (p) => presence.push(p.userId));
  await t.client.connect();
  const snapshot = await t.client.subscribePresence(["bob", "carol"]);
  expect(snapshot.map((s) => s.userId)).toEqual(["bob", "carol"]);
  srv.conns[0]!.ws.terminate();
  await srv.waitFor(() => presence.length === 2, "renewed snapshot as events");
  expect(srv.framesOf("subscribePresence").map((f) => [f.conn.index, f.value.userIds])).toEqual([
    [0, ["bob", "carol"]],
    [1, ["bob", "carol"]],
  ]);
});

test("a user unsubscribed while their subscribe was on its way is not renewed after a reconnect", async () => {
  const srv = await startServer();
  // The subscribe's snapshot comes only after the unsubscribe was sent (answered in order, as the
  // gateway does).
  let held: (() => void) | undefined;
  srv.hook = (conn, frame, s) => {
    if (frame.kind.case !== "subscribePresence" || conn.index !== 0) return undefined;
    held = () => s.reply(conn, frame, { case: "presenceSnapshot", value: { statuses: [] } });
    return true;
  };
  const t = newClient(srv);
  await t.client.connect();
  const subscribed = t.client.subscribePresence(["bob", "carol"]);
  await srv.waitFor(() => held !== undefined, "subscribe sent");
  const unsubscribed = t.client.unsubscribePresence(["bob"]);
  await srv.waitFor(() => srv.framesOf("unsubscribePresence").length === 1, "unsubscribe sent");
  held!();
  await subscribed;
  await unsubscribed;
  srv.conns[0]!.ws.terminate();
  await srv.waitFor(() => srv.framesOf("subscribePresence").some((f) => f.conn.index === 1), "renewed");
  expect(srv.framesOf("subscribePresence").map((f) => [f.conn.index, f.value.userIds])).toEqual([
    [0, ["bob", "carol"]],
    [1, ["carol"]],
  ]);
});

test("a presence renewal refused RATE_LIMITED is asked again after retryAfterMs", async () => {
  const srv = await startServer();
  let refused = 0;
  srv.hook = (conn, frame, s) => {
    if (frame.kind.case !== "subscribePresence" || conn.index !== 1 || refused > 0) return undefined;
    refused++;
    s.error(conn, frame, Code.RESOURCE_EXHAUSTED, "RATE_LIMITED", 30);
    return true;
  };
  const t = newClient(srv);
  const presence: string[] = [];
  t.client.on("presence", (p) => presence.push(p.userId));
  await t.client.connect();
  await t.client.subscribePresence(["bob"]);
  srv.conns[0]!.ws.terminate();
  await srv.waitFor(() => presence.includes("bob"), "renewed after the wait");
  expect(srv.framesOf("subscribePresence").map((f) => f.conn.index)).toEqual([0, 1, 1]);
  expect(t.errors).toEqual([]);
});

test("a presence renewal refused over and over waits longer each time, at random, and ends granted", async () => {
  const srv = await startServer();
  // The server refuses the renewal five times (the user's other tabs took the limit), each time
  // saying retryAfterMs 20; then grants it. Also refused as too slow once (DEADLINE_EXCEEDED).
  const asked: number[] = [];
  srv.hook = (conn, frame, s) => {
    if (frame.kind.case !== "subscribePresence" || conn.index !== 1) return undefined;
    asked.push(Date.now());
    if (asked.length === 3) s.error(conn, frame, Code.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", 20);
    else if (asked.length <= 5) s.error(conn, frame, Code.RESOURCE_EXHAUSTED, "RATE_LIMITED", 20);
    else return undefined;
    return true;
  };
  // A tenth of each window: 20 + 0.1 * (250 * 2^n - 20) ms.
  const t = newClient(srv, { random: () => 0.1 });
  const presence: string[] = [];
  t.client.on("presence", (p) => presence.push(p.userId));
  await t.client.connect();
  await t.client.subscribePresence(["bob"]);
  srv.conns[0]!.ws.terminate();
  await srv.waitFor(() => presence.includes("bob"), "renewed in the end", 10_000);
  expect(asked).toHaveLength(6);
  const gaps = asked.slice(1).map((at, i) => at - asked[i]!);
  const expected = [1, 2, 3, 4, 5].map((n) => Math.ceil(20 + 0.1 * (250 * 2 ** n - 20)));
  for (const [i, gap] of gaps.entries()) expect(gap).toBeGreaterThanOrEqual(expected[i]! - 2);
  // Each wait at least about double the one before (not retryAfterMs again and again).
  for (let i = 1; i < gaps.length; i++) expect(gaps[i]!).toBeGreaterThan(gaps[i - 1]! * 1.5);
  expect(t.errors).toEqual([]);
});

test("a presence renewal's wait is at least retryAfterMs, grows with the refusals, and stops growing at 30 s", () => {
  const max = PRESENCE_RENEWAL_WAIT_MAX_MS;
  expect(presenceRenewalWaitMs(100, 1, () => 0)).toBe(100);
  expect(presenceRenewalWaitMs(100, 1, () => 1)).toBe(500);
  expect(presenceRenewalWaitMs(100, 2, () => 1)).toBe(1_000);
  expect(presenceRenewalWaitMs(100, 3, () => 0.5)).toBe(1_050);
  expect(presenceRenewalWaitMs(100, 12, () => 1)).toBe(max);
  expect(presenceRenewalWaitMs(100, 1_000, () => 1)).toBe(max);
  expect(presenceRenewalWaitMs(0, 1, () => 1)).toBe(500);
  // The server's word wins over the cap.
  expect(presenceRenewalWaitMs(45_000, 3, () => 1)).toBe(45_000);
});

test("presence is renewed in requests of at most 100 users, dropping those no longer contacts", async () => {
  const srv = await startServer();
  // Like the gateway: more than 100 targets, or one the user shares no conversation with, fail the
  // whole request. "dave" shared only a group the user left while disconnected.
  let strangers = new Set<string>();
  srv.hook = (conn, frame, s) => {
    if (frame.kind.case !== "subscribePresence") return undefined;
    const ids = frame.kind.value.userIds;
    if (ids.length > 100) s.error(conn, frame, Code.INVALID_ARGUMENT, "INVALID_PRESENCE_TARGETS");
    else if (ids.some((u) => strangers.has(u))) s.error(conn, frame, Code.PERMISSION_DENIED, "NOT_A_CONTACT");
    else return undefined;
    return true;
  };
  const t = newClient(srv);
  const online = new Set<string>();
  t.client.on("presence", (p) => online.add(p.userId));
  await t.client.connect();
  const users = Array.from({ length: 150 }, (_, i) => `u${i}`);
  users[120] = "dave";
  await t.client.subscribePresence(users.slice(0, 100));
  await t.client.subscribePresence(users.slice(100));
  strangers = new Set(["dave"]);

  srv.conns[0]!.ws.terminate();
  const others = users.filter((u) => u !== "dave");
  await srv.waitFor(() => others.every((u) => online.has(u)), "every contact renewed");
  const renewals = srv.framesOf("subscribePresence").filter((f) => f.conn.index === 1);
  expect(renewals.every((f) => f.value.userIds.length <= 100)).toBe(true);
  expect(online.has("dave")).toBe(false);
  expect(t.errors).toEqual([]);

  // Dave is no longer watched: the next reconnect renews the others without asking for him.
  online.clear();
  srv.conns[1]!.ws.terminate();
  await srv.waitFor(() => others.every((u) => online.has(u)), "renewed again");
  const again = srv.framesOf("subscribePresence").filter((f) => f.conn.index === 2);
  expect(again.map((f) => f.value.userIds.length)).toEqual([100, 49]);
  expect(t.errors).toEqual([]);
});

test("the encoding is negotiated as a subprotocol, so the welcome after header auth comes in kind", async () => {
  const srv = await startServer();
  const bin = newClient(srv, { encoding: "binary" });
  await bin.client.connect();
  const json = newClient(srv, { encoding: "json" });
  await json.client.connect();
  expect(srv.conns.map((c) => [c.ws.protocol, c.welcomeBinary])).toEqual([
    ["switchboard.v1.proto", true],
    ["switchboard.v1.json", false],
  ]);
});

test("a welcome in the other encoding is still understood (server that ignores the subprotocol)", async () => {
  const srv = await startServer({ welcomeEncoding: "binary" });
  const t = newClient(srv, { encoding: "json" });
  await expect(t.client.connect()).resolves.toMatchObject({ userId: "alice", sessionId: "s0" });
  await srv.waitFor(() => t.synced.length === 1, "sync");
});

test("auth frame mode (browser-style) authenticates with a first auth frame, never the URL", async () => {
  const srv = await startServer();
  const t = newClient(srv, { auth: "frame", WebSocket: WsWebSocket, encoding: "binary" });
  await t.client.connect();
  expect(srv.headerTokens).toEqual([]);
  const [auth] = srv.framesOf("auth");
  expect(auth).toMatchObject({ value: { token: "token-alice" }, binary: true });
  expect(auth!.id).toBeGreaterThan(0);
  expect(srv.frames[0]!.frame.kind.case).toBe("auth");
  expect(srv.url).not.toContain("token");
});

test("a URL the WebSocket cannot open is a terminal error", async () => {
  const t = new SwitchboardClient({ url: "not a url", token: "x", WebSocket: WsWebSocket });
  clients.push(t);
  await expect(t.connect()).rejects.toMatchObject({ reason: "OPEN_FAILED", code: Code.INVALID_ARGUMENT });
  expect(t.state).toBe("closed");
});

test("a URL function that gives no URL is asked again, not a terminal error", async () => {
  const srv = await startServer();
  let asked = 0;
  const t = newClient(srv, {
    // A discovery endpoint that answered 503 without a url (a gateway that began to drain).
    url: async () => (++asked === 1 ? (undefined as unknown as string) : srv.url),
  });
  await t.client.connect();
  expect(asked).toBe(2);
  expect(t.client.state).toBe("open");
  expect(t.errors.map((e) => e.message)).toEqual([
    expect.stringContaining("the url function gave undefined"),
  ]);
});

/** Records the timers made with `delayMs` and whether each was cleared (a Node process exits only without them). */
function watchTimers(delayMs: number) {
  const made: unknown[] = [];
  const cleared = new Set<unknown>();
  const realSetTimeout = globalThis.setTimeout;
  const realClearTimeout = globalThis.clearTimeout;
  const set = vi.spyOn(globalThis, "setTimeout").mockImplementation(((
    fn: (...args: unknown[]) => void,
    ms?: number,
    ...args: unknown[]
  ) => {
    const handle = realSetTimeout(fn, ms, ...args);
    if (ms === delayMs) made.push(handle);
    return handle;
  }) as typeof setTimeout);
  const clear = vi.spyOn(globalThis, "clearTimeout").mockImplementation((handle) => {
    cleared.add(handle);
    realClearTimeout(handle);
  });
  return {
    made,
    pending: () => made.filter((h) => !cleared.has(h)),
    restore: () => {
      set.mockRestore();
      clear.mockRestore();
    },
  };
}

describe("sends are keyed by (conversation, clientMsgId), as the server dedupes them (docs/protocol.md §3)", () => {
  test("the same clientMsgId in another conversation is another message: both go out, each with its own ack", async () => {
    const srv = await startServer();
    srv.groups.set("g:1", ["alice", "bob"]);
    srv.groups.set("g:2", ["alice", "carol"]);
    const t = newClient(srv);
    await t.client.connect();
    const one = t.client.send({ conversationId: "g:1" }, "to the first group", { clientMsgId: "k" });
    const two = t.client.send({ conversationId: "g:2" }, "to the second group", { clientMsgId: "k" });
    expect(two).not.toBe(one);
    const acks = await Promise.all([one, two]);
    expect(acks.map((a) => [a.conversationId, a.clientMsgId, a.duplicate])).toEqual([
      ["g:1", "k", false],
      ["g:2", "k", false],
    ]);
    expect(srv.framesOf("send").map((f) => f.value.body)).toEqual([
      "to the first group",
      "to the second group",
    ]);
    expect([srv.log.get("g:1")?.length, srv.log.get("g:2")?.length]).toEqual([1, 1]);
  });

  test("a toUser target and its direct conversation's id are one key: one message, one promise", async () => {
    const srv = await startServer();
    const t = newClient(srv);
    await t.client.connect();
    const byUser = t.client.send({ toUser: "bob" }, "hi", { clientMsgId: "k" });
    const byId = t.client.send({ conversationId: "dm:alice~bob" }, "hi", { clientMsgId: "k" });
    expect(byId).toBe(byUser);
    await expect(byId).resolves.toMatchObject({ conversationId: "dm:alice~bob", seq: 1 });
    expect(srv.framesOf("send")).toHaveLength(1);
  });

  test("before the first welcome both go out and resolve with the one stored message", async () => {
    const srv = await startServer();
    const t = newClient(srv);
    const byUser = t.client.send({ toUser: "bob" }, "hi", { clientMsgId: "k" });
    const byId = t.client.send({ conversationId: "dm:alice~bob" }, "hi", { clientMsgId: "k" });
    await t.client.connect();
    const [a, b] = await Promise.all([byUser, byId]);
    expect(b.messageId).toBe(a.messageId);
    expect(srv.log.get("dm:alice~bob")).toHaveLength(1);
  });

  test("a late ack settles the send of its own conversation, not another with the same clientMsgId", async () => {
    const srv = await startServer();
    srv.groups.set("g:1", ["alice"]);
    srv.groups.set("g:2", ["alice"]);
    let answer = false;
    srv.hook = (_conn, frame) => (frame.kind.case === "send" && !answer) || undefined; // no acks yet
    const t = newClient(srv, { requestTimeoutMs: 300 });
    await t.client.connect();
    const one = settledOnce(t.client.send({ conversationId: "g:1" }, "one", { clientMsgId: "k" }));
    const two = settledOnce(t.client.send({ conversationId: "g:2" }, "two", { clientMsgId: "k" }));
    // Both attempts time out and go out again; then the ack of g:2's first attempt comes, late.
    await srv.waitFor(() => srv.framesOf("send").length >= 4, "the resends");
    const firstOfTwo = srv.frames.find(
      (f) => f.frame.kind.case === "send" && f.frame.kind.value.target.value === "g:2",
    )!;
    srv.reply(firstOfTwo.conn, firstOfTwo.frame, {
      case: "ack",
      value: srv.store("alice", "g:2", "k", "two", ["alice"]),
    });
    await srv.waitFor(() => two.settled, "the late ack settles the g:2 send");
    expect(two.value).toMatchObject({ conversationId: "g:2", clientMsgId: "k" });
    expect(one.settled).toBe(false);
    answer = true;
    await srv.waitFor(() => one.settled, "the g:1 send's ack");
    expect(one.value).toMatchObject({ conversationId: "g:1", clientMsgId: "k" });
  });
});

describe("a checkpoint to persist: the cursor and the pull positions, never moved back by a pull message", () => {
  /** A server where alice has one direct message in her inbox (cursor 1) and is in pull group g:big. */
  async function serverWithPullGroup(): Promise<FakeServer> {
    const srv = await startServer();
    srv.addMessage("dm:alice~bob", "bob", "m1", ["alice", "bob"]);
    srv.groups.set("g:big", ["alice", "bob"]);
    srv.pull.add("g:big");
    return srv;
  }

  test("a pull message's event carries the inbox cursor, not the wire's 0, and says it is a pull message", async () => {
    const srv = await serverWithPullGroup();
    const t = newClient(srv);
    await t.client.connect();
    await srv.waitFor(() => t.messages.length === 1, "the inbox message");
    srv.addMessage("g:big", "bob", "p1", ["alice", "bob"]); // live, cursor 0 on the wire
    await srv.waitFor(() => t.messages.length === 2, "the pull message");
    expect(t.messages.map((m) => [m.message.body, m.cursor, m.delivery])).toEqual([
      ["m1", 1, "push"],
      ["p1", 1, "pull"],
    ]);
    expect(t.client.cursor).toBe(1);
    expect(t.client.checkpoint).toEqual({
      cursor: 1,
      pullPositions: { "dm:alice~bob": 1, "g:big": 1 },
      dataSet: "data-set-1",
    });
  });

  test("the checkpoint event follows the message listeners; a client started from it misses nothing and repeats nothing", async () => {
    const srv = await serverWithPullGroup();
    const first = newClient(srv);
    const order: string[] = [];
    let saved: Checkpoint | undefined;
    first.client.on("message", ({ message }) => order.push(message.body));
    first.client.on("checkpoint", (checkpoint) => {
      // Plain JSON, what the app writes to its storage.
      saved = JSON.parse(JSON.stringify(checkpoint)) as Checkpoint;
      order.push(`checkpoint ${checkpoint.cursor} ${checkpoint.pullPositions["g:big"] ?? "-"}`);
    });
    await first.client.connect();
    await srv.waitFor(() => first.messages.length === 1, "the inbox message");
    srv.addMessage("g:big", "bob", "p1", ["alice", "bob"]);
    await srv.waitFor(() => saved?.pullPositions["g:big"] === 1, "the checkpoint after the pull message");
    expect(order).toEqual(["m1", "checkpoint 1 -", "p1", "checkpoint 1 1"]);
    await first.client.close();

    // While the app is closed: one inbox message and two of the pull group.
    srv.addMessage("dm:alice~bob", "bob", "m2", ["alice", "bob"]);
    srv.addMessage("g:big", "bob", "p2", ["alice", "bob"]);
    srv.addMessage("g:big", "bob", "p3", ["alice", "bob"]);
    const second = newClient(srv, { checkpoint: saved });
    await second.client.connect();
    await srv.waitFor(() => second.messages.length === 3, "what came while the app was closed");
    await new Promise((r) => setTimeout(r, 30));
    expect(second.messages.map((m) => [m.message.body, m.cursor, m.delivery])).toEqual([
      ["m2", 2, "push"],
      ["p2", 2, "pull"],
      ["p3", 2, "pull"],
    ]);
    expect(second.client.checkpoint).toEqual({
      cursor: 2,
      pullPositions: { "dm:alice~bob": 2, "g:big": 3 },
      dataSet: "data-set-1",
    });
    expect(second.errors).toEqual([]);
  });

  test("an app that saves each event's cursor (the old way) never goes back to 0", async () => {
    const srv = await serverWithPullGroup();
    const t = newClient(srv);
    let stored = "";
    t.client.on("message", ({ cursor }) => {
      stored = String(cursor);
    });
    await t.client.connect();
    await srv.waitFor(() => t.messages.length === 1, "the inbox message");
    srv.addMessage("g:big", "bob", "p1", ["alice", "bob"]);
    await srv.waitFor(() => t.messages.length === 2, "the pull message");
    expect(stored).toBe("1");
  });
});

describe("sends are given up well inside the server's dedupe window", () => {
  test("a send made longer ago than sendMaxAgeMs (default 24 h) is refused with SEND_EXPIRED, not sent", async () => {
    const srv = await startServer();
    const t = newClient(srv);
    await t.client.connect();
    const dayAndHourAgo = Date.now() - 25 * 3_600_000;
    await expect(
      t.client.send({ toUser: "bob" }, "from an old outbox", {
        clientMsgId: "old",
        createdAtMs: dayAndHourAgo,
      }),
    ).rejects.toMatchObject({ reason: "SEND_EXPIRED", code: Code.DEADLINE_EXCEEDED });
    // Within the bound it goes out as usual.
    await expect(
      t.client.send({ toUser: "bob" }, "recent", { createdAtMs: Date.now() - 3_600_000 }),
    ).resolves.toMatchObject({ seq: 1 });
    expect(srv.framesOf("send").map((f) => f.value.body)).toEqual(["recent"]);
  });

  test("a send never acknowledged is given up at sendMaxAgeMs although sendTimeoutMs is 0", async () => {
    const srv = await startServer();
    srv.hook = (_conn, frame) => frame.kind.case === "send" || undefined; // never acked
    const t = newClient(srv, { sendMaxAgeMs: 150 });
    await t.client.connect();
    const started = Date.now();
    await expect(t.client.send({ toUser: "bob" }, "never acked")).rejects.toMatchObject({
      reason: "SEND_EXPIRED",
    });
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
    expect(t.client.pendingSends).toBe(0);
  });

  test("a send queued while offline past its bound (the device slept) is not sent when the connection comes", async () => {
    const srv = await startServer();
    const t = newClient(srv);
    const queued = settledOnce(t.client.send({ toUser: "bob" }, "queued a day ago"));
    const now = Date.now;
    const later = vi.spyOn(Date, "now").mockImplementation(() => now() + 25 * 3_600_000);
    try {
      await t.client.connect();
      await srv.waitFor(() => queued.settled, "the queued send given up");
    } finally {
      later.mockRestore();
    }
    expect(queued.error).toMatchObject({ reason: "SEND_EXPIRED" });
    expect(srv.framesOf("send")).toHaveLength(0);
  });
});

test("a sync page that times out is asked again half as large (down to a floor), growing back once pages come in time", async () => {
  const srv = await startServer({ syncPageSize: 1_000 });
  for (let i = 1; i <= 300; i++) srv.addMessage("dm:alice~bob", "bob", `m${i}`, ["alice", "bob"]);
  // A slow link: the first two pages never come.
  srv.hook = (_conn, frame, s) => (frame.kind.case === "sync" && s.framesOf("sync").length <= 2) || undefined;
  const t = newClient(srv, { requestTimeoutMs: 300 });
  await t.client.connect();
  await srv.waitFor(() => t.synced.length === 1, "the sync");
  // 0 is the server's page (100): 50, then 25 (the floor would be 10); after four pages in time 50,
  // after four more the configured size again.
  expect(srv.framesOf("sync").map((f) => f.value.limit)).toEqual([0, 50, 25, 25, 25, 25, 50, 50, 50, 50]);
  expect(t.messages).toHaveLength(300);
  expect(t.errors.map((e) => e.reason)).toEqual(["TIMEOUT", "TIMEOUT"]);
  srv.conns.at(-1)!.ws.terminate();
  await srv.waitFor(() => t.synced.length === 2, "the next sync");
  expect(srv.framesOf("sync").at(-1)!.value.limit).toBe(0);
});

describe("errors answering the auth frame reach the app (docs/protocol.md §1.3)", () => {
  const frameAuth = { auth: "frame", WebSocket: WsWebSocket } as const;

  test("AUTH_UNAVAILABLE is reported, and its retryAfterMs holds the reconnect back", async () => {
    const srv = await startServer();
    srv.hook = (conn, frame, s) => {
      if (frame.kind.case !== "auth" || s.framesOf("auth").length > 1) return undefined;
      s.error(conn, frame, Code.UNAVAILABLE, "AUTH_UNAVAILABLE", 300);
      conn.ws.close(1011, "auth unavailable");
      return true;
    };
    const t = newClient(srv, frameAuth);
    const started = Date.now();
    await t.client.connect();
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    expect(t.errors).toEqual([expect.objectContaining({ reason: "AUTH_UNAVAILABLE", retryAfterMs: 300 })]);
    expect(t.disconnects).toEqual([expect.objectContaining({ code: 1011, willReconnect: true })]);
    expect(t.disconnects[0]!.reconnectInMs).toBeGreaterThanOrEqual(300);
  });

  test.each([
    ["TOO_MANY_CONNECTIONS", Code.RESOURCE_EXHAUSTED, 3015],
    ["TOKEN_EXPIRED", Code.UNAUTHENTICATED, 3005],
  ] as const)("%s is reported, then the client reconnects", async (reason, code, closeCode) => {
    const srv = await startServer();
    srv.hook = (conn, frame, s) => {
      if (frame.kind.case !== "auth" || s.framesOf("auth").length > 1) return undefined;
      s.error(conn, frame, code, reason);
      conn.ws.close(closeCode);
      return true;
    };
    let tokens = 0;
    const t = newClient(srv, {
      ...frameAuth,
      token: () => {
        tokens++;
        return "token-alice";
      },
    });
    await t.client.connect();
    expect(t.errors).toEqual([expect.objectContaining({ reason, code })]);
    expect(t.disconnects).toEqual([expect.objectContaining({ code: closeCode, willReconnect: true })]);
    expect(tokens).toBe(2);
  });

  test("a header-authenticated connection closed with 3015 alone is reported as TOO_MANY_CONNECTIONS", async () => {
    const srv = await startServer();
    srv.onConnect = (conn) => {
      if (conn.index > 0) return undefined;
      conn.ws.close(3015, "too many connections");
      return true;
    };
    const t = newClient(srv);
    await t.client.connect();
    expect(t.errors).toEqual([
      expect.objectContaining({
        reason: "TOO_MANY_CONNECTIONS",
        code: Code.RESOURCE_EXHAUSTED,
        closeCode: 3015,
      }),
    ]);
  });

  test("INVALID_TOKEN is reported once, with the server's words", async () => {
    const srv = await startServer();
    srv.hook = (conn, frame, s) => {
      if (frame.kind.case !== "auth") return undefined;
      s.error(conn, frame, Code.UNAUTHENTICATED, "INVALID_TOKEN");
      conn.ws.close(3500, "invalid token");
      return true;
    };
    const t = newClient(srv, frameAuth);
    await expect(t.client.connect()).rejects.toMatchObject({ reason: "INVALID_TOKEN", closeCode: 3500 });
    expect(t.errors).toHaveLength(1);
    expect(t.errors[0]!.message).toContain("invalid_token");
  });
});

describe("close() leaves nothing waiting", () => {
  test("close() during a RATE_LIMITED wait rejects the request at once with CLOSED, its timer cleared", async () => {
    const srv = await startServer();
    srv.hook = (conn, frame, s) => {
      if (frame.kind.case !== "createGroup") return undefined;
      s.error(conn, frame, Code.RESOURCE_EXHAUSTED, "RATE_LIMITED", 5_000);
      return true;
    };
    const t = newClient(srv, { requestTimeoutMs: 20_000 });
    await t.client.connect();
    const timers = watchTimers(5_000);
    try {
      const created = settledOnce(t.client.createGroup({ name: "x" }));
      await srv.waitFor(() => timers.made.length === 1, "the wait for retryAfterMs");
      const closedAt = Date.now();
      await t.client.close();
      await srv.waitFor(() => created.settled, "the request rejected");
      expect(Date.now() - closedAt).toBeLessThan(1_000);
      expect(created.error).toMatchObject({ reason: "CLOSED" });
      expect(timers.pending()).toEqual([]);
    } finally {
      timers.restore();
    }
  });

  test("a pull gap that failed is reported and retried later; close() clears the retry's timer", async () => {
    const srv = await startServer();
    srv.groups.set("g:big", ["alice", "bob"]);
    srv.pull.add("g:big");
    for (let i = 1; i <= 2; i++) srv.addMessage("g:big", "bob", `p${i}`, ["alice", "bob"]);
    srv.hook = (conn, frame, s) => {
      if (frame.kind.case !== "history") return undefined;
      s.error(conn, frame, Code.INTERNAL, "INTERNAL");
      return true;
    };
    // The device had seen p1; p2 came while it was away, p3 comes live: the gap (p2) cannot be fetched.
    const timers = watchTimers(GAP_RETRY_DELAYS_MS[0]!);
    try {
      const t = newClient(srv, { pullPositions: { "g:big": 1 }, requestTimeoutMs: 20_000 });
      await t.client.connect();
      await srv.waitFor(() => t.errors.length === 1, "the failed catch-up, reported");
      srv.addMessage("g:big", "bob", "p3", ["alice", "bob"]);
      await srv.waitFor(() => t.errors.length === 2, "the failed gap, reported");
      expect(t.errors.map((e) => e.reason)).toEqual(["INTERNAL", "INTERNAL"]);
      expect(t.messages).toEqual([]); // p3 waits for p2
      expect(timers.pending()).toHaveLength(1); // one retry of the conversation, up to p3
      await t.client.close();
      expect(timers.pending()).toEqual([]);
    } finally {
      timers.restore();
    }
  });
});

test("a pull catch-up whose listing failed is asked again", async () => {
  const srv = await startServer();
  srv.groups.set("g:big", ["alice", "bob"]);
  srv.pull.add("g:big");
  for (let i = 1; i <= 3; i++) srv.addMessage("g:big", "bob", `p${i}`, ["alice", "bob"]);
  let refusals = 0;
  srv.hook = (conn, frame, s) => {
    if (frame.kind.case !== "listConversations" || refusals++ > 0) return undefined;
    s.error(conn, frame, Code.UNAVAILABLE, "STORAGE_UNAVAILABLE");
    return true;
  };
  const t = newClient(srv, { pullPositions: { "g:big": 1 } });
  await t.client.connect();
  await srv.waitFor(() => t.messages.length === 2, "p2 and p3, fetched after the listing was asked again");
  expect(t.messages.map((m) => m.message.body)).toEqual(["p2", "p3"]);
  expect(t.errors.map((e) => e.reason)).toEqual(["STORAGE_UNAVAILABLE"]);
  expect(srv.framesOf("listConversations")).toHaveLength(2);
});

test("close 1007 drops the culprit frame with INVALID_FRAME (never re-sent) and re-sends the others", async () => {
  const srv = await startServer();
  srv.hook = (conn, frame, s) => {
    if (frame.kind.case !== "send" || s.conns.length > 1) return undefined;
    if (frame.kind.value.body.length > 1000) conn.ws.close(1007, "invalid UTF-8");
    return true; // hold the small one unacked
  };
  const t = newClient(srv);
  await t.client.connect();
  const small = t.client.send({ toUser: "bob" }, "small", { clientMsgId: "small" });
  const big = t.client.send({ toUser: "bob" }, "x".repeat(5000), { clientMsgId: "big" });
  await expect(big).rejects.toMatchObject({ reason: "INVALID_FRAME", code: Code.INVALID_ARGUMENT });
  await expect(small).resolves.toMatchObject({ clientMsgId: "small" });
  expect(srv.framesOf("send").map((f) => [f.conn.index, f.value.clientMsgId])).toEqual([
    [0, "small"],
    [0, "big"],
    [1, "small"],
  ]);
});

test("does not show the app a group's older change that arrives after a newer one", async () => {
  const srv = await startServer();
  const t = newClient(srv);
  const names: string[] = [];
  t.client.on("conversation", (c) => names.push(c.name));
  await t.client.connect();
  const [conn] = srv.openConns();
  const change = (name: string, version: bigint, changedAtMs: bigint) =>
    srv.push(conn!, {
      kind: {
        case: "conversation",
        value: { conversation: { id: "g:1", kind: ConversationKind.GROUP, name, version }, changedAtMs },
      },
    });
  change("renamed", 2n, 2_000n);
  change("created", 1n, 1_000n); // re-sent late by a router that failed
  change("renamed", 2n, 2_000n); // the same change again
  // Made on a host whose clock is behind, but the newer change: versions order, not clocks.
  change("renamed again", 3n, 1_500n);
  change("renamed", 2n, 2_000n);
  await srv.waitFor(() => names.length === 3, "the changes");
  // A server that keeps no versions: its events are ordered by changedAtMs.
  change("old server", 0n, 5_000n);
  change("older", 0n, 4_000n);
  change("newer", 0n, 6_000n);
  // Versions seen before still count: an older one is not shown after them.
  change("renamed", 2n, 7_000n);
  change("last", 4n, 7_000n);
  await srv.waitFor(() => names.length === 6, "the unversioned changes");
  expect(names).toEqual(["renamed", "renamed", "renamed again", "old server", "newer", "last"]);
});
