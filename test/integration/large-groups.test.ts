/**
 * Large groups on the pull model (ADR 0010, docs/protocol.md "Delivery models"), on both backends,
 * with a small groups.pullThreshold: a message is stored once (no inbox entries, however many
 * members), online members get it live with cursor 0, the others fetch it by seq; the switch from push
 * under traffic loses and repeats nothing for the members who were there; a 10,000-member channel costs
 * what a small pull group costs per message.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { MessageEvent, ServerFrame } from "../../gen/switchboard/client/v1/client_pb.js";
import { DeliveryModel } from "../../gen/switchboard/common/v1/common_pb.js";
import { type IncomingMessage, SwitchboardClient } from "../../sdk/src/index.js";
import { scrape, sumOf } from "../helpers/metrics.js";
import { expectCase, RawClient } from "../helpers/raw-client.js";
import { devToken, type ServerProcess, startServer } from "../helpers/server.js";

const PULL_THRESHOLD = 5;
let server: ServerProcess;
let n = 0;
const user = (name: string) => `lg-${name}-${++n}`;

beforeAll(async () => {
  server = await startServer({ env: { SWITCHBOARD_GROUPS_PULL_THRESHOLD: String(PULL_THRESHOLD) } });
});
afterAll(async () => {
  await server.dispose();
});

async function connect(name: string, sync = true): Promise<RawClient> {
  const client = await RawClient.connect(server.url, { token: await devToken(server.dataDir, name) });
  if (sync) await client.syncAll();
  return client;
}

function send(client: RawClient, conversationId: string, body: string) {
  return client.request({
    case: "send",
    value: { target: { case: "conversationId", value: conversationId }, clientMsgId: `c-${++n}`, body },
  });
}

async function createGroup(owner: RawClient, members: string[]) {
  return expectCase(
    await owner.requestPaced({ case: "createGroup", value: { name: "big", members, open: true } }),
    "conversation",
  ).conversation!;
}

/** The message events a client was pushed for one conversation. */
const eventsOf = (client: RawClient, conversationId: string) =>
  client.received
    .filter((f: ServerFrame) => f.kind.case === "message")
    .map((f) => f.kind.value as MessageEvent)
    .filter((e) => e.message?.conversationId === conversationId);

/** Every message of a conversation after `afterSeq`, by history pages. */
async function historyAfter(client: RawClient, conversationId: string, afterSeq: bigint) {
  const out: bigint[] = [];
  for (let after = afterSeq; ; ) {
    const page = expectCase(
      await client.request({ case: "history", value: { conversationId, afterSeq: after, limit: 50 } }),
      "history",
    );
    out.push(...page.messages.map((m) => m.seq));
    if (!page.hasMore || page.messages.length === 0) return out;
    after = page.messages.at(-1)!.seq;
  }
}

async function metric(name: string): Promise<number> {
  return sumOf(await scrape(server.httpUrl), name);
}

async function until(pred: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("pull delivery", () => {
  it("stores a large group's message once: live to online members with cursor 0, by history to the others", async () => {
    const [owner, online, offline] = [user("owner"), user("online"), user("offline")];
    const others = Array.from({ length: PULL_THRESHOLD }, (_, i) => user(`m${i}`));
    const co = await connect(owner);
    const con = await connect(online);
    const group = await createGroup(co, [online, offline]);
    expect(group.delivery).toBe(DeliveryModel.PUSH);
    const entriesAtStart = await metric("switchboard_router_inbox_entries_total");
    expectCase(await send(co, group.id, "before"), "ack");
    await con.nextEvent((f) => f.kind.case === "message" && (f.kind.value as MessageEvent).cursor > 0n);
    // Its three entries are counted once every member's inbox partition delivered them.
    for (const deadline = Date.now() + 15_000; ; ) {
      if ((await metric("switchboard_router_inbox_entries_total")) === entriesAtStart + 3) break;
      if (Date.now() > deadline) throw new Error("timed out waiting for the three entries of 'before'");
      await new Promise((r) => setTimeout(r, 50));
    }

    // Past the threshold: pull, for good.
    const grown = expectCase(
      await co.request({ case: "addMembers", value: { conversationId: group.id, members: others } }),
      "conversation",
    ).conversation!;
    expect(grown).toMatchObject({ memberCount: PULL_THRESHOLD + 3, delivery: DeliveryModel.PULL });
    const entriesBefore = await metric("switchboard_router_inbox_entries_total");
    const acks = [];
    for (let i = 0; i < 3; i++) acks.push(expectCase(await send(co, group.id, `after ${i}`), "ack"));
    await until(() => eventsOf(con, group.id).length === 4, "the online member's live events");
    const live = eventsOf(con, group.id);
    expect(live.map((e) => [e.message?.seq, e.cursor])).toEqual([
      [1n, live[0]!.cursor],
      [2n, 0n],
      [3n, 0n],
      [4n, 0n],
    ]);
    expect(live[0]!.cursor).toBeGreaterThan(0n);
    // The sender's own device gets them live too (with its ack), and no inbox entry was written.
    await until(() => eventsOf(co, group.id).length === 4, "the sender's live events");
    expect(await metric("switchboard_router_inbox_entries_total")).toBe(entriesBefore);

    // A member who was offline: its inbox has what came before the switch; the rest is history.
    const cof = await connect(offline, false);
    const synced = await cof.syncAtLeast(1);
    expect(synced.messages.filter((e) => e.conversationId === group.id).map((e) => e.seq)).toEqual([1n]);
    expect(await historyAfter(cof, group.id, 1n)).toEqual([2n, 3n, 4n]);
    // Its conversation list tells it so in one request: pull, last seq 4, nothing read.
    const listed = expectCase(await cof.request({ case: "listConversations", value: {} }), "conversations");
    expect(listed.conversations.find((c) => c.id === group.id)).toMatchObject({
      delivery: DeliveryModel.PULL,
      lastSeq: 4n,
      readSeq: 0n,
    });
    // Typing in a pull conversation: a connection's indicators go out at most every 3 s.
    for (let i = 0; i < 3; i++)
      expectCase(
        await co.request({ case: "typing", value: { conversationId: group.id, typing: true } }),
        "ok",
      );
    await con.nextEvent((f) => f.kind.case === "typing");
    await new Promise((r) => setTimeout(r, 300)); // the dropped ones would arrive now
    expect(con.received.filter((f) => f.kind.case === "typing")).toHaveLength(1);
    // Shrinking does not switch back.
    const shrunk = expectCase(
      await co.request({ case: "removeMembers", value: { conversationId: group.id, members: others } }),
      "conversation",
    ).conversation!;
    expect(shrunk.delivery).toBe(DeliveryModel.PULL);
    for (const c of [co, con, cof]) c.close();
  });

  it("tells of a pull group's comings only whoever came, and of its other changes every member", async () => {
    const [owner, member, joiner, added] = [user("owner"), user("member"), user("joiner"), user("added")];
    const others = Array.from({ length: PULL_THRESHOLD }, (_, i) => user(`p${i}`));
    const [co, cm, cj, cj2, ca] = [
      await connect(owner),
      await connect(member),
      await connect(joiner),
      await connect(joiner),
      await connect(added),
    ];
    const group = await createGroup(co, [member, ...others]);
    expect(group.delivery).toBe(DeliveryModel.PULL);
    const changes = (c: RawClient) =>
      c.received.filter(
        (f: ServerFrame) =>
          f.replyTo === 0 && f.kind.case === "conversation" && f.kind.value.conversation?.id === group.id,
      );
    await cm.nextEvent((f) => f.kind.case === "conversation"); // created: every member hears of it

    expectCase(await cj.request({ case: "joinGroup", value: { conversationId: group.id } }), "conversation");
    await cj2.nextEvent((f) => f.kind.case === "conversation"); // the joiner's other device
    expectCase(
      await co.request({ case: "addMembers", value: { conversationId: group.id, members: [added] } }),
      "conversation",
    );
    await ca.nextEvent((f) => f.kind.case === "conversation");
    expectCase(await cj.request({ case: "leaveGroup", value: { conversationId: group.id } }), "ok");
    // A change of the group itself reaches everyone; the member heard of none of the comings above.
    expectCase(
      await co.request({ case: "updateGroup", value: { conversationId: group.id, name: "bigger" } }),
      "conversation",
    );
    await cm.nextEvent((f) => f.kind.case === "conversation" && f.kind.value.conversation?.name === "bigger");
    expect(
      changes(cm).map((f) => (f.kind.value as { conversation?: { name: string } }).conversation?.name),
    ).toEqual(["big", "bigger"]);
    for (const c of [co, cm, cj, cj2, ca]) c.close();
  });

  it("switches under traffic without losing or repeating a message for the members who were there", async () => {
    const [owner, watcher, sleeper] = [user("owner"), user("watcher"), user("sleeper")];
    const co = await connect(owner);
    const cw = await connect(watcher);
    const group = await createGroup(co, [watcher, sleeper]);
    const total = 60;
    const sending = (async () => {
      for (let i = 1; i <= total; i++) expectCase(await send(co, group.id, `m${i}`), "ack");
    })();
    // The switch lands somewhere in the middle of the traffic.
    await until(() => eventsOf(cw, group.id).length >= 15, "traffic before the switch");
    const newcomers = Array.from({ length: PULL_THRESHOLD }, (_, i) => user(`n${i}`));
    expectCase(
      await co.request({ case: "addMembers", value: { conversationId: group.id, members: newcomers } }),
      "conversation",
    );
    // The members it had hear of the switch: they follow the group by seq from now on.
    await cw.nextEvent(
      (f) =>
        f.kind.case === "conversation" &&
        f.kind.value.conversation?.id === group.id &&
        f.kind.value.conversation.delivery === DeliveryModel.PULL,
    );
    await sending;
    const all = Array.from({ length: total }, (_, i) => BigInt(i + 1));
    // Live: every message once, in order, some from the inbox (cursor > 0), the rest pulled (cursor 0).
    await until(() => eventsOf(cw, group.id).length >= total, "every live event");
    await new Promise((r) => setTimeout(r, 300)); // a repeat would arrive now
    const live = eventsOf(cw, group.id);
    expect(live.map((e) => e.message!.seq)).toEqual(all);
    const pushed = live.filter((e) => e.cursor > 0n).length;
    expect(pushed).toBeGreaterThan(0);
    expect(pushed).toBeLessThan(total);
    // The inbox part is a prefix, and cursors and seqs agree on where the switch was.
    expect(live.slice(0, pushed).every((e) => e.cursor > 0n)).toBe(true);

    // Offline throughout: the inbox up to the switch, then history: each message once.
    const cs = await connect(sleeper, false);
    const inbox = (await cs.syncAtLeast(pushed)).messages
      .filter((e) => e.conversationId === group.id)
      .map((e) => e.seq);
    expect(inbox).toEqual(all.slice(0, pushed));
    expect([...inbox, ...(await historyAfter(cs, group.id, inbox.at(-1) ?? 0n))]).toEqual(all);
    for (const c of [co, cw, cs]) c.close();
  }, 60_000);

  it("a 10,000-member channel, most members offline, costs per message what a small pull group costs", async () => {
    const [owner, fan] = [user("owner"), user("fan")];
    const co = await connect(owner);
    const cf = await connect(fan);
    const channel = await createGroup(co, [fan]);
    const crowd = Array.from({ length: 10_000 }, (_, i) => `${owner}-f${i}`);
    // Twenty-two group changes of one user: the last ones wait their turn (5 a second past 20).
    for (let i = 0; i < crowd.length; i += 500)
      expectCase(
        await co.requestPaced({
          case: "addMembers",
          value: { conversationId: channel.id, members: crowd.slice(i, i + 500) },
        }),
        "conversation",
      );
    const small = await createGroup(co, [
      fan,
      ...Array.from({ length: PULL_THRESHOLD }, (_, i) => `${owner}-s${i}`),
    ]);
    const listed = expectCase(await co.request({ case: "listConversations", value: {} }), "conversations");
    expect(listed.conversations.find((c) => c.id === channel.id)).toMatchObject({
      memberCount: 10_002,
      delivery: DeliveryModel.PULL,
    });
    expect(small.delivery).toBe(DeliveryModel.PULL);

    // What 20 messages cost: inbox entries, storage requests and log records, read from /metrics.
    const costed = [
      "switchboard_router_inbox_entries_total",
      "switchboard_cassandra_requests_total",
      "switchboard_kafka_produced_records_total",
    ];
    const costOf = async (conversationId: string) => {
      const before = await Promise.all(costed.map(metric));
      for (let i = 0; i < 20; i++)
        expectCase(await send(co, conversationId, `to ${conversationId} ${i}`), "ack");
      await until(() => eventsOf(cf, conversationId).length === 20, "the online member's events");
      const after = await Promise.all(costed.map(metric));
      return after.map((a, i) => a - before[i]!);
    };
    const [bigEntries, bigRequests, bigRecords] = await costOf(channel.id);
    const [smallEntries, smallRequests, smallRecords] = await costOf(small.id);
    expect([bigEntries, smallEntries]).toEqual([0, 0]);
    // The same cost per message within one request or record of slack (heartbeats and presence
    // writes run meanwhile): nothing of it grows with the 10,000 members.
    expect(bigRequests! / 20).toBeLessThanOrEqual(smallRequests! / 20 + 1);
    expect(bigRecords! / 20).toBeLessThanOrEqual(smallRecords! / 20 + 1);
    console.log(
      `10,000-member channel vs ${PULL_THRESHOLD + 2}-member pull group, per message: Cassandra requests ` +
        `${bigRequests! / 20} vs ${smallRequests! / 20}, Kafka records ${bigRecords! / 20} vs ${smallRecords! / 20}, inbox entries 0`,
    );
    // The fan (online) got every message live; a member who never connected finds them by history.
    const late = await connect(crowd[4_321]!, false);
    expect((await late.syncAll()).messages.filter((e) => e.conversationId === channel.id)).toEqual([]);
    expect(await historyAfter(late, channel.id, 0n)).toEqual(
      Array.from({ length: 20 }, (_, i) => BigInt(i + 1)),
    );
    for (const c of [co, cf, late]) c.close();
  }, 180_000);

  it("an SDK device catches a pull conversation up after the server was killed mid-conversation", async () => {
    const [owner, reader] = [user("owner"), user("reader")];
    const members = [reader, ...Array.from({ length: PULL_THRESHOLD }, (_, i) => user(`x${i}`))];
    const co = await connect(owner);
    const group = await createGroup(co, members);
    expect(group.delivery).toBe(DeliveryModel.PULL);
    const received: IncomingMessage[] = [];
    const device = new SwitchboardClient({
      url: () => server.url,
      token: () => devToken(server.dataDir, reader),
      reconnect: { baseMs: 50, maxMs: 500 },
    });
    device.on("message", (m) => received.push(m));
    await device.connect();
    expect((await device.listConversations()).find((c) => c.id === group.id)?.delivery).toBe("pull");
    for (let i = 1; i <= 5; i++) expectCase(await send(co, group.id, `live ${i}`), "ack");
    await until(() => received.length === 5, "the live pull messages");
    co.close();

    await server.kill();
    server = await server.restart();
    // Sent while the device is reconnecting: it gets them by the catch-up after its sync.
    const co2 = await connect(owner);
    for (let i = 6; i <= 12; i++) expectCase(await send(co2, group.id, `missed ${i}`), "ack");
    await until(() => received.length >= 12, "the catch-up", 30_000);
    for (let i = 13; i <= 14; i++) expectCase(await send(co2, group.id, `live ${i}`), "ack");
    await until(() => received.length >= 14, "live after the catch-up");
    await new Promise((r) => setTimeout(r, 300));
    expect(received.map((m) => m.message.seq)).toEqual(Array.from({ length: 14 }, (_, i) => i + 1));
    expect(received.every((m) => m.delivery === "pull")).toBe(true);
    expect(device.pullPositions[group.id]).toBe(14);
    device.close();
    co2.close();
  }, 90_000);
});
