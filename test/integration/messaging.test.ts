/**
 * End-to-end over the real server process and raw WebSocket frames: 1:1, groups, multi-device,
 * the sync→live seam, history, receipts and typing, in both encodings.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ServerFrame } from "../../gen/switchboard/client/v1/client_pb.js";
import { Code, GroupPolicy, MemberRole, ReceiptKind } from "../../gen/switchboard/common/v1/common_pb.js";
import { expectCase, RawClient } from "../helpers/raw-client.js";
import { devToken, type ServerProcess, startServer } from "../helpers/server.js";

let server: ServerProcess;
let n = 0;
/** A fresh user id per call so tests never see each other's traffic. */
const user = (name: string) => `${name}-${++n}`;

async function connect(name: string, encoding: "json" | "binary" = "json", sync = true): Promise<RawClient> {
  const client = await RawClient.connect(server.url, {
    token: await devToken(server.dataDir, name),
    encoding,
  });
  if (sync) await client.syncAll();
  return client;
}

async function send(
  client: RawClient,
  target: { toUser: string } | { conversationId: string },
  body: string,
  clientMsgId = `c-${++n}`,
) {
  const value =
    "toUser" in target
      ? { target: { case: "toUser" as const, value: target.toUser } }
      : { target: { case: "conversationId" as const, value: target.conversationId } };
  return client.request({ case: "send", value: { ...value, clientMsgId, body } });
}

const messageEvent = (body: string) => (f: ServerFrame) =>
  f.kind.case === "message" && (f.kind.value as { message?: { body: string } }).message?.body === body;

beforeAll(async () => {
  server = await startServer();
});
afterAll(async () => {
  await server.dispose();
});

describe("1:1 messaging", () => {
  for (const encoding of ["json", "binary"] as const) {
    it(`acks after the durable write and delivers to the recipient (${encoding})`, async () => {
      const [a, b] = [user("alice"), user("bob")];
      const alice = await connect(a, encoding);
      const bob = await connect(b, encoding);
      const ack = expectCase(await send(alice, { toUser: b }, "hello"), "ack");
      expect(ack.seq).toBe(1n);
      expect(ack.conversationId).toBe(`dm:${[a, b].sort().join("~")}`);
      expect(BigInt(ack.messageId)).toBeGreaterThan(0n);
      const event = expectCase(await bob.nextEvent(messageEvent("hello")), "message");
      expect(event.message?.sender).toBe(a);
      expect(event.message?.messageId).toBe(ack.messageId);
      expect(event.message?.seq).toBe(1n);
      const second = expectCase(await send(alice, { conversationId: ack.conversationId }, "again"), "ack");
      expect(second.seq).toBe(2n);
      alice.close();
      bob.close();
    });
  }

  it("dedupes a resend with the same client_msg_id durably", async () => {
    const [a, b] = [user("alice"), user("bob")];
    const alice = await connect(a);
    const first = expectCase(await send(alice, { toUser: b }, "once", "same-id"), "ack");
    const again = expectCase(await send(alice, { toUser: b }, "once", "same-id"), "ack");
    expect(again.duplicate).toBe(true);
    expect(again.messageId).toBe(first.messageId);
    expect(again.seq).toBe(first.seq);
    const bob = await connect(b, "json", false);
    const synced = await bob.syncAtLeast(1);
    expect(synced.messages.map((m) => m.body)).toEqual(["once"]);
    alice.close();
    bob.close();
  });

  it("lists the first_attempt feature; a send marked first is stored once, and its resends return it", async () => {
    const [a, b] = [user("alice"), user("bob")];
    // Frame auth, to read the welcome itself (in JSON: the encoding that refuses unknown fields).
    const alice = await RawClient.connect(server.url);
    const welcome = expectCase(
      await alice.request({ case: "auth", value: { token: await devToken(server.dataDir, a) } }),
      "welcome",
    );
    expect(welcome.features).toEqual(["first_attempt", "member_pages"]);
    const target = { case: "toUser" as const, value: b };
    const first = expectCase(
      await alice.request({
        case: "send",
        value: { target, clientMsgId: "first-1", body: "hello", firstAttempt: true },
      }),
      "ack",
    );
    expect(first.duplicate).toBe(false);
    const resend = expectCase(
      await alice.request({ case: "send", value: { target, clientMsgId: "first-1", body: "hello" } }),
      "ack",
    );
    expect(resend).toMatchObject({ duplicate: true, messageId: first.messageId, seq: first.seq });
    const bob = await connect(b, "json", false);
    const synced = await bob.syncAtLeast(1);
    expect(synced.messages.map((m) => m.body)).toEqual(["hello"]);
    alice.close();
    bob.close();
  });

  it("keeps per-conversation order for a burst of sends", async () => {
    const [a, b] = [user("alice"), user("bob")];
    const alice = await connect(a);
    const bob = await connect(b);
    const acks = await Promise.all(Array.from({ length: 40 }, (_, i) => send(alice, { toUser: b }, `m${i}`)));
    const seqs = acks.map((f) => expectCase(f, "ack").seq);
    expect(new Set(seqs).size).toBe(40);
    await bob.nextEvent(messageEvent("m39"));
    const received = [...bob.received]
      .filter((f) => f.kind.case === "message")
      .map((f) => expectCase(f, "message").message!.seq);
    expect(received).toEqual([...received].sort((x, y) => Number(x - y)));
    alice.close();
    bob.close();
  });

  it("acks and delivers a burst of bodies at the size limit, which together exceed a Kafka batch", async () => {
    const [a, b] = [user("alice"), user("bob")];
    const alice = await connect(a, "binary");
    const bob = await connect(b, "binary");
    // 12 × 100,000 characters (3 bytes each in UTF-8) = 3.6 MB sent in one turn to one conversation.
    const bodies = Array.from({ length: 12 }, (_, i) => `${i}`.padEnd(100_000, "€"));
    const acks = await Promise.all(bodies.map((body) => send(alice, { toUser: b }, body)));
    const seqs = acks.map((f) => Number(expectCase(f, "ack").seq));
    expect(new Set(seqs).size).toBe(12);
    await bob.nextEvent(messageEvent(bodies[11]!));
    const received = bob.received
      .filter((f) => f.kind.case === "message")
      .map((f) => expectCase(f, "message").message!.body);
    expect(received).toEqual(bodies);
    alice.close();
    bob.close();
  });
});

describe("pipelining", () => {
  it("appends pipelined sends in the order they were sent", async () => {
    const [a, b] = [user("alice"), user("bob")];
    const alice = await connect(a, "binary");
    const first = expectCase(await send(alice, { toUser: b }, "first"), "ack");
    const replies = await Promise.all(
      Array.from({ length: 60 }, (_, i) => send(alice, { conversationId: first.conversationId }, `p${i}`)),
    );
    const seqs = replies.map((f) => Number(expectCase(f, "ack").seq));
    expect(seqs).toEqual(Array.from({ length: 60 }, (_, i) => i + 2));
    alice.close();
  });
});

describe("groups", () => {
  it("creates a group of 100 and fans a message out to every member", async () => {
    const owner = user("owner");
    const members = Array.from({ length: 99 }, () => user("m"));
    const ownerConn = await connect(owner);
    const conns = await Promise.all(members.map((m) => connect(m)));
    const group = expectCase(
      await ownerConn.request({ case: "createGroup", value: { name: "hundred", members } }),
      "conversation",
    ).conversation!;
    expect(group.memberCount).toBe(100);
    const ack = expectCase(await send(ownerConn, { conversationId: group.id }, "to all"), "ack");
    const events = await Promise.all(conns.map((c) => c.nextEvent(messageEvent("to all"))));
    for (const e of events) expect(expectCase(e, "message").message?.messageId).toBe(ack.messageId);
    const listed = expectCase(
      await conns[0]!.request({ case: "listMembers", value: { conversationId: group.id } }),
      "members",
    );
    expect(listed.members).toEqual([owner, ...members].sort());
    expect(listed.hasMore).toBe(false);
    // A page at a time: after the last of the page before, at most `limit`, and whether more follow.
    const all = [owner, ...members].sort();
    const pages: string[][] = [];
    let after = "";
    for (;;) {
      const page = expectCase(
        await conns[0]!.request({
          case: "listMembers",
          value: { conversationId: group.id, after, limit: 30 },
        }),
        "members",
      );
      pages.push(page.members);
      expect(page.roles.map((r) => r.userId)).toEqual(page.members);
      if (!page.hasMore) break;
      after = page.members.at(-1)!;
    }
    expect(pages.map((p) => p.length)).toEqual([30, 30, 30, 10]);
    expect(pages.flat()).toEqual(all);
    const notUser = expectCase(
      await conns[0]!.request({ case: "listMembers", value: { conversationId: group.id, after: "no/user" } }),
      "error",
    );
    expect(notUser.reason).toBe("INVALID_USER_ID");
    for (const c of [ownerConn, ...conns]) c.close();
  });

  it("supports add, join (open groups only), leave, and listing my conversations", async () => {
    const [a, b, c] = [user("a"), user("b"), user("c")];
    const ca = await connect(a);
    const cb = await connect(b);
    const cc = await connect(c);
    const closed = expectCase(
      await ca.request({ case: "createGroup", value: { name: "closed" } }),
      "conversation",
    ).conversation!;
    const open = expectCase(
      await ca.request({ case: "createGroup", value: { name: "open", open: true } }),
      "conversation",
    ).conversation!;
    const denied = expectCase(
      await cb.request({ case: "joinGroup", value: { conversationId: closed.id } }),
      "error",
    );
    expect(denied.reason).toBe("GROUP_CLOSED");
    expect(
      expectCase(await cb.request({ case: "joinGroup", value: { conversationId: open.id } }), "conversation")
        .conversation?.memberCount,
    ).toBe(2);
    const notMember = expectCase(
      await cc.request({ case: "addMembers", value: { conversationId: closed.id, members: [c] } }),
      "error",
    );
    expect(notMember.reason).toBe("NOT_MEMBER");
    expect(
      expectCase(
        await ca.request({ case: "addMembers", value: { conversationId: closed.id, members: [c] } }),
        "conversation",
      ).conversation?.memberCount,
    ).toBe(2);
    const mine = expectCase(await ca.request({ case: "listConversations", value: {} }), "conversations");
    expect(mine.conversations.map((x) => x.id).sort()).toEqual([closed.id, open.id].sort());
    expectCase(await cc.request({ case: "leaveGroup", value: { conversationId: closed.id } }), "ok");
    const afterLeave = expectCase(await send(cc, { conversationId: closed.id }, "still here?"), "error");
    expect(afterLeave.reason).toBe("NOT_MEMBER");
    expect(afterLeave.code).toBe(Code.PERMISSION_DENIED);
    for (const x of [ca, cb, cc]) x.close();
  });

  it("roles: admins and the owner remove others, nobody removes the owner, only the owner gives roles and hands over", async () => {
    const [a, b, c, d] = [user("a"), user("b"), user("c"), user("d")];
    const [ca, cb, cc, cd] = [await connect(a), await connect(b), await connect(c), await connect(d)];
    const group = expectCase(
      await ca.request({ case: "createGroup", value: { name: "trim", members: [b, c] } }),
      "conversation",
    ).conversation!;
    const conversationId = group.id;
    const remove = (client: typeof ca, members: string[]) =>
      client.request({ case: "removeMembers", value: { conversationId, members } });
    const setRole = (client: typeof ca, userId: string, role: MemberRole) =>
      client.request({ case: "setMemberRole", value: { conversationId, userId, role } });
    const rolesAs = async (client: typeof ca) =>
      Object.fromEntries(
        expectCase(
          await client.request({ case: "listMembers", value: { conversationId } }),
          "members",
        ).roles.map((m) => [m.userId, m.role]),
      );
    const roles = () => rolesAs(ca);
    expect(await roles()).toEqual({ [a]: MemberRole.OWNER, [b]: MemberRole.MEMBER, [c]: MemberRole.MEMBER });
    // A non-member of the group may not remove anyone; a member may not remove others.
    expect(expectCase(await remove(cd, [c]), "error").reason).toBe("NOT_MEMBER");
    expect(expectCase(await remove(cb, [c]), "error")).toMatchObject({
      reason: "NOT_ADMIN",
      code: Code.PERMISSION_DENIED,
    });
    expect(expectCase(await remove(cb, []), "error").reason).toBe("INVALID_USER_ID");
    expect(expectCase(await remove(cb, ["bad id"]), "error").reason).toBe("INVALID_USER_ID");
    expect(
      expectCase(
        await cb.request({ case: "removeMembers", value: { conversationId: "dm:a~b", members: [c] } }),
        "error",
      ).reason,
    ).toBe("NOT_A_GROUP");

    // Only the owner gives roles, never to itself.
    expect(expectCase(await setRole(cb, b, MemberRole.ADMIN), "error").reason).toBe("NOT_OWNER");
    expect(expectCase(await setRole(ca, a, MemberRole.ADMIN), "error").reason).toBe("INVALID_ROLE_CHANGE");
    expect(expectCase(await setRole(ca, d, MemberRole.ADMIN), "error")).toMatchObject({
      reason: "USER_NOT_MEMBER",
      code: Code.NOT_FOUND,
    });
    expect(expectCase(await setRole(ca, b, MemberRole.UNSPECIFIED), "error").reason).toBe("INVALID_ROLE");
    expectCase(await setRole(ca, b, MemberRole.ADMIN), "conversation");
    // An admin removes a member (d, never a member, is ignored), but not the owner.
    expect(expectCase(await remove(cb, [a]), "error").reason).toBe("OWNER_PROTECTED");
    expect(expectCase(await remove(cb, [c, d, c]), "conversation").conversation?.memberCount).toBe(2);
    expect(await roles()).toEqual({ [a]: MemberRole.OWNER, [b]: MemberRole.ADMIN });
    expect(expectCase(await send(cc, { conversationId }, "still here?"), "error").reason).toBe("NOT_MEMBER");
    expectCase(await send(ca, { conversationId }, "just us"), "ack");

    // The owner leaves only after handing over; the former owner stays on as an admin.
    expect(
      expectCase(await ca.request({ case: "leaveGroup", value: { conversationId } }), "error"),
    ).toMatchObject({ reason: "OWNER_MUST_TRANSFER", code: Code.FAILED_PRECONDITION });
    expect(expectCase(await setRole(ca, b, MemberRole.OWNER), "conversation").conversation?.owner).toBe(b);
    expect(await roles()).toEqual({ [a]: MemberRole.ADMIN, [b]: MemberRole.OWNER });
    expect(expectCase(await setRole(ca, a, MemberRole.OWNER), "error").reason).toBe("NOT_OWNER");
    expectCase(
      await cb.request({ case: "addMembers", value: { conversationId, members: [c] } }),
      "conversation",
    );
    expectCase(await setRole(cb, a, MemberRole.MEMBER), "conversation");
    expect(expectCase(await remove(ca, [c]), "error").reason).toBe("NOT_ADMIN");
    // Naming yourself is leaving, which anyone but an owner with company may.
    expectCase(await remove(ca, [a]), "conversation");
    expectCase(
      await cb.request({ case: "updateGroup", value: { conversationId, open: true } }),
      "conversation",
    );
    expectCase(await cc.request({ case: "leaveGroup", value: { conversationId } }), "ok");
    // The last member, its owner, leaves: the group has nobody to run it ...
    expectCase(await cb.request({ case: "leaveGroup", value: { conversationId } }), "ok");
    // ... until someone joins it: the first to join owns it, the next is a member.
    const revived = expectCase(
      await cd.request({ case: "joinGroup", value: { conversationId } }),
      "conversation",
    );
    expect(revived.conversation).toMatchObject({ owner: d, memberCount: 1 });
    expectCase(await cc.request({ case: "joinGroup", value: { conversationId } }), "conversation");
    expect(await rolesAs(cd)).toEqual({ [c]: MemberRole.MEMBER, [d]: MemberRole.OWNER });
    expectCase(
      await cd.request({ case: "updateGroup", value: { conversationId, name: "revived" } }),
      "conversation",
    );
    for (const x of [ca, cb, cc, cd]) x.close();
  });

  it("group policies: an announcement group takes posts from admins only; admins-only adding; only admins change the group", async () => {
    const [a, b, c, d] = [user("a"), user("b"), user("c"), user("d")];
    const [ca, cb, cc] = [await connect(a), await connect(b), await connect(c)];
    const group = expectCase(
      await ca.request({
        case: "createGroup",
        value: {
          name: "news",
          members: [b, c],
          postPolicy: GroupPolicy.ADMINS,
          addPolicy: GroupPolicy.ADMINS,
        },
      }),
      "conversation",
    ).conversation!;
    expect(group).toMatchObject({ postPolicy: GroupPolicy.ADMINS, addPolicy: GroupPolicy.ADMINS, owner: a });
    const conversationId = group.id;
    expect(expectCase(await send(cb, { conversationId }, "may I?"), "error")).toMatchObject({
      reason: "POSTING_RESTRICTED",
      code: Code.PERMISSION_DENIED,
    });
    expect(
      expectCase(await cb.request({ case: "addMembers", value: { conversationId, members: [d] } }), "error")
        .reason,
    ).toBe("NOT_ADMIN");
    expect(
      expectCase(await cb.request({ case: "updateGroup", value: { conversationId, name: "mine" } }), "error")
        .reason,
    ).toBe("NOT_ADMIN");
    const ack = expectCase(await send(ca, { conversationId }, "announcement"), "ack");
    for (const x of [cb, cc])
      expect(expectCase(await x.nextEvent(messageEvent("announcement")), "message").message?.seq).toBe(
        ack.seq,
      );
    // An admin posts and adds; the owner opens the floor.
    expectCase(
      await ca.request({
        case: "setMemberRole",
        value: { conversationId, userId: b, role: MemberRole.ADMIN },
      }),
      "conversation",
    );
    expectCase(await send(cb, { conversationId }, "from an admin"), "ack");
    expectCase(
      await cb.request({ case: "addMembers", value: { conversationId, members: [d] } }),
      "conversation",
    );
    expect(
      expectCase(await ca.request({ case: "updateGroup", value: { conversationId } }), "error").reason,
    ).toBe("NOTHING_TO_CHANGE");
    const opened = expectCase(
      await cb.request({
        case: "updateGroup",
        value: { conversationId, name: "chat", postPolicy: GroupPolicy.EVERYONE },
      }),
      "conversation",
    ).conversation!;
    expect(opened).toMatchObject({
      name: "chat",
      postPolicy: GroupPolicy.EVERYONE,
      addPolicy: GroupPolicy.ADMINS,
    });
    expectCase(await send(cc, { conversationId }, "finally"), "ack");
    for (const x of [ca, cb, cc]) x.close();
  });

  it("a resend refused for want of permission returns the original ack when it was stored; a new clientMsgId is refused", async () => {
    const [a, b, c] = [user("a"), user("b"), user("c")];
    const [ca, cb, cc] = [await connect(a), await connect(b), await connect(c)];
    const conversationId = expectCase(
      await ca.request({ case: "createGroup", value: { name: "lost acks", members: [b, c] } }),
      "conversation",
    ).conversation!.id;
    const target = { conversationId };
    // Stored, but their acks lost (the clients go on as if they never came).
    const fromB = expectCase(await send(cb, target, "from b", "b-1"), "ack");
    const fromC = expectCase(await send(cc, target, "from c", "c-1"), "ack");
    const fromA = expectCase(await send(ca, target, "from a", "a-1"), "ack");
    expect([fromB.seq, fromC.seq, fromA.seq]).toEqual([1n, 2n, 3n]);

    // The owner removes b: b's resend gets its original ack, a new message NOT_MEMBER, and so does
    // a key b never stored there (a's, which is a's own: the key is the sender's).
    expectCase(
      await ca.request({ case: "removeMembers", value: { conversationId, members: [b] } }),
      "conversation",
    );
    const resent = expectCase(await send(cb, target, "from b (resent)", "b-1"), "ack");
    expect(resent).toMatchObject({
      duplicate: true,
      conversationId,
      messageId: fromB.messageId,
      seq: 1n,
      clientMsgId: "b-1",
      createdAtMs: fromB.createdAtMs,
    });
    for (const clientMsgId of ["b-2", "a-1"])
      expect(expectCase(await send(cb, target, "new", clientMsgId), "error")).toMatchObject({
        reason: "NOT_MEMBER",
        code: Code.PERMISSION_DENIED,
      });

    // The group becomes admins-only: c's resend gets its original ack, a new message POSTING_RESTRICTED.
    expectCase(
      await ca.request({ case: "updateGroup", value: { conversationId, postPolicy: GroupPolicy.ADMINS } }),
      "conversation",
    );
    expect(expectCase(await send(cc, target, "from c (resent)", "c-1"), "ack")).toMatchObject({
      duplicate: true,
      messageId: fromC.messageId,
      seq: 2n,
    });
    expect(expectCase(await send(cc, target, "new", "c-2"), "error").reason).toBe("POSTING_RESTRICTED");

    // Nothing new was stored: the next message is seq 4.
    expect(expectCase(await send(ca, target, "next", "a-2"), "ack").seq).toBe(4n);
    const history = expectCase(
      await ca.request({ case: "history", value: { conversationId, limit: 10 } }),
      "history",
    );
    expect(history.messages.map((m) => [Number(m.seq), m.body])).toEqual([
      [1, "from b"],
      [2, "from c"],
      [3, "from a"],
      [4, "next"],
    ]);
    for (const x of [ca, cb, cc]) x.close();
  });

  it("group changes reach every member's devices as they happen; a removed member hears no more", async () => {
    const [a, b, c] = [user("a"), user("b"), user("c")];
    const [ca, ca2, cb, cc] = [await connect(a), await connect(a), await connect(b), await connect(c)];
    type Group = NonNullable<Extract<ServerFrame["kind"], { case: "conversation" }>["value"]["conversation"]>;
    const isChange = (f: ServerFrame) => f.replyTo === 0 && f.kind.case === "conversation";
    const changed =
      (name: string, also: (g: Group) => boolean = () => true) =>
      (f: ServerFrame) =>
        isChange(f) &&
        f.kind.case === "conversation" &&
        f.kind.value.conversation?.name === name &&
        also(f.kind.value.conversation);
    const groupOf = (f: ServerFrame) => expectCase(f, "conversation").conversation!;

    const created = groupOf(
      await ca.request({ case: "createGroup", value: { name: "plans", members: [b] } }),
    );
    const conversationId = created.id;
    // Added at creation: b hears of the group at once, and so does a's other device.
    expect(groupOf(await cb.nextEvent(changed("plans"))).id).toBe(conversationId);
    expect(groupOf(await ca2.nextEvent(changed("plans"))).memberCount).toBe(2);

    groupOf(
      await ca.request({
        case: "updateGroup",
        value: { conversationId, name: "trip", postPolicy: GroupPolicy.ADMINS },
      }),
    );
    for (const x of [cb, ca2])
      expect(groupOf(await x.nextEvent(changed("trip")))).toMatchObject({
        id: conversationId,
        postPolicy: GroupPolicy.ADMINS,
      });

    groupOf(await ca.request({ case: "addMembers", value: { conversationId, members: [c] } }));
    for (const x of [cc, cb]) await x.nextEvent(changed("trip", (g) => g.memberCount === 3));

    groupOf(
      await ca.request({
        case: "setMemberRole",
        value: { conversationId, userId: b, role: MemberRole.OWNER },
      }),
    );
    for (const x of [cb, cc, ca2]) await x.nextEvent(changed("trip", (g) => g.owner === b));

    const heardByC = cc.received.filter(isChange).length;
    groupOf(await cb.request({ case: "removeMembers", value: { conversationId, members: [c] } }));
    await ca.nextEvent(changed("trip", (g) => g.memberCount === 2));
    groupOf(await cb.request({ case: "updateGroup", value: { conversationId, name: "trip 2" } }));
    for (const x of [ca, ca2]) await x.nextEvent(changed("trip 2"));
    expect(cc.received.filter(isChange).length).toBe(heardByC);

    expectCase(await ca.request({ case: "leaveGroup", value: { conversationId } }), "ok");
    await cb.nextEvent(changed("trip 2", (g) => g.memberCount === 1));
    for (const x of [ca, ca2, cb, cc]) x.close();
  });

  it("a membership change holds for the very next message: none for who left, all for who was added", async () => {
    const [a, b, c, d] = [user("a"), user("b"), user("c"), user("d")];
    const [ca, cb, cc, cd] = [await connect(a), await connect(b), await connect(c), await connect(d)];
    const group = expectCase(
      await ca.request({ case: "createGroup", value: { name: "churn", members: [b, c] } }),
      "conversation",
    ).conversation!;
    // Everyone receives one message first, so that whoever addresses messages knows the member list.
    expectCase(await send(ca, { conversationId: group.id }, "warm"), "ack");
    for (const x of [cb, cc]) await x.nextEvent(messageEvent("warm"));

    for (let round = 0; round < 3; round++) {
      expectCase(await cc.request({ case: "leaveGroup", value: { conversationId: group.id } }), "ok");
      expectCase(await send(ca, { conversationId: group.id }, `after-leave-${round}`), "ack");
      expectCase(
        await ca.request({ case: "addMembers", value: { conversationId: group.id, members: [d] } }),
        "conversation",
      );
      expectCase(await send(ca, { conversationId: group.id }, `after-add-${round}`), "ack");
      await cd.nextEvent(messageEvent(`after-add-${round}`));
      await cb.nextEvent(messageEvent(`after-add-${round}`));
      expectCase(await cd.request({ case: "leaveGroup", value: { conversationId: group.id } }), "ok");
      expectCase(
        await ca.request({ case: "addMembers", value: { conversationId: group.id, members: [c] } }),
        "conversation",
      );
    }
    // c is back: its inbox holding this one means everything before it in the conversation was
    // applied to c's inbox (the distributed backend routes per inbox partition, in order).
    expectCase(await send(ca, { conversationId: group.id }, "final"), "ack");
    // b got everything; c never got what was sent while it was out, d never what came before it joined.
    const bodies = async (x: RawClient, count: number) =>
      (await x.syncAtLeast(count)).messages.map((m) => m.body);
    expect(await bodies(cb, 8)).toEqual([
      "warm",
      ...[0, 1, 2].flatMap((r) => [`after-leave-${r}`, `after-add-${r}`]),
      "final",
    ]);
    expect(await bodies(cc, 2)).toEqual(["warm", "final"]);
    expect(await bodies(cd, 3)).toEqual([0, 1, 2].map((r) => `after-add-${r}`));
    expect(cc.received.some(messageEvent("after-leave-0"))).toBe(false);
    for (const x of [ca, cb, cc, cd]) x.close();
  });

  it("a change made the moment a burst is acknowledged: the one added gets none of it, the one removed all", async () => {
    const [a, c, d] = [user("a"), user("c"), user("d")];
    const ROUNDS = 3;
    const SENDERS = 3;
    const EACH = 90;
    // Pipelined by three members at once (a connection may send a burst of 100, a user 200), fresh
    // ones each round, so that whoever addresses the messages is still at it when the last ack comes.
    const senderIds = Array.from({ length: ROUNDS * SENDERS }, (_, i) => user(`s${i}`));
    const [ca, cc, cd] = [await connect(a), await connect(c), await connect(d)];
    const group = expectCase(
      await ca.request({ case: "createGroup", value: { name: "burst", members: [c, ...senderIds] } }),
      "conversation",
    ).conversation!;
    const round = (r: number) =>
      Array.from({ length: SENDERS * EACH }, (_, i) => `r${r}-${Math.floor(i / EACH)}-${i % EACH}`);
    for (let r = 0; r < ROUNDS; r++) {
      const senders = await Promise.all(
        senderIds.slice(r * SENDERS, (r + 1) * SENDERS).map((id) => connect(id)),
      );
      const acks = await Promise.all(
        round(r).map((body, i) => send(senders[Math.floor(i / EACH)]!, { conversationId: group.id }, body)),
      );
      for (const f of acks) expectCase(f, "ack");
      const [added, removed] = r % 2 === 0 ? [d, c] : [c, d];
      const changes = await Promise.all([
        ca.request({ case: "addMembers", value: { conversationId: group.id, members: [added] } }),
        ca.request({ case: "removeMembers", value: { conversationId: group.id, members: [removed] } }),
      ]);
      for (const f of changes) expectCase(f, "conversation");
      for (const x of senders) x.close();
    }
    expectCase(await send(ca, { conversationId: group.id }, "last"), "ack");
    // c: in for round 0, out for 1, in for 2; d the other way round. Each gets exactly its rounds.
    // (Acknowledged is in the log: the inbox entries follow, on the distributed backend a moment
    // later and per inbox partition, so each inbox is read until it holds as many as it should.)
    const bodies = async (x: RawClient, count: number) =>
      (await x.syncAtLeast(count)).messages
        .filter((m) => m.conversationId === group.id)
        .map((m) => m.body)
        .sort();
    expect(await bodies(cc, 2 * SENDERS * EACH)).toEqual([...round(0), ...round(2)].sort());
    expect(await bodies(cd, SENDERS * EACH + 1)).toEqual([...round(1), "last"].sort());
    for (const x of [ca, cc, cd]) x.close();
  }, 120_000);
});

describe("multi-device and sync", () => {
  it("delivers to every device of the recipient and to the sender's other devices", async () => {
    const [a, b] = [user("alice"), user("bob")];
    const aliceSending = await connect(a);
    const alicePhone = await connect(a, "binary");
    const bobLaptop = await connect(b);
    const bobPhone = await connect(b, "binary");
    await send(aliceSending, { toUser: b }, "everywhere");
    for (const device of [alicePhone, bobLaptop, bobPhone])
      await device.nextEvent(messageEvent("everywhere"));
    for (const c of [aliceSending, alicePhone, bobLaptop, bobPhone]) c.close();
  });

  it("resumes from a cursor with no gap and no duplicate at the seam between sync and live", async () => {
    const [a, b] = [user("alice"), user("bob")];
    const alice = await connect(a);
    // Bob's first device reads 5 messages and remembers its cursor.
    const bob1 = await connect(b);
    for (let i = 0; i < 5; i++) await send(alice, { toUser: b }, `early-${i}`);
    await bob1.nextEvent(messageEvent("early-4"));
    const cursor = expectCase(
      bob1.received.filter((f) => f.kind.case === "message").at(-1)!,
      "message",
    ).cursor;
    bob1.close();
    // While Bob is away 30 more arrive; a writer keeps sending while he syncs in small pages.
    for (let i = 0; i < 30; i++) await send(alice, { toUser: b }, `missed-${i}`);
    const bob2 = await connect(b, "json", false);
    const writer = (async () => {
      for (let i = 0; i < 30; i++) await send(alice, { toUser: b }, `live-${i}`);
    })();
    const seen: string[] = [];
    let c = cursor;
    for (;;) {
      const page = expectCase(await bob2.request({ case: "sync", value: { cursor: c, limit: 7 } }), "sync");
      seen.push(...page.messages.map((m) => m.message!.body));
      c = page.cursor;
      if (!page.hasMore) break;
    }
    await writer;
    await bob2.nextEvent(messageEvent("live-29"));
    const live = bob2.received
      .filter((f) => f.kind.case === "message")
      .map((f) => expectCase(f, "message").message!.body);
    const all = [...seen, ...live];
    const expected = [
      ...Array.from({ length: 30 }, (_, i) => `missed-${i}`),
      ...Array.from({ length: 30 }, (_, i) => `live-${i}`),
    ];
    expect(all).toEqual(expected);
    alice.close();
    bob2.close();
  });

  it("rejects a cursor beyond the inbox head", async () => {
    const bob = await connect(user("bob"), "json", false);
    const err = expectCase(await bob.request({ case: "sync", value: { cursor: 99_999n } }), "error");
    expect(err.reason).toBe("INVALID_CURSOR");
    bob.close();
  });

  it("pages history backwards and forwards", async () => {
    const [a, b] = [user("alice"), user("bob")];
    const alice = await connect(a);
    let conversationId = "";
    for (let i = 1; i <= 25; i++)
      conversationId = expectCase(await send(alice, { toUser: b }, `h${i}`), "ack").conversationId;
    const newest = expectCase(
      await alice.request({ case: "history", value: { conversationId, limit: 10 } }),
      "history",
    );
    expect(newest.messages.map((m) => m.body)).toEqual(Array.from({ length: 10 }, (_, i) => `h${16 + i}`));
    expect(newest.hasMore).toBe(true);
    const older = expectCase(
      await alice.request({ case: "history", value: { conversationId, beforeSeq: 16n, limit: 10 } }),
      "history",
    );
    expect(older.messages.map((m) => Number(m.seq))).toEqual(Array.from({ length: 10 }, (_, i) => 6 + i));
    const oldest = expectCase(
      await alice.request({ case: "history", value: { conversationId, beforeSeq: 6n, limit: 10 } }),
      "history",
    );
    expect(oldest.messages.map((m) => Number(m.seq))).toEqual([1, 2, 3, 4, 5]);
    expect(oldest.hasMore).toBe(false);
    const forward = expectCase(
      await alice.request({ case: "history", value: { conversationId, afterSeq: 20n, limit: 10 } }),
      "history",
    );
    expect(forward.messages.map((m) => Number(m.seq))).toEqual([21, 22, 23, 24, 25]);
    const stranger = await connect(user("eve"));
    expect(
      expectCase(await stranger.request({ case: "history", value: { conversationId } }), "error").reason,
    ).toBe("NOT_MEMBER");
    alice.close();
    stranger.close();
  });
});

describe("receipts and typing", () => {
  it("relays read receipts to the other members and only when the watermark moves", async () => {
    const [a, b] = [user("alice"), user("bob")];
    const alice = await connect(a);
    const bob = await connect(b);
    const ack = expectCase(await send(alice, { toUser: b }, "read me"), "ack");
    /** Bob's read watermark in the conversation, as the reply frame. */
    const markRead = (seq: bigint) =>
      bob.request({
        case: "receipt",
        value: { conversationId: ack.conversationId, seq, kind: ReceiptKind.READ },
      });
    await bob.nextEvent(messageEvent("read me"));
    expectCase(await markRead(ack.seq), "ok");
    const receipt = expectCase(await alice.nextEvent((f) => f.kind.case === "receipt"), "receipt");
    expect(receipt).toMatchObject({
      conversationId: ack.conversationId,
      userId: b,
      seq: ack.seq,
      kind: ReceiptKind.READ,
    });
    // Same watermark again: accepted, not relayed.
    expectCase(await markRead(ack.seq), "ok");
    expect(expectCase(await markRead(99n), "error").reason).toBe("SEQ_OUT_OF_RANGE");
    // A watermark that moves again is relayed; relayed after the repeat would have been, so alice
    // having it means the repeat was not relayed (rather than not yet).
    const second = expectCase(await send(alice, { toUser: b }, "read me too"), "ack");
    await bob.nextEvent(messageEvent("read me too"));
    expectCase(await markRead(second.seq), "ok");
    await alice.nextEvent((f) => f.kind.case === "receipt" && f.kind.value.seq === second.seq);
    expect(
      alice.received.flatMap((f) => (f.kind.case === "receipt" ? [Number(f.kind.value.seq)] : [])),
    ).toEqual([Number(ack.seq), Number(second.seq)]);
    alice.close();
    bob.close();
  });

  it("lists every member's delivered and read watermarks, for members only", async () => {
    const [a, b] = [user("alice"), user("bob")];
    const alice = await connect(a);
    const bob = await connect(b);
    const first = expectCase(await send(alice, { toUser: b }, "one"), "ack");
    const second = expectCase(await send(alice, { toUser: b }, "two"), "ack");
    const mark = (seq: bigint, kind: ReceiptKind) =>
      bob.request({ case: "receipt", value: { conversationId: first.conversationId, seq, kind } });
    expectCase(await mark(second.seq, ReceiptKind.DELIVERED), "ok");
    expectCase(await mark(first.seq, ReceiptKind.READ), "ok");
    // A device that connects now (alice's reload) learns what the events told before it.
    const later = await connect(a);
    const list = expectCase(
      await later.request({ case: "listReceipts", value: { conversationId: first.conversationId } }),
      "receipts",
    );
    expect(list.conversationId).toBe(first.conversationId);
    expect(list.receipts.map((r) => [r.userId, r.deliveredSeq, r.readSeq])).toEqual(
      [
        [a, 0n, 0n],
        [b, 2n, 1n],
      ].sort((x, y) => String(x[0]).localeCompare(String(y[0]))),
    );
    const stranger = await connect(user("eve"));
    const refused = expectCase(
      await stranger.request({ case: "listReceipts", value: { conversationId: first.conversationId } }),
      "error",
    );
    expect(refused.reason).toBe("NOT_MEMBER");
    const malformed = expectCase(
      await stranger.request({ case: "listReceipts", value: { conversationId: "dm:b~a" } }),
      "error",
    );
    expect(malformed.reason).toBe("INVALID_CONVERSATION_ID");
    for (const x of [alice, bob, later, stranger]) x.close();
  });

  it("lists each conversation with the caller's own read watermark, for unread counts on any device", async () => {
    const [a, b] = [user("alice"), user("bob")];
    const alice = await connect(a);
    const bob = await connect(b);
    const first = expectCase(await send(alice, { toUser: b }, "one"), "ack");
    expectCase(await send(alice, { toUser: b }, "two"), "ack");
    const before = expectCase(await bob.request({ case: "listConversations", value: {} }), "conversations");
    expect(before.conversations.map((c) => [c.id, c.lastSeq, c.readSeq])).toEqual([
      [first.conversationId, 2n, 0n],
    ]);
    expectCase(
      await bob.request({
        case: "receipt",
        value: { conversationId: first.conversationId, seq: first.seq, kind: ReceiptKind.READ },
      }),
      "ok",
    );
    const after = expectCase(await bob.request({ case: "listConversations", value: {} }), "conversations");
    expect(after.conversations[0]).toMatchObject({ lastSeq: 2n, readSeq: 1n });
    // The watermark is the caller's own: alice has marked nothing read.
    const alices = expectCase(await alice.request({ case: "listConversations", value: {} }), "conversations");
    expect(alices.conversations[0]?.readSeq).toBe(0n);
    alice.close();
    bob.close();
  });

  it("relays typing to the other members but not to the typist's own connection", async () => {
    const [a, b] = [user("alice"), user("bob")];
    const alice = await connect(a);
    const bob = await connect(b);
    const ack = expectCase(await send(alice, { toUser: b }, "hi"), "ack");
    expectCase(
      await alice.request({ case: "typing", value: { conversationId: ack.conversationId, typing: true } }),
      "ok",
    );
    const typing = expectCase(await bob.nextEvent((f) => f.kind.case === "typing"), "typing");
    expect(typing).toMatchObject({ conversationId: ack.conversationId, userId: a, typing: true });
    expect(alice.received.some((f) => f.kind.case === "typing")).toBe(false);
    const stranger = await connect(user("eve"));
    expect(
      expectCase(
        await stranger.request({
          case: "typing",
          value: { conversationId: ack.conversationId, typing: true },
        }),
        "error",
      ).reason,
    ).toBe("NOT_MEMBER");
    for (const c of [alice, bob, stranger]) c.close();
  });
});
