/**
 * The server API (switchboard.api.v1.ChatService) end to end against the real server, on both
 * backends: every method as a backend client calls it, with the static key file authenticating the
 * clients and their grants (permissions, senders, conversations) deciding what they may do; and the
 * event stream resumed after its consumer was cut off, with nothing missed.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import {
  BroadcastResponseSchema,
  ChatService,
  StartPosition,
  type StreamEventsRequestSchema,
  type StreamEventsResponse,
} from "../../gen/switchboard/api/v1/chat_pb.js";
import { GroupPolicy, MemberRole } from "../../gen/switchboard/common/v1/common_pb.js";
import { GatewayService } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { PresenceService } from "../../gen/switchboard/presence/v1/presence_pb.js";
import { Provider, PushService } from "../../gen/switchboard/push/v1/push_pb.js";
import { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import { keyedGroupId } from "../../internal/conversations/index.js";
import { newKey } from "../../internal/grpc-auth/key-file.js";
import { PERMISSIONS } from "../../internal/grpc-auth/policy.js";
import { AsyncQueue } from "../../internal/lib/async-queue.js";
import { Code, SwitchboardError } from "../../internal/lib/errors.js";
import { grpcClient, type ServiceClient } from "../../internal/lib/rpc.js";
import { decodeStatusDetails, STATUS_DETAILS_KEY } from "../../internal/lib/status-details.js";
import { consumeEvents, createChatClient, reasonOf } from "../../server-client/src/index.js";
import { sampleOf, scrape } from "../helpers/metrics.js";
import { WebhookReceiver } from "../helpers/push-stand-ins/webhook.js";
import { expectCase, RawClient } from "../helpers/raw-client.js";
import { devToken, type ServerProcess, startServer, tempDir } from "../helpers/server.js";

let server: ServerProcess;
const keys = {
  billing: newKey("client:billing"),
  moderation: newKey("client:moderation"),
  auditor: newKey("client:auditor"),
  watcher: newKey("client:watcher"),
  root: newKey("client:root"),
  publisher: newKey("client:publisher"),
  organizer: newKey("client:organizer"),
};
const dir = tempDir("switchboard-api-");
const opened: Array<{ close(): void }> = [];
const WEBHOOK_SECRET = "whsec-server-api";
let webhook: WebhookReceiver;

beforeAll(async () => {
  webhook = await new WebhookReceiver(WEBHOOK_SECRET).start();
  const secretFile = join(dir.path, "webhook.secret");
  writeFileSync(secretFile, WEBHOOK_SECRET);
  const keyFile = join(dir.path, "keys");
  writeFileSync(
    keyFile,
    `${Object.values(keys)
      .map((k) => k.line)
      .join("\n")}\n`,
  );
  server = await startServer({
    args: ["--grpc-port", "0"],
    env: {
      SWITCHBOARD_GRPC_KEY_FILE: keyFile,
      SWITCHBOARD_GRPC_CLIENTS: [
        // A bot: publishes as bot:billing where it is a member, DMs users, reads its conversations.
        "billing=publish+sendToUsers+broadcast+readHistory",
        // An admin tool: groups, sessions, presence, devices, anywhere; posts as "system".
        "moderation=publish+manageGroups+sessions+presence+devices;sendAs=system;conversations=all",
        // An archiver: every conversation's messages.
        "auditor=events;conversations=all",
        // A bot's event consumer: only where bot:watcher is a member.
        "watcher=events",
        // Posts where its bot is a member, and nothing else.
        "publisher=publish",
        // Manages the groups bot:organizer is in; and one listed group, by the id its key names.
        "organizer=manageGroups",
        // Every permission there is: still no internal method.
        `root=${PERMISSIONS.join("+")};conversations=all`,
      ].join(","),
      // The distributed log publishes its sequenced topic only when asked; the event stream reads it.
      SWITCHBOARD_KAFKA_PUBLISH_SEQUENCED: "true",
      // Devices of provider webhook on the loopback receiver, for the dead letters.
      SWITCHBOARD_PUSH_WEBHOOK_SECRET_FILE: secretFile,
      SWITCHBOARD_PUSH_ALLOW_PRIVATE_ENDPOINTS: "true",
    },
  });
});
afterAll(async () => {
  for (const c of opened) c.close();
  await server.dispose();
  await webhook?.close();
  dir.remove();
});

function client(key: { key: string }): ServiceClient<typeof ChatService> {
  const c = grpcClient(ChatService, `127.0.0.1:${server.grpcPort}`, { bearer: () => key.key });
  opened.push(c);
  return c;
}

async function failure(call: Promise<unknown>): Promise<string> {
  try {
    await call;
  } catch (err) {
    if (err instanceof SwitchboardError) return `${Code[err.code]} ${err.reason}`;
    throw err;
  }
  throw new Error("the call succeeded");
}

async function user(id: string): Promise<RawClient> {
  const c = await RawClient.connect(server.url, { token: await devToken(server.dataDir, id) });
  await c.syncAll();
  opened.push({ close: () => c.close() });
  return c;
}

const nextMessage = async (c: RawClient, body: string) =>
  expectCase(
    await c.nextEvent((f) => f.kind.case === "message" && f.kind.value.message?.body === body),
    "message",
  ).message;

describe("ChatService: messages", () => {
  it("publishes as the bot into a group it belongs to, idempotently, and members receive it", async () => {
    const moderation = client(keys.moderation);
    const billing = client(keys.billing);
    const alice = await user("api-alice");
    const { conversation } = await moderation.createGroup({
      owner: "api-alice",
      name: "invoices",
      members: ["bot:billing"],
    });
    const groupId = conversation!.id;
    const sent = await billing.publish({ conversationId: groupId, idempotencyKey: "inv-1", body: "paid" });
    expect(sent.message).toMatchObject({ conversationId: groupId, seq: 1n, sender: "bot:billing" });
    expect(sent.duplicate).toBe(false);
    expect((await nextMessage(alice, "paid"))?.messageId).toBe(sent.message?.messageId);
    const again = await billing.publish({ conversationId: groupId, idempotencyKey: "inv-1", body: "paid" });
    expect(again).toMatchObject({
      duplicate: true,
      message: { seq: 1n, messageId: sent.message?.messageId },
    });
    // Only as itself, and only where it was added.
    expect(
      await failure(
        billing.publish({ conversationId: groupId, sender: "api-alice", idempotencyKey: "x", body: "b" }),
      ),
    ).toBe("PERMISSION_DENIED SENDER_NOT_ALLOWED");
    const other = await moderation.createGroup({ owner: "api-alice", name: "private", members: [] });
    expect(
      await failure(
        billing.publish({ conversationId: other.conversation!.id, idempotencyKey: "y", body: "b" }),
      ),
    ).toBe("PERMISSION_DENIED CONVERSATION_NOT_ALLOWED");
    expect(await failure(billing.getHistory({ conversationId: other.conversation!.id }))).toBe(
      "PERMISSION_DENIED CONVERSATION_NOT_ALLOWED",
    );
    // The admin tool posts as "system" anywhere; bad input gets its reason.
    const system = await moderation.publish({
      conversationId: other.conversation!.id,
      idempotencyKey: "sys-1",
      body: "welcome",
    });
    expect(system.message).toMatchObject({ sender: "system", seq: 1n });
    // The key is required, and refused under the server API's own reason.
    for (const idempotencyKey of ["", "a b", "k".repeat(65)]) {
      expect(await failure(moderation.publish({ conversationId: groupId, idempotencyKey, body: "b" }))).toBe(
        "INVALID_ARGUMENT INVALID_IDEMPOTENCY_KEY",
      );
      expect(
        await failure(client(keys.billing).sendToUser({ userId: "api-nokey", idempotencyKey, body: "b" })),
      ).toBe("INVALID_ARGUMENT INVALID_IDEMPOTENCY_KEY");
      expect(
        await failure(client(keys.billing).broadcast({ userIds: ["api-nokey"], idempotencyKey, body: "b" })),
      ).toBe("INVALID_ARGUMENT INVALID_IDEMPOTENCY_KEY");
    }
    expect(
      await failure(moderation.publish({ conversationId: "nope", idempotencyKey: "k", body: "b" })),
    ).toBe("INVALID_ARGUMENT INVALID_CONVERSATION_ID");
    // History, both directions.
    await billing.publish({ conversationId: groupId, idempotencyKey: "inv-2", body: "second" });
    await billing.publish({ conversationId: groupId, idempotencyKey: "inv-3", body: "third" });
    const newest = await billing.getHistory({ conversationId: groupId, limit: 2 });
    expect(newest.messages.map((m) => m.body)).toEqual(["second", "third"]);
    expect(newest.hasMore).toBe(true);
    const after = await billing.getHistory({ conversationId: groupId, afterSeq: 1n, limit: 10 });
    expect(after.messages.map((m) => Number(m.seq))).toEqual([2, 3]);
  });

  it("sends 1:1 from the bot and broadcasts once per recipient, even when retried", async () => {
    const billing = client(keys.billing);
    const bob = await user("api-bob");
    const dm = await billing.sendToUser({ userId: "api-bob", idempotencyKey: "dm-1", body: "your receipt" });
    expect(dm.message).toMatchObject({ conversationId: "dm:api-bob~bot:billing", sender: "bot:billing" });
    expect((await nextMessage(bob, "your receipt"))?.sender).toBe("bot:billing");

    const users = ["api-c1", "api-c2", "api-c3"];
    // Counted with the WebSocket's sends on /metrics, the retry's duplicates not.
    const appended = async () =>
      sampleOf(await scrape(server.httpUrl), "switchboard_messages_appended_total") ?? 0;
    const before = await appended();
    const first = await billing.broadcast({ userIds: users, idempotencyKey: "promo-1", body: "sale" });
    expect(first.results.map((r) => [r.userId, r.duplicate, r.reason])).toEqual(
      users.map((u) => [u, false, ""]),
    );
    const retried = await billing.broadcast({ userIds: users, idempotencyKey: "promo-1", body: "sale" });
    expect(retried.results.map((r) => r.duplicate)).toEqual([true, true, true]);
    expect((await appended()) - before).toBe(3);
    expect(retried.results.map((r) => r.message?.messageId)).toEqual(
      first.results.map((r) => r.message?.messageId),
    );
    // Acknowledged means in the log: the inbox entries follow (on the distributed backend, a moment later).
    const c1 = await user("api-c1");
    const synced = await c1.syncAtLeast(1);
    expect(synced.messages.filter((m) => m.body === "sale")).toHaveLength(1);
    expect(await failure(billing.broadcast({ userIds: ["a", "a"], idempotencyKey: "k", body: "b" }))).toBe(
      "INVALID_ARGUMENT DUPLICATE_USER_IDS",
    );
    expect(await failure(billing.broadcast({ userIds: [], idempotencyKey: "k", body: "b" }))).toBe(
      "INVALID_ARGUMENT INVALID_USER_IDS",
    );
  });

  it("starts no direct conversation from Publish: that is SendToUser's, under its own permission", async () => {
    const publisher = client(keys.publisher);
    const billing = client(keys.billing);
    const publish = (c: typeof publisher, conversationId: string, idempotencyKey: string) =>
      c.publish({ conversationId, idempotencyKey, body: "hello" });
    expect(await failure(publish(publisher, "dm:api-zed~bot:publisher", "p-1"))).toBe(
      "PERMISSION_DENIED NOT_MEMBER",
    );
    expect(await failure(publish(billing, "dm:api-zed~bot:billing", "p-2"))).toBe(
      "PERMISSION_DENIED NOT_MEMBER",
    );
    // Once SendToUser started it, the bot posts there with Publish too.
    await billing.sendToUser({ userId: "api-zed", idempotencyKey: "p-3", body: "first" });
    expect((await publish(billing, "dm:api-zed~bot:billing", "p-4")).message?.seq).toBe(2n);
  });

  it("answers a Broadcast to 1,000 users of a long body within a gRPC client's 4 MiB, retried too", async () => {
    const billing = client(keys.billing); // receives at most 4 MiB, as gRPC clients do by default
    const users = Array.from({ length: 1_000 }, (_, i) => `api-wide-${i}`);
    const body = "y".repeat(5_000);
    // 1,000 new direct conversations: longer than the default deadline on the distributed backend.
    const slow = { timeoutMs: 200_000 };
    const first = await billing.broadcast({ userIds: users, idempotencyKey: "wide-1", body }, slow);
    expect(first.results).toHaveLength(1_000);
    expect(first.results.every((r) => r.reason === "" && r.message?.messageId && r.message.seq === 1n)).toBe(
      true,
    );
    // The results name each stored message; its body is the request's, not repeated 1,000 times.
    expect(first.results[7]!.message).toMatchObject({
      conversationId: "dm:api-wide-7~bot:billing",
      sender: "bot:billing",
      clientMsgId: "wide-1",
      body: "",
    });
    expect(toBinary(BroadcastResponseSchema, first).length).toBeLessThan(512 * 1024);
    const retried = await billing.broadcast({ userIds: users, idempotencyKey: "wide-1", body }, slow);
    expect(retried.results.every((r) => r.duplicate)).toBe(true);
    expect(toBinary(BroadcastResponseSchema, retried).length).toBeLessThan(512 * 1024);
    // The body is stored whole.
    const history = await billing.getHistory({ conversationId: "dm:api-wide-7~bot:billing" });
    expect(history.messages.map((m) => m.body)).toEqual([body]);
  }, 420_000);

  it("answers a retried Publish with the original once the grant or the group no longer lets its sender post; a new key is refused", async () => {
    const moderation = client(keys.moderation);
    const billing = client(keys.billing); // conversations=member: only where bot:billing is a member
    const root = client(keys.root); // conversations=all, as bot:root
    const { conversation } = await moderation.createGroup({
      owner: "api-retry-owner",
      name: "retries",
      members: ["bot:billing", "bot:root"],
    });
    const conversationId = conversation!.id;
    const publish = (c: typeof billing, idempotencyKey: string, sender = "") =>
      c.publish({ conversationId, sender, idempotencyKey, body: `body of ${idempotencyKey}` });
    // Stored, their answers lost; then both bots are removed.
    const billed = await publish(billing, "rt-1");
    const rooted = await publish(root, "rt-2");
    expect([billed.message?.seq, rooted.message?.seq]).toEqual([1n, 2n]);
    await moderation.removeMembers({ conversationId, userIds: ["bot:billing", "bot:root"] });

    // billing's grant no longer covers the group: its retry gets the original, a new key the refusal.
    expect(await publish(billing, "rt-1")).toMatchObject({
      duplicate: true,
      message: { seq: 1n, messageId: billed.message?.messageId, sender: "bot:billing", body: "body of rt-1" },
    });
    expect(await failure(publish(billing, "rt-3"))).toBe("PERMISSION_DENIED CONVERSATION_NOT_ALLOWED");
    // Only a retry of the same message: another body under that key learns nothing of what it holds.
    expect(
      await failure(
        billing.publish({ conversationId, sender: "bot:billing", idempotencyKey: "rt-1", body: "guessing" }),
      ),
    ).toBe("PERMISSION_DENIED CONVERSATION_NOT_ALLOWED");
    // Only what its own sender stored under the key; a sender it may not use stays refused.
    expect(await failure(publish(billing, "rt-2"))).toBe("PERMISSION_DENIED CONVERSATION_NOT_ALLOWED");
    expect(await failure(publish(root, "rt-1", "bot:billing"))).toBe("PERMISSION_DENIED SENDER_NOT_ALLOWED");

    // root may touch every conversation, but bot:root is no member: the same for NOT_MEMBER.
    expect(await publish(root, "rt-2")).toMatchObject({
      duplicate: true,
      message: { seq: 2n, messageId: rooted.message?.messageId },
    });
    expect(await failure(publish(root, "rt-4"))).toBe("PERMISSION_DENIED NOT_MEMBER");
    // And for an announcement group's POSTING_RESTRICTED.
    await moderation.addMembers({ conversationId, userIds: ["bot:root"] });
    await moderation.updateGroup({ conversationId, postPolicy: GroupPolicy.ADMINS });
    expect(await publish(root, "rt-2")).toMatchObject({ duplicate: true, message: { seq: 2n } });
    expect(await failure(publish(root, "rt-5"))).toBe("PERMISSION_DENIED POSTING_RESTRICTED");

    // Nothing was stored twice.
    const history = await root.getHistory({ conversationId });
    expect(history.messages.map((m) => [m.seq, m.body])).toEqual([
      [1n, "body of rt-1"],
      [2n, "body of rt-2"],
    ]);
  });
});

describe("ChatService: groups, presence, sessions, devices", () => {
  it("creates, reads and changes groups and their members", async () => {
    const moderation = client(keys.moderation);
    const { conversation } = await moderation.createGroup({
      owner: "api-owner",
      name: "ops",
      members: ["api-m1"],
      open: true,
    });
    const id = conversation!.id;
    expect(conversation).toMatchObject({ name: "ops", owner: "api-owner", memberCount: 2, open: true });
    expect(
      (await moderation.addMembers({ conversationId: id, userIds: ["api-m2", "api-m3"] })).conversation
        ?.memberCount,
    ).toBe(4);
    expect(
      (await moderation.removeMembers({ conversationId: id, userIds: ["api-m1", "api-m3"] })).conversation
        ?.memberCount,
    ).toBe(2);
    expect((await moderation.listMembers({ conversationId: id })).userIds).toEqual(["api-m2", "api-owner"]);
    // Roles: a backend names admins and owners, and may remove the owner (the group then has none).
    expect(
      (await moderation.setMemberRole({ conversationId: id, userId: "api-m2", role: MemberRole.ADMIN }))
        .conversation?.owner,
    ).toBe("api-owner");
    expect(
      (await moderation.listMembers({ conversationId: id })).members.map((m) => [m.userId, m.role]),
    ).toEqual([
      ["api-m2", MemberRole.ADMIN],
      ["api-owner", MemberRole.OWNER],
    ]);
    expect(
      await failure(
        moderation.setMemberRole({ conversationId: id, userId: "api-m9", role: MemberRole.ADMIN }),
      ),
    ).toBe("NOT_FOUND USER_NOT_MEMBER");
    expect(
      (await moderation.removeMembers({ conversationId: id, userIds: ["api-owner"] })).conversation?.owner,
    ).toBe("");
    expect(
      (await moderation.setMemberRole({ conversationId: id, userId: "api-m2", role: MemberRole.OWNER }))
        .conversation?.owner,
    ).toBe("api-m2");
    await moderation.addMembers({ conversationId: id, userIds: ["api-owner"] });
    // Removing someone who is not a member is a no-op: a retried call is harmless.
    expect(
      (await moderation.removeMembers({ conversationId: id, userIds: ["api-m1"] })).conversation?.memberCount,
    ).toBe(2);
    const renamed = await moderation.updateGroup({ conversationId: id, name: "operations", open: false });
    expect(renamed.conversation).toMatchObject({ name: "operations", open: false, memberCount: 2 });
    expect((await moderation.updateGroup({ conversationId: id, open: true })).conversation).toMatchObject({
      name: "operations",
      open: true,
    });
    expect(await failure(moderation.updateGroup({ conversationId: id }))).toBe(
      "INVALID_ARGUMENT NOTHING_TO_CHANGE",
    );
    expect(await failure(moderation.updateGroup({ conversationId: id, name: "" }))).toBe(
      "INVALID_ARGUMENT INVALID_GROUP_NAME",
    );
    // The group methods take group ids only, as the client protocol's group requests: a direct
    // conversation's id, or a malformed one, is no group.
    for (const conversationId of ["dm:api-a~api-b", "zzz", `g:${"1".repeat(21)}`]) {
      expect(await failure(moderation.updateGroup({ conversationId, name: "x" })), conversationId).toBe(
        "INVALID_ARGUMENT NOT_A_GROUP",
      );
      expect(await failure(moderation.addMembers({ conversationId, userIds: ["api-ok"] }))).toBe(
        "INVALID_ARGUMENT NOT_A_GROUP",
      );
    }
    await moderation.publish({ conversationId: id, idempotencyKey: "k1", body: "hello" });
    const got = await moderation.getConversation({ conversationId: id });
    expect(got.conversation).toMatchObject({ id, memberCount: 2, lastSeq: 1n });
    expect(await failure(moderation.getConversation({ conversationId: "g:1" }))).toBe(
      "NOT_FOUND CONVERSATION_NOT_FOUND",
    );
    const badId = moderation.addMembers({ conversationId: id, userIds: ["api-ok", "bad id"] });
    expect(await failure(badId)).toBe("INVALID_ARGUMENT INVALID_USER_ID");
    // The message names which one.
    await expect(badId).rejects.toThrow('user_ids[1] "bad id" is not a valid user id');
  });

  it("answers group changes with the group's last_seq", async () => {
    const moderation = client(keys.moderation);
    const { conversation } = await moderation.createGroup({ owner: "api-ls", name: "seqs", members: [] });
    const id = conversation!.id;
    expect(conversation?.lastSeq).toBe(0n);
    for (const key of ["ls-1", "ls-2"])
      await moderation.publish({ conversationId: id, idempotencyKey: key, body: key });
    expect(
      (await moderation.addMembers({ conversationId: id, userIds: ["api-ls2"] })).conversation,
    ).toMatchObject({ memberCount: 2, lastSeq: 2n });
    expect(
      (await moderation.removeMembers({ conversationId: id, userIds: ["api-ls2"] })).conversation,
    ).toMatchObject({ memberCount: 1, lastSeq: 2n });
    expect(
      (await moderation.setMemberRole({ conversationId: id, userId: "api-ls", role: MemberRole.OWNER }))
        .conversation?.lastSeq,
    ).toBe(2n);
  });

  it("creates a group once per idempotency key: a retry returns the same group", async () => {
    const moderation = client(keys.moderation);
    const request = { owner: "api-idem", name: "once", members: ["api-idem2"], idempotencyKey: "grp-1" };
    const member = await user("api-idem2");
    const heard = (id: string) =>
      member.nextEvent((f) => f.kind.case === "conversation" && f.kind.value.conversation?.id === id);
    const first = await moderation.createGroup(request);
    expect(first.duplicate).toBe(false);
    const id = first.conversation!.id;
    await heard(id);
    await moderation.publish({ conversationId: id, idempotencyKey: "once-1", body: "hi" });
    const retried = await moderation.createGroup(request);
    expect(retried).toMatchObject({ duplicate: true, conversation: { id, memberCount: 2, lastSeq: 1n } });
    // The retry tells the members again: it is what tells them when the first attempt was cut off.
    await heard(id);
    // Another key, or no key, is another group; so is the same key of another client.
    const other = await moderation.createGroup({ ...request, idempotencyKey: "grp-2" });
    expect(other.conversation!.id).not.toBe(id);
    expect((await moderation.createGroup({ ...request, idempotencyKey: "" })).conversation!.id).not.toBe(id);
    const root = await client(keys.root).createGroup(request);
    expect(root).toMatchObject({ duplicate: false });
    expect(root.conversation!.id).not.toBe(id);
    // The key with a different request is a mistake, not a retry.
    expect(await failure(moderation.createGroup({ ...request, name: "twice" }))).toBe(
      "INVALID_ARGUMENT IDEMPOTENCY_KEY_REUSED",
    );
    expect(await failure(moderation.createGroup({ ...request, idempotencyKey: "a b" }))).toBe(
      "INVALID_ARGUMENT INVALID_IDEMPOTENCY_KEY",
    );
    // A refused request is not remembered: corrected, it creates the group with the same key.
    const refused = { ...request, name: "n".repeat(1_000), idempotencyKey: "grp-3" };
    expect(await failure(moderation.createGroup(refused))).toBe("INVALID_ARGUMENT INVALID_GROUP_NAME");
    const corrected = await moderation.createGroup({ ...refused, name: "fixed" });
    expect(corrected).toMatchObject({ duplicate: false, conversation: { name: "fixed", memberCount: 2 } });
  });

  it("creates no group the client could not manage afterwards", async () => {
    const organizer = client(keys.organizer); // conversations=member, as bot:organizer
    const request = { owner: "api-org", name: "org", members: ["api-org2"], idempotencyKey: "org-1" };
    expect(await failure(organizer.createGroup(request))).toBe("PERMISSION_DENIED CONVERSATION_NOT_ALLOWED");
    expect(await failure(organizer.createGroup({ ...request, idempotencyKey: "" }))).toBe(
      "PERMISSION_DENIED CONVERSATION_NOT_ALLOWED",
    );
    // A malformed key is that, whatever the grant says of the group it would name.
    expect(await failure(organizer.createGroup({ ...request, idempotencyKey: "a b" }))).toBe(
      "INVALID_ARGUMENT INVALID_IDEMPOTENCY_KEY",
    );
    // A refused call did no work: the group the key names does not exist.
    const keyed = keyedGroupId("client:organizer", "org-1");
    expect(await failure(client(keys.root).getConversation({ conversationId: keyed }))).toBe(
      "NOT_FOUND CONVERSATION_NOT_FOUND",
    );
    // With its bot among the members it creates the group, and manages it.
    const made = await organizer.createGroup({ ...request, members: ["api-org2", "bot:organizer"] });
    const id = made.conversation!.id;
    expect(made).toMatchObject({ duplicate: false, conversation: { memberCount: 3 } });
    expect((await organizer.updateGroup({ conversationId: id, name: "renamed" })).conversation?.name).toBe(
      "renamed",
    );
  });

  it("lists members a page at a time, each member once per field", async () => {
    const moderation = client(keys.moderation);
    const members = Array.from({ length: 1_004 }, (_, i) => `api-pg-${String(i).padStart(4, "0")}`);
    const { conversation } = await moderation.createGroup({ owner: members[0]!, name: "paged", members });
    const id = conversation!.id;
    // The default page: 1,000 of the 1,004.
    const first = await moderation.listMembers({ conversationId: id });
    expect(first.userIds).toEqual(members.slice(0, 1_000));
    expect(first.members.map((m) => m.userId)).toEqual(first.userIds);
    expect(first.members[0]!.role).toBe(MemberRole.OWNER);
    expect(first.nextPageToken).not.toBe("");
    const rest = await moderation.listMembers({ conversationId: id, pageToken: first.nextPageToken });
    expect(rest.userIds).toEqual(members.slice(1_000));
    expect(rest.nextPageToken).toBe("");
    // Smaller pages, and a page size past the most is the most.
    const seen: string[] = [];
    let pageToken = "";
    let pages = 0;
    do {
      const page = await moderation.listMembers({ conversationId: id, pageSize: 300, pageToken });
      expect(page.userIds.length).toBeLessThanOrEqual(300);
      seen.push(...page.userIds);
      pageToken = page.nextPageToken;
      pages++;
    } while (pageToken !== "");
    expect(pages).toBe(4);
    expect(seen).toEqual(members);
    expect((await moderation.listMembers({ conversationId: id, pageSize: 1_000_000 })).userIds).toHaveLength(
      1_004,
    );
    expect(await failure(moderation.listMembers({ conversationId: id, pageToken: "nonsense!" }))).toBe(
      "INVALID_ARGUMENT INVALID_PAGE_TOKEN",
    );
  }, 60_000);

  it("answers presence, lists sessions and disconnects one or all of a user's connections", async () => {
    const moderation = client(keys.moderation);
    const phone = await user("api-dana");
    const laptop = await user("api-dana");
    await expect
      .poll(async () =>
        (await moderation.getPresence({ userIds: ["api-dana", "api-nobody"] })).statuses.map((s) => [
          s.userId,
          s.online,
        ]),
      )
      .toEqual([
        ["api-dana", true],
        ["api-nobody", false],
      ]);
    let sessions: string[] = [];
    // Session records reach the router through the routing log: wait until both are known.
    await expect
      .poll(async () => {
        sessions = (await moderation.listSessions({ userId: "api-dana" })).sessions.map((s) => s.sessionId);
        return sessions.length;
      })
      .toBe(2);
    const phoneSession = expectCase(
      phone.received.find((f) => f.kind.case === "welcome")!,
      "welcome",
    ).sessionId;
    expect(sessions).toContain(phoneSession);
    const one = await moderation.disconnect({
      userId: "api-dana",
      sessionId: phoneSession,
      reason: "please sign in again",
      allowReconnect: true,
    });
    expect(one.sessions).toBe(1);
    expect(await phone.closed).toBe(3014);
    expect(phone.closeReason).toBe("please sign in again");
    const all = await moderation.disconnect({ userId: "api-dana", reason: "account suspended" });
    expect(all.sessions).toBeGreaterThanOrEqual(1);
    expect(await laptop.closed).toBe(3503);
    expect(laptop.closeReason).toBe("account suspended");
    expect(await failure(moderation.disconnect({ userId: "api-dana", reason: "x".repeat(121) }))).toBe(
      "INVALID_ARGUMENT REASON_TOO_LONG",
    );
  });

  it("registers, lists and removes a user's push devices", async () => {
    const moderation = client(keys.moderation);
    await moderation.registerDevice({
      device: {
        userId: "api-erin",
        deviceId: "phone",
        provider: Provider.WEBHOOK,
        token: "https://example.invalid/p",
      },
    });
    const listed = await moderation.listDevices({ userId: "api-erin" });
    expect(listed.devices.map((d) => [d.deviceId, d.provider])).toEqual([["phone", Provider.WEBHOOK]]);
    await moderation.unregisterDevice({ userId: "api-erin", deviceId: "phone" });
    expect((await moderation.listDevices({ userId: "api-erin" })).devices).toEqual([]);
  });
});

describe("ChatService: push dead letters", () => {
  it("lists a delivery that failed for good and replays it, once, after the receiver was mended", async () => {
    const moderation = client(keys.moderation);
    const root = client(keys.root);
    const path = "/api-dora";
    await moderation.registerDevice({
      device: {
        userId: "api-dora",
        deviceId: "crm",
        provider: Provider.WEBHOOK,
        token: `${webhook.origin}${path}`,
      },
    });
    webhook.script.byToken.set(path, { status: 400 }); // a permanent failure: no retry
    await client(keys.billing).sendToUser({ userId: "api-dora", idempotencyKey: "dl-1", body: "overdue" });
    const deadOf = async () =>
      (await root.listPushDeadLetters({ limit: 1_000 })).deadLetters.filter((d) => d.userId === "api-dora");
    await vi.waitFor(async () => expect(await deadOf()).toHaveLength(1), { timeout: 15_000, interval: 100 });
    const [dead] = await deadOf();
    expect(dead).toMatchObject({
      deviceId: "crm",
      provider: Provider.WEBHOOK,
      conversationId: "dm:api-dora~bot:billing",
      error: "webhook answered 400",
      attempts: 1,
    });
    expect(dead!.deadAtMs).toBeGreaterThanOrEqual(dead!.createdAtMs);
    expect(webhook.delivered.filter((d) => d.path === path)).toEqual([]);

    // The permission is its own; requests are checked.
    expect(await failure(moderation.listPushDeadLetters({}))).toBe("PERMISSION_DENIED METHOD_NOT_ALLOWED");
    expect(await failure(root.replayPushDeadLetters({ ids: [] }))).toBe("INVALID_ARGUMENT INVALID_IDS");
    expect(await failure(root.listPushDeadLetters({ limit: 1_001 }))).toBe("INVALID_ARGUMENT INVALID_LIMIT");
    // A before_id that is no dead letter's id is refused, not answered with an empty page.
    for (const beforeId of ["not-an-id", "12345", `${dead!.id.slice(0, 15)}`])
      expect(await failure(root.listPushDeadLetters({ beforeId }))).toBe(
        "INVALID_ARGUMENT INVALID_BEFORE_ID",
      );
    expect(
      (await root.listPushDeadLetters({ beforeId: dead!.id })).deadLetters.map((d) => d.id),
    ).not.toContain(dead!.id);

    webhook.script.byToken.delete(path);
    expect(await root.replayPushDeadLetters({ ids: [dead!.id] })).toMatchObject({
      replayedIds: [dead!.id],
      missingIds: [],
      deviceGoneIds: [],
    });
    await vi.waitFor(() => expect(webhook.delivered.filter((d) => d.path === path)).toHaveLength(1), {
      timeout: 15_000,
      interval: 100,
    });
    expect(webhook.delivered.find((d) => d.path === path)!.body).toMatchObject({
      user_id: "api-dora",
      body: "overdue",
    });
    expect(await deadOf()).toEqual([]);
    expect(await root.replayPushDeadLetters({ ids: [dead!.id] })).toMatchObject({
      replayedIds: [],
      missingIds: [dead!.id],
    });
  });
});

describe("ChatService: who may call what", () => {
  it("refuses callers without credentials, methods outside a client's permissions, and internal methods", async () => {
    const anonymous = grpcClient(ChatService, `127.0.0.1:${server.grpcPort}`);
    opened.push(anonymous);
    expect(await failure(anonymous.getPresence({ userIds: ["x"] }))).toBe("UNAUTHENTICATED UNAUTHENTICATED");
    const billing = client(keys.billing);
    expect(await failure(billing.disconnect({ userId: "api-bob" }))).toBe(
      "PERMISSION_DENIED METHOD_NOT_ALLOWED",
    );
    expect(await failure(billing.createGroup({ owner: "x", name: "y" }))).toBe(
      "PERMISSION_DENIED METHOD_NOT_ALLOWED",
    );
    const gateway = grpcClient(GatewayService, `127.0.0.1:${server.grpcPort}`, {
      bearer: () => keys.moderation.key,
    });
    opened.push(gateway);
    expect(await failure(gateway.drain({}))).toBe("PERMISSION_DENIED METHOD_NOT_ALLOWED");
    expect(await failure(gateway.stats({}))).toBe("PERMISSION_DENIED METHOD_NOT_ALLOWED");
  });
});

describe("ChatService: requests that do not decode", () => {
  /** Calls `method` with `bytes` as its request (unary, or a stream's first request), as `key`. */
  const raw = (method: string, bytes: Buffer, key?: { key: string }, stream = false) =>
    new Promise<string>((resolve) => {
      const c = new grpc.Client(`127.0.0.1:${server.grpcPort}`, grpc.credentials.createInsecure());
      opened.push(c);
      const metadata = new grpc.Metadata();
      if (key) metadata.set("authorization", `Bearer ${key.key}`);
      const done = (err: grpc.ServiceError | null) => {
        const details = err?.metadata?.get(STATUS_DETAILS_KEY)[0];
        const reason = details instanceof Uint8Array ? decodeStatusDetails(details)?.reason : undefined;
        resolve(err ? `${grpc.status[err.code]} ${reason}` : "OK");
      };
      const path = `/switchboard.api.v1.ChatService/${method}`;
      const id = (b: Buffer) => b;
      const options = { deadline: Date.now() + 10_000 };
      if (!stream) return void c.makeUnaryRequest(path, id, id, bytes, metadata, options, done);
      const call = c.makeBidiStreamRequest(path, id, id, metadata, options);
      call.on("data", () => undefined);
      call.on("error", done);
      call.on("end", () => done(null));
      call.write(bytes);
    });
  // conversation_id (field 1) of two bytes that are not UTF-8.
  const notUtf8 = Buffer.from([0x0a, 0x02, 0xff, 0xfe]);

  it("are refused with INVALID_ARGUMENT and an ErrorInfo once the caller is authenticated", async () => {
    expect(await raw("Publish", notUtf8, keys.moderation)).toBe("INVALID_ARGUMENT MALFORMED_REQUEST");
    expect(await raw("GetPresence", Buffer.from([0x0a, 0x05, 0x61]), keys.moderation)).toBe(
      "INVALID_ARGUMENT MALFORMED_REQUEST",
    );
    // Who calls is checked first: a caller without credentials learns nothing of its request.
    expect(await raw("Publish", notUtf8)).toBe("UNAUTHENTICATED UNAUTHENTICATED");
    expect(await raw("Disconnect", notUtf8, keys.billing)).toBe("PERMISSION_DENIED METHOD_NOT_ALLOWED");
    // A stream's request: subscribe { subscription: <not UTF-8> }.
    const subscribe = Buffer.from([0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe]);
    expect(await raw("StreamEvents", subscribe, keys.auditor, true)).toBe(
      "INVALID_ARGUMENT MALFORMED_REQUEST",
    );
  });
});

describe("internal methods", () => {
  it("are refused to a client holding every permission, each one, against the real server", async () => {
    const outcomes: Record<string, string> = {};
    for (const service of [GatewayService, IdService, PresenceService, PushService, RouterService]) {
      const c = grpcClient(service, `127.0.0.1:${server.grpcPort}`, { bearer: () => keys.root.key });
      opened.push(c);
      for (const method of service.methods) {
        const path = `/${service.typeName}/${method.name}`;
        const call = (c as unknown as Record<string, (...args: unknown[]) => unknown>)[method.localName]!;
        outcomes[path] =
          method.methodKind === "unary"
            ? await failure(call({}) as Promise<unknown>)
            : await failure(
                (async () => {
                  const requests = new AsyncQueue<object>(1);
                  for await (const _ of call(requests) as AsyncIterable<unknown>) return;
                })(),
              );
      }
    }
    // Deliver, Drain, Stats, AllocateIds, Heartbeat, EndSession, Subscribe, Unsubscribe, KeepWatches,
    // GetPresence, RegisterDevice, UnregisterDevice, ListDevices (ChatService has its own), Notify,
    // ListDeadLetters, ReplayDeadLetters, Relay and the deprecated backend methods of RouterService.
    expect(Object.keys(outcomes)).toHaveLength(24);
    for (const [path, outcome] of Object.entries(outcomes))
      expect(`${path}: ${outcome}`).toBe(`${path}: PERMISSION_DENIED METHOD_NOT_ALLOWED`);
  });
});

type StreamRequest = MessageInitShape<typeof StreamEventsRequestSchema>;

/** One open StreamEvents call: its requests to push, its responses to read, a way to cut it off. */
function openStream(key: { key: string }, subscription: string, start = StartPosition.UNSPECIFIED) {
  const requests = new AsyncQueue<StreamRequest>(1_000);
  requests.push({ kind: { case: "subscribe", value: { subscription, start } } });
  const abort = new AbortController();
  const responses = client(key).streamEvents(requests, { signal: abort.signal })[Symbol.asyncIterator]();
  const read = async (): Promise<StreamEventsResponse> => {
    const r = await responses.next();
    if (r.done) throw new Error("the event stream ended");
    return r.value;
  };
  let isOpen: Promise<void> | undefined;
  /** The first response: no events, no cursor — the subscription is open. */
  const opened = () =>
    (isOpen ??= read().then((r) => {
      expect(r).toMatchObject({ cursor: "", events: [] });
    }));
  return {
    opened,
    next: async (): Promise<StreamEventsResponse> => {
      await opened();
      return read();
    },
    ack: (cursor: string) => requests.push({ kind: { case: "ack", value: { cursor } } }),
    cut: () => abort.abort(),
  };
}

/** `conversation#seq` of each event of a response. */
const keyOf = (r: StreamEventsResponse) =>
  r.events.map((e) => {
    if (e.kind.case !== "message" || !e.kind.value) throw new Error(`not a message event: ${e.kind.case}`);
    return `${e.kind.value.conversationId}#${e.kind.value.seq}`;
  });

describe("ChatService: the event stream", () => {
  it("delivers every message at least once and resumes after the consumer was cut off", async () => {
    const moderation = client(keys.moderation);
    const { conversation } = await moderation.createGroup({
      owner: "api-ev",
      name: "events",
      members: ["bot:watcher"],
    });
    const watched = conversation!.id;
    const { conversation: hidden } = await moderation.createGroup({
      owner: "api-ev",
      name: "hidden",
      members: [],
    });
    const published: string[] = [];
    const publish = async (id: string, n: number) => {
      for (let i = 0; i < n; i++) {
        // Keys never repeat: a repeated key would be a duplicate, not a new message.
        const key = `ev-${published.length}`;
        const r = await moderation.publish({ conversationId: id, idempotencyKey: key, body: key });
        published.push(`${id}#${r.message!.seq}`);
      }
    };
    await publish(watched, 5);
    await publish(hidden!.id, 3);

    // The archiver sees everything; it acknowledges nothing of its first responses and is cut off.
    const seen = new Set<string>();
    const wanted = () => published.filter((k) => k.startsWith(watched) || k.startsWith(hidden!.id));
    let stream = openStream(keys.auditor, "archive");
    const firstResponse = await stream.next();
    for (const k of keyOf(firstResponse)) seen.add(k);
    stream.cut();
    // Resumed: the unacknowledged events come again, then the rest, then what is published meanwhile.
    stream = openStream(keys.auditor, "archive");
    const again = new Set<string>();
    const collect = async (until: () => boolean) => {
      while (!until()) {
        const r = await stream.next();
        for (const k of keyOf(r)) again.add(k);
        stream.ack(r.cursor);
      }
    };
    await collect(() => wanted().every((k) => again.has(k)));
    for (const k of seen) expect(again.has(k)).toBe(true);
    await publish(watched, 2);
    await collect(() => wanted().every((k) => again.has(k)));
    stream.cut();
    // A third stream goes on from there: what is published next arrives.
    await publish(hidden!.id, 1);
    stream = openStream(keys.auditor, "archive");
    await collect(() => again.has(published.at(-1)!));
    stream.cut();

    // The bot's consumer sees only the conversation its identity belongs to.
    const watcher = openStream(keys.watcher, "mine");
    const mine = new Set<string>();
    while (mine.size < 7) {
      const r = await watcher.next();
      for (const k of keyOf(r)) mine.add(k);
      watcher.ack(r.cursor);
    }
    expect([...mine].every((k) => k.startsWith(`${watched}#`))).toBe(true);
    watcher.cut();
  });

  it("starts a new subscription at the end of the log when asked: nothing older comes", async () => {
    const moderation = client(keys.moderation);
    const { conversation } = await moderation.createGroup({ owner: "api-new", name: "fresh", members: [] });
    const stream = openStream(keys.auditor, "only-new", StartPosition.LATEST);
    await stream.opened();
    const sent = await moderation.publish({
      conversationId: conversation!.id,
      idempotencyKey: "new-1",
      body: "new",
    });
    const first = await stream.next();
    expect(keyOf(first)).toEqual([`${conversation!.id}#${sent.message!.seq}`]);
    stream.ack(first.cursor);
    stream.cut();
  });

  it("refuses a start position StartPosition does not list", async () => {
    const stream = openStream(keys.auditor, "odd-start", 7 as StartPosition);
    expect(await failure(stream.opened())).toBe("INVALID_ARGUMENT INVALID_START_POSITION");
  });

  it("bounds the streams one client has open on a server", async () => {
    const streams = Array.from({ length: 32 }, () => openStream(keys.root, "many"));
    for (const s of streams) await s.opened();
    const over = openStream(keys.root, "many");
    const refusal = over.opened().then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(await failure(over.opened())).toBe("RESOURCE_EXHAUSTED TOO_MANY_STREAMS");
    // With a RetryInfo: a slot frees when another stream ends (consumeEvents retries it).
    expect(await refusal).toMatchObject({ retryAfterMs: 1_000 });
    streams.pop()!.cut();
    await vi.waitFor(
      async () => {
        const again = openStream(keys.root, "many");
        await again.opened();
        streams.push(again);
      },
      { timeout: 10_000, interval: 100 },
    );
    for (const s of streams) s.cut();
  });

  it("refuses a stream that does not subscribe first; a second stream on a subscription shares it", async () => {
    const requests = new AsyncQueue<StreamRequest>(10);
    requests.push({ kind: { case: "ack", value: { cursor: "1" } } });
    const responses = client(keys.auditor).streamEvents(requests)[Symbol.asyncIterator]();
    expect(await failure(responses.next())).toBe("INVALID_ARGUMENT SUBSCRIBE_FIRST");
    const moderation = client(keys.moderation);
    const { conversation } = await moderation.createGroup({ owner: "api-tw", name: "twice", members: [] });
    for (const key of ["tw-1", "tw-2", "tw-3"])
      await moderation.publish({ conversationId: conversation!.id, idempotencyKey: key, body: key });
    const first = openStream(keys.auditor, "twice");
    const unacked = keyOf(await first.next());
    // A second consumer of the subscription (a replica, or this one reconnecting) joins it: the first
    // keeps its stream.
    const second = openStream(keys.auditor, "twice");
    await second.opened();
    // The first is cut off without acknowledging: what it held goes to the second.
    first.cut();
    const resent = new Set<string>();
    while (!unacked.every((k) => resent.has(k))) {
      const r = await second.next();
      for (const k of keyOf(r)) resent.add(k);
      second.ack(r.cursor);
    }
    second.cut();
  });
});

describe("the typed client (@switchboard/server-client)", () => {
  it("runs two consumers of one subscription on one server side by side: they share its events", async () => {
    const moderation = client(keys.moderation);
    const { conversation } = await moderation.createGroup({
      owner: "api-rep",
      name: "replicas",
      members: [],
    });
    const id = conversation!.id;
    // The subscription's position is fixed at the end of the log before the replicas start.
    const pin = openStream(keys.auditor, "replicas", StartPosition.LATEST);
    await pin.opened();
    pin.cut();
    const handled = new Map<string, string>(); // seq -> replica
    const errors: unknown[] = [];
    const replica = (name: string, stop: AbortSignal) => {
      // Replicas are separate processes: a connection each.
      const api = createChatClient({
        baseUrl: `http://127.0.0.1:${server.grpcPort}`,
        credential: keys.auditor.key,
      });
      opened.push(api);
      return consumeEvents(
        api,
        {
          subscription: "replicas",
          signal: stop,
          backoff: { initialMs: 50, maxMs: 200 },
          onError: (e) => errors.push(e),
        },
        async (messages) => {
          for (const m of messages) if (m.conversationId === id) handled.set(String(m.seq), name);
        },
      );
    };
    const stopA = new AbortController();
    const stopB = new AbortController();
    const a = replica("a", stopA.signal);
    const b = replica("b", stopB.signal);
    let seq = 0;
    const publishOne = async () => {
      const r = await moderation.publish({ conversationId: id, idempotencyKey: `rep-${++seq}`, body: "r" });
      await vi.waitFor(() => expect(handled.has(String(r.message!.seq))).toBe(true), {
        timeout: 15_000,
        interval: 20,
      });
    };
    // One message at a time, each a batch of its own: both replicas get some.
    while (seq < 60 && !(new Set(handled.values()).size === 2 && seq >= 6)) await publishOne();
    expect(new Set(handled.values())).toEqual(new Set(["a", "b"]));
    // One replica stops: the other takes all that comes.
    stopA.abort();
    await a;
    const before = seq;
    for (let i = 0; i < 3; i++) await publishOne();
    expect([...handled].filter(([s]) => Number(s) > before).map(([, by]) => by)).toEqual(["b", "b", "b"]);
    stopB.abort();
    await b;
    // Neither stopped the other: no stream failed.
    expect(errors).toEqual([]);
    expect(handled.size).toBe(seq);
  }, 60_000);

  it("calls the API with its credential and consumes events, resuming after a failed handler", async () => {
    const api = createChatClient({
      baseUrl: `http://127.0.0.1:${server.grpcPort}`,
      credential: keys.moderation.key,
    });
    opened.push(api);
    const { conversation } = await api.createGroup({ owner: "api-tc", name: "typed", members: [] });
    const id = conversation!.id;
    const sent: string[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await api.publish({ conversationId: id, idempotencyKey: `tc-${i}`, body: `typed ${i}` });
      sent.push(`${id}#${r.message!.seq}`);
    }
    const denied = await api.disconnect({ userId: "x", reason: "x".repeat(200) }).catch((e: unknown) => e);
    expect(reasonOf(denied)).toBe("REASON_TOO_LONG");

    const auditor = createChatClient({
      baseUrl: `http://127.0.0.1:${server.grpcPort}`,
      credential: async () => keys.auditor.key,
    });
    opened.push(auditor);
    const handled = new Set<string>();
    let failedOnce = false;
    const errors: unknown[] = [];
    const stop = new AbortController();
    const consuming = consumeEvents(
      auditor,
      {
        subscription: "typed",
        signal: stop.signal,
        backoff: { initialMs: 50, maxMs: 200 },
        onError: (e) => errors.push(e),
      },
      async (messages) => {
        const mine = messages.filter((m) => m.conversationId === id);
        // The first batch holding our messages fails once: it must come again.
        if (mine.length > 0 && !failedOnce) {
          failedOnce = true;
          throw new Error("handler failed");
        }
        for (const m of mine) handled.add(`${m.conversationId}#${m.seq}`);
        if (sent.every((k) => handled.has(k))) stop.abort();
      },
    );
    await consuming;
    expect(failedOnce).toBe(true);
    expect(errors.map((e) => (e as Error).message)).toContain("handler failed");
    expect([...handled].sort()).toEqual([...sent].sort());
  });
});

// Last in the file: they restart the server.
describe("ChatService across a restart", () => {
  it("ends an event stream UNAVAILABLE STREAM_ENDED when the server stops, and the resumed stream gets what was not acknowledged", async () => {
    const moderation = client(keys.moderation);
    const { conversation } = await moderation.createGroup({ owner: "api-stop", name: "stop", members: [] });
    // From the end of the log: the one message published next is the batch in hand.
    const stream = openStream(keys.auditor, "stopping", StartPosition.LATEST);
    await stream.opened();
    const sent = await moderation.publish({
      conversationId: conversation!.id,
      idempotencyKey: "stop-1",
      body: "x",
    });
    const wanted = `${conversation!.id}#${sent.message!.seq}`;
    expect(keyOf(await stream.next())).toEqual([wanted]);
    // A batch in hand, not acknowledged: the server stops (SIGTERM).
    const ended = stream.next().then(
      () => "a response",
      (err: unknown) => err,
    );
    await server.stop();
    const err = await ended;
    expect(err).toBeInstanceOf(SwitchboardError);
    expect(`${Code[(err as SwitchboardError).code]} ${(err as SwitchboardError).reason}`).toBe(
      "UNAVAILABLE STREAM_ENDED",
    );
    expect(err).toMatchObject({ retryAfterMs: 1_000 });
    server = await server.restart();
    const resumed = openStream(keys.auditor, "stopping");
    const again = new Set<string>();
    while (!again.has(wanted)) {
      const r = await resumed.next();
      for (const k of keyOf(r)) again.add(k);
      resumed.ack(r.cursor);
    }
    resumed.cut();
  });

  it("names the group, so a retry after the server restarted finds the first attempt's group", async () => {
    const request = { owner: "api-rk", name: "kept", members: ["api-rk2"], idempotencyKey: "grp-restart" };
    const first = await client(keys.moderation).createGroup(request);
    expect(first.duplicate).toBe(false);
    const id = first.conversation!.id;
    // Keyed ids have 20 digits from 1: minted ids (snowflakes below 2^63) never do.
    expect(id).toMatch(/^g:1[0-9]{19}$/);
    await client(keys.moderation).publish({ conversationId: id, idempotencyKey: "rk-1", body: "hi" });
    await server.kill();
    server = await server.restart();
    // This process never saw the key: the store answers, also to another request with that key,
    // which does not make the first request (unknown here) count as another one afterwards.
    const other = await client(keys.moderation).createGroup({
      ...request,
      name: "other",
      members: ["api-rk3"],
    });
    expect(other).toMatchObject({ duplicate: true, conversation: { id, name: "kept" } });
    const retried = await client(keys.moderation).createGroup(request);
    expect(retried).toMatchObject({ duplicate: true, conversation: { id, memberCount: 2, lastSeq: 1n } });
    const members = await client(keys.moderation).listMembers({ conversationId: id });
    expect(members.userIds).toEqual(["api-rk", "api-rk2"]);
    // The key is per client: another client's same key makes another group.
    const root = await client(keys.root).createGroup(request);
    expect(root.duplicate).toBe(false);
    expect(root.conversation!.id).not.toBe(id);
  });
});
