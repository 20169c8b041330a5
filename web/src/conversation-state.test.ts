import { describe, expect, it } from "vitest";
import type { ChatMessage } from "../../sdk/src/index.js";
import {
  addMessage,
  applyListed,
  applyServerInfo,
  deliveryStateOf,
  directConversationId,
  type GroupSettings,
  isChannel,
  isGroupAdmin,
  lastActivity,
  newConversationState,
  peerOf,
  postingRestricted,
  proposeSettings,
  raiseWatermark,
  settleSettings,
  titleOf,
  unreadCount,
} from "./conversation-state.js";

function message(seq: number, sender: string, body = `m${seq}`): ChatMessage {
  return {
    conversationId: "dm:alice~bob",
    seq,
    messageId: String(1000 + seq),
    sender,
    clientMsgId: `c${seq}`,
    body,
    createdAtMs: seq,
  };
}

describe("conversation state", () => {
  it("names direct conversations after the other member and groups after their name", () => {
    expect(directConversationId("bob", "alice")).toBe("dm:alice~bob");
    expect(peerOf("dm:alice~bob", "bob")).toBe("alice");
    expect(peerOf("dm:alice~alice", "alice")).toBe("alice");
    expect(titleOf(newConversationState({ id: "dm:alice~bob" }), "alice")).toBe("bob");
    expect(titleOf(newConversationState({ id: "g:1", name: "team" }), "alice")).toBe("team");
  });

  it("keeps messages in seq order, once each, and drops the outgoing copy when the message arrives", () => {
    const c = newConversationState({ id: "dm:alice~bob" });
    c.outgoing.push({ clientMsgId: "c2", body: "m2", createdAtMs: 2 });
    expect(addMessage(c, message(2, "alice"))).toBe(true);
    expect(addMessage(c, message(1, "bob"))).toBe(true);
    expect(addMessage(c, message(2, "alice"))).toBe(false);
    expect(c.messages.map((m) => m.seq)).toEqual([1, 2]);
    expect(c.outgoing).toEqual([]);
    expect(c.lastSeq).toBe(2);
  });

  it("counts unread above the read watermark, the user's own messages excepted, loaded or not", () => {
    const c = newConversationState({ id: "dm:alice~bob", lastSeq: 5, readSeq: 1 });
    expect(unreadCount(c, "alice")).toBe(4); // seqs 2-5, none loaded yet
    addMessage(c, message(3, "alice"));
    expect(unreadCount(c, "alice")).toBe(3);
    c.readSeq = 5;
    expect(unreadCount(c, "alice")).toBe(0);
  });

  it("shows the furthest any other member got: read over delivered over sent", () => {
    const c = newConversationState({ id: "dm:alice~bob" });
    const m = message(2, "alice");
    addMessage(c, m);
    expect(deliveryStateOf(c, m, "alice")).toBe("sent");
    raiseWatermark(c.peerDelivered, "alice", 2); // the user's own other device does not count
    expect(deliveryStateOf(c, m, "alice")).toBe("sent");
    raiseWatermark(c.peerDelivered, "bob", 2);
    expect(deliveryStateOf(c, m, "alice")).toBe("delivered");
    raiseWatermark(c.peerRead, "bob", 1);
    expect(deliveryStateOf(c, m, "alice")).toBe("delivered");
    raiseWatermark(c.peerRead, "bob", 3);
    expect(deliveryStateOf(c, m, "alice")).toBe("read");
    raiseWatermark(c.peerRead, "bob", 1); // watermarks only rise
    expect(c.peerRead.get("bob")).toBe(3);
  });

  it("previews the newest message, an unacknowledged one included", () => {
    const c = newConversationState({ id: "dm:alice~bob" });
    expect(lastActivity(c)).toBeUndefined();
    addMessage(c, message(1, "bob", "hi"));
    expect(lastActivity(c)).toEqual({ body: "hi", sender: "bob", atMs: 1 });
    c.outgoing.push({ clientMsgId: "x", body: "queued", createdAtMs: 5 });
    expect(lastActivity(c)).toEqual({ body: "queued", atMs: 5 });
  });

  it("restricts posting in an admins-only group to admins and the owner, once the role is known", () => {
    const c = newConversationState({ id: "g:1", kind: "group", owner: "alice", postPolicy: "admins" });
    expect(postingRestricted(c, "alice")).toBe(false); // the owner, known from the listing
    expect(isGroupAdmin(c, "alice")).toBe(true);
    expect(postingRestricted(c, "bob")).toBe(false); // role not known yet: the server decides
    c.roles.set("bob", "member");
    expect(postingRestricted(c, "bob")).toBe(true);
    expect(isGroupAdmin(c, "bob")).toBe(false);
    c.roles.set("bob", "admin");
    expect(postingRestricted(c, "bob")).toBe(false);
    expect(isGroupAdmin(c, "bob")).toBe(true);
    c.roles.set("bob", "member");
    c.postPolicy = "everyone";
    expect(postingRestricted(c, "bob")).toBe(false);
    expect(postingRestricted(newConversationState({ id: "dm:alice~bob" }), "bob")).toBe(false);
  });

  it("counts admins-only and pull-model groups as channels, and takes the server's group changes", () => {
    const c = newConversationState({ id: "g:1", kind: "group", name: "team", lastSeq: 4, readSeq: 3 });
    expect(isChannel(c)).toBe(false);
    const base = {
      id: "g:1",
      kind: "group",
      name: "news",
      owner: "alice",
      memberCount: 3,
      open: true,
      createdAtMs: 1,
      postPolicy: "admins",
      addPolicy: "everyone",
      delivery: "push",
      version: 2,
      // A reply to a group change has no seqs: those known stay.
      lastSeq: 0,
      readSeq: 0,
    } as const;
    applyServerInfo(c, base);
    expect(c).toMatchObject({
      name: "news",
      owner: "alice",
      open: true,
      memberCount: 3,
      lastSeq: 4,
      readSeq: 3,
    });
    expect(isChannel(c)).toBe(true);
    applyServerInfo(c, { ...base, postPolicy: "everyone", delivery: "pull" });
    expect(isChannel(c)).toBe(true);
    expect(isChannel(newConversationState({ id: "dm:alice~bob" }))).toBe(false);
  });

  it("takes a listing's settings only if nothing newer changed them since it was asked for", () => {
    const c = newConversationState({ id: "g:1", name: "Crew", lastSeq: 2 });
    const listed = (name: string, lastSeq: number) =>
      ({ ...c, id: "g:1", kind: "group", name, lastSeq, readSeq: 1, memberCount: 3, version: 1 }) as const;
    // A listing asked for at change 4; the rename (change 5) was answered and announced meanwhile.
    applyServerInfo(c, listed("Ship crew", 0));
    c.learnedAt = 5;
    applyListed(c, listed("Crew", 3), 4);
    expect(c).toMatchObject({ name: "Ship crew", lastSeq: 3, readSeq: 1 });
    // A listing asked for after it is the server's truth again.
    applyListed(c, listed("Renamed elsewhere", 3), 5);
    expect(c.name).toBe("Renamed elsewhere");
  });

  it("keeps the settings of the newest version the server told, whatever arrives after", () => {
    const c = newConversationState({ id: "g:1", kind: "group", name: "Crew", lastSeq: 2 });
    const told = (name: string, version: number, lastSeq = 0) =>
      ({ ...c, id: "g:1", kind: "group", name, lastSeq, readSeq: 0, memberCount: 3, version }) as const;
    applyServerInfo(c, told("Renamed twice", 3));
    // The reply to the first rename, answered after the second's event: its seqs only.
    applyServerInfo(c, told("Renamed once", 2, 5));
    expect(c).toMatchObject({ name: "Renamed twice", version: 3, lastSeq: 5 });
    applyServerInfo(c, told("Renamed thrice", 4));
    expect(c).toMatchObject({ name: "Renamed thrice", version: 4 });
    // A server that keeps no versions (0) is taken as it comes, and an older version is still older.
    applyServerInfo(c, told("Unversioned", 0));
    expect(c.name).toBe("Unversioned");
    applyServerInfo(c, told("Renamed once", 2));
    expect(c.name).toBe("Unversioned");
  });

  it("shows the user's unanswered setting changes over what the server says meanwhile", () => {
    const c = newConversationState({ id: "g:1", kind: "group", name: "Crew" });
    const server = (settings: Partial<GroupSettings>) =>
      ({
        ...c.serverSettings,
        id: "g:1",
        kind: "group",
        owner: "alice",
        memberCount: 2,
        createdAtMs: 1,
        delivery: "push",
        version: 2,
        lastSeq: 0,
        readSeq: 0,
        ...settings,
      }) as const;
    // Two changes in flight: open (1), then admins-only (2).
    proposeSettings(c, { open: true }, 1);
    proposeSettings(c, { postPolicy: "admins" }, 2);
    expect(c).toMatchObject({ open: true, postPolicy: "admins" });
    // The first's reply and event still have postPolicy "everyone": the second stays shown.
    settleSettings(c, { open: true }, 1, true);
    applyServerInfo(c, server({ open: true }));
    expect(c).toMatchObject({ open: true, postPolicy: "admins" });
    // The second refused: back to what the server said, the first change kept.
    settleSettings(c, { postPolicy: "admins" }, 2, false);
    expect(c).toMatchObject({ open: true, postPolicy: "everyone" });
    // A change answered NOTHING_TO_CHANGE is the server's value already.
    proposeSettings(c, { addPolicy: "admins" }, 3);
    settleSettings(c, { addPolicy: "admins" }, 3, true);
    expect(c.addPolicy).toBe("admins");
    // Of two changes of one setting, the later one shows until it is answered.
    proposeSettings(c, { name: "A" }, 4);
    proposeSettings(c, { name: "B" }, 5);
    settleSettings(c, { name: "A" }, 4, true);
    applyServerInfo(c, server({ name: "A", open: true, addPolicy: "admins" }));
    expect(c.name).toBe("B");
    settleSettings(c, { name: "B" }, 5, true);
    applyServerInfo(c, server({ name: "B", open: true, addPolicy: "admins" }));
    expect(c).toMatchObject({ name: "B", open: true, postPolicy: "everyone", addPolicy: "admins" });
    expect(c.unsettled.size).toBe(0);
  });
});
