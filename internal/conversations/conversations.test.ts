import { describe, expect, it } from "vitest";
import { AnnouncingMembershipStore } from "../backends/distributed/membership.js";
import {
  type AppendResult,
  type ConversationRecord,
  type MembershipStore,
  type MessageLog,
  newConversationRecord,
} from "../backends/types.js";
import { errors } from "../lib/errors.js";
import {
  Conversations,
  directConversationId,
  directMembers,
  exceedsChars,
  isValidConversationId,
  keyedGroupId,
} from "./conversations.js";
import type { IdPool } from "./id-pool.js";

describe("conversation ids", () => {
  it("derives one direct id from the two users in either order", () => {
    expect(directConversationId("bob", "alice")).toBe("dm:alice~bob");
    expect(directConversationId("alice", "bob")).toBe("dm:alice~bob");
    expect(directMembers("dm:alice~bob")).toEqual(["alice", "bob"]);
  });

  it("rejects malformed ids", () => {
    for (const id of [
      "",
      "dm:alice",
      "dm:a~b~c",
      "dm:al ice~bob",
      "g:",
      "g:12a",
      "group",
      `g:${"1".repeat(21)}`,
    ]) {
      expect(isValidConversationId(id)).toBe(false);
    }
    expect(isValidConversationId("g:382801613892354048")).toBe(true);
  });

  it("names a keyed group by caller and key alone, outside the range of minted ids", () => {
    const id = keyedGroupId("client:billing", "grp-1");
    expect(id).toBe(keyedGroupId("client:billing", "grp-1"));
    expect(isValidConversationId(id)).toBe(true);
    const keyed = ["a", "b", "c", "grp-1", "grp-2"].flatMap((key) =>
      ["client:billing", "client:root", "client:billin"].map((caller) => keyedGroupId(caller, key)),
    );
    expect(new Set(keyed).size).toBe(keyed.length);
    // A caller and key that join to the same text are still two ids.
    expect(keyedGroupId("ab", "c")).not.toBe(keyedGroupId("a", "bc"));
    for (const k of keyed) {
      // Snowflakes are below 2^63, so never 20 digits; a keyed id always is, from 10^19.
      expect(k).toMatch(/^g:1[0-9]{19}$/);
      expect(BigInt(k.slice(2))).toBeGreaterThan(2n ** 63n);
    }
  });
});

describe("exceedsChars", () => {
  it("counts code points, not UTF-16 units", () => {
    expect(exceedsChars("😀".repeat(100_000), 100_000)).toBe(false);
    expect(exceedsChars("😀".repeat(100_001), 100_000)).toBe(true);
    expect(exceedsChars("x".repeat(100_000), 100_000)).toBe(false);
    expect(exceedsChars("x".repeat(100_001), 100_000)).toBe(true);
  });
});

describe("addMembers", () => {
  it("announces the group when a retry adds nobody: the retry of an add whose first attempt failed after storing it", async () => {
    const id = "g:382801613892354048";
    const members = new Set(["alice"]);
    let group: ConversationRecord = newConversationRecord(
      { id, kind: "group", name: "plans", owner: "alice", open: false, createdAtMs: 1 },
      1,
    );
    const stored = {
      getConversation: async () => group,
      memberOf: async (_: string, user: string) =>
        members.has(user) ? { record: group, role: "owner" as const } : undefined,
      addMembers: async (_: string, users: string[]) => {
        for (const u of users) members.add(u);
        group = { ...group, memberCount: members.size };
        return group;
      },
    } as unknown as MembershipStore;
    // The distributed backend's store: the change is stored, then announced to the sequencers.
    let announcements = 0;
    const store = new AnnouncingMembershipStore(stored, async () => {
      if (++announcements === 1) throw new Error("kafka: not leader for partition");
    });
    const conversations = new Conversations(store, {} as MessageLog, {} as IdPool, {
      bodyCharsMax: 100,
      membersMax: 10,
      pullThreshold: 5,
      nameCharsMax: 64,
    });
    const heard: Array<{ memberCount: number; audience: unknown }> = [];
    conversations.onGroupChange((g, audience) => heard.push({ memberCount: g.memberCount, audience }));

    await expect(conversations.addMembers("alice", id, ["bob"])).rejects.toThrow(/not leader/);
    expect(heard).toEqual([]);
    expect((await conversations.addMembers("alice", id, ["bob"])).memberCount).toBe(2);
    expect(heard).toEqual([{ memberCount: 2, audience: "members" }]);
  });

  it("tells every member of the switch to pull, then only the comers of later additions", async () => {
    const id = "g:382801613892354049";
    const members = new Set(["alice", "bob"]);
    let group: ConversationRecord = {
      ...newConversationRecord(
        { id, kind: "group", name: "big", owner: "alice", open: true, createdAtMs: 1 },
        2,
      ),
    };
    const store = {
      getConversation: async () => group,
      isMember: async (_: string, user: string) => members.has(user),
      memberOf: async (_: string, user: string) =>
        members.has(user) ? { record: group, role: "owner" as const } : undefined,
      // Like the stores: past the threshold the group is on pull, for good.
      addMembers: async (_: string, users: string[], _max: number, pullThreshold: number) => {
        for (const u of users) members.add(u);
        const delivery = members.size > pullThreshold ? "pull" : group.delivery;
        group = { ...group, memberCount: members.size, delivery };
        return group;
      },
    } as unknown as MembershipStore;
    const conversations = new Conversations(store, {} as MessageLog, {} as IdPool, {
      bodyCharsMax: 100,
      membersMax: 100,
      pullThreshold: 3,
      nameCharsMax: 64,
    });
    const heard: Array<{ delivery: string; audience: unknown }> = [];
    conversations.onGroupChange((g, audience) => heard.push({ delivery: g.delivery, audience }));

    await conversations.addMembers("alice", id, ["carol"]); // 3: still push
    await conversations.addMembers("alice", id, ["dave"]); // 4: the switch
    await conversations.addMembers("alice", id, ["erin"]); // on pull already
    await conversations.join("frank", id);
    expect(heard).toEqual([
      { delivery: "push", audience: "members" },
      { delivery: "pull", audience: "members" },
      { delivery: "pull", audience: ["erin"] },
      { delivery: "pull", audience: ["frank"] },
    ]);
  });
});

describe("removeMembers, join and leave", () => {
  /** A group of alice (owner), bob and carol, behind the distributed backend's announcing store. */
  function setUp(failFirstAnnouncement: boolean) {
    const id = "g:382801613892354050";
    const members = new Map<string, "owner" | "member">([
      ["alice", "owner"],
      ["bob", "member"],
      ["carol", "member"],
    ]);
    let group: ConversationRecord = newConversationRecord(
      { id, kind: "group", name: "plans", owner: "alice", open: true, createdAtMs: 1 },
      3,
    );
    const stored = {
      getConversation: async () => group,
      isMember: async (_: string, user: string) => members.has(user),
      memberOf: async (_: string, user: string) => {
        const role = members.get(user);
        return role ? { record: group, role } : undefined;
      },
      removeMember: async (_: string, user: string) => {
        if (members.get(user) === undefined) throw errors.denied("NOT_MEMBER", `${user} is not a member`);
        members.delete(user);
        group = { ...group, memberCount: members.size };
        return group;
      },
      addMembers: async (_: string, users: string[]) => {
        for (const u of users) members.set(u, "member");
        group = { ...group, memberCount: members.size };
        return group;
      },
    } as unknown as MembershipStore;
    const announced: string[] = [];
    let failNext = failFirstAnnouncement;
    const store = new AnnouncingMembershipStore(stored, async (conversationId) => {
      if (failNext) {
        failNext = false;
        throw new Error("kafka: not leader for partition");
      }
      announced.push(conversationId);
    });
    const conversations = new Conversations(store, {} as MessageLog, {} as IdPool, {
      bodyCharsMax: 100,
      membersMax: 10,
      pullThreshold: 5,
      nameCharsMax: 64,
    });
    const heard: unknown[] = [];
    conversations.onGroupChange((_, audience) => heard.push(audience));
    return { id, conversations, announced, members, heard };
  }

  it("a retried removal announces again: its first attempt stored the change but failed to tell the sequencers", async () => {
    const { id, conversations, announced, members, heard } = setUp(true);
    await expect(conversations.removeMembers("alice", id, ["bob"])).rejects.toThrow(/not leader/);
    expect(members.has("bob")).toBe(false); // stored, not announced
    expect(announced).toEqual([]);
    expect(heard).toEqual([]);
    await conversations.removeMembers("alice", id, ["bob"]); // the retry: bob is gone already
    expect(announced).toEqual([id]);
    expect(heard).toEqual(["members"]); // and the members hear of it (docs/protocol.md §2.3)
  });

  it("skips a member another request removed between the check and the removal, like one not in", async () => {
    const { id, conversations, announced, members, heard } = setUp(false);
    const isMember = members.has.bind(members);
    // Bob is a member when checked; a concurrent removal takes him out right after.
    members.has = (user: string) => {
      const was = isMember(user);
      if (user === "bob") members.delete("bob");
      return was;
    };
    await conversations.removeMembers("alice", id, ["bob"]);
    expect(isMember("bob")).toBe(false);
    expect(announced).toEqual([id]); // nobody was removed by this request: announced again
    expect(heard).toEqual(["members"]);
  });

  it("a retried join announces again, to the sequencers and the members", async () => {
    const { id, conversations, announced, members, heard } = setUp(true);
    await expect(conversations.join("dave", id)).rejects.toThrow(/not leader/);
    expect(members.has("dave")).toBe(true); // stored, not announced
    expect(heard).toEqual([]);
    expect((await conversations.join("dave", id)).memberCount).toBe(4);
    expect(announced).toEqual([id]);
    expect(heard).toEqual(["members"]);
  });

  it("a join into an empty group that its joiner left again meanwhile is answered as joined, the group left without owner", async () => {
    const id = "g:382801613892354051";
    let group: ConversationRecord = {
      ...newConversationRecord(
        { id, kind: "group", name: "empty", owner: "", open: true, createdAtMs: 1 },
        0,
      ),
    };
    const members = new Set<string>();
    const store = {
      getConversation: async () => group,
      isMember: async (_: string, user: string) => members.has(user),
      addMembers: async (_: string, users: string[]) => {
        for (const u of users) members.add(u);
        group = { ...group, memberCount: members.size };
        // The leave sent with the join lands before the join makes its user owner.
        const joined = group;
        members.clear();
        group = { ...group, memberCount: 0 };
        return joined;
      },
      setRole: async (_: string, user: string) => {
        throw errors.notFound("USER_NOT_MEMBER", `${user} is not a member of ${id}`);
      },
    } as unknown as MembershipStore;
    const conversations = new Conversations(store, {} as MessageLog, {} as IdPool, {
      bodyCharsMax: 100,
      membersMax: 10,
      pullThreshold: 5,
      nameCharsMax: 64,
    });
    const joined = await conversations.join("erin", id);
    expect(joined).toMatchObject({ memberCount: 1, owner: "" });
  });

  it("a retried leave announces again, and still answers NOT_MEMBER", async () => {
    const { id, conversations, announced } = setUp(true);
    await expect(conversations.leave("carol", id)).rejects.toThrow(/not leader/);
    await expect(conversations.leave("carol", id)).rejects.toThrow(
      expect.objectContaining({ reason: "NOT_MEMBER" }),
    );
    expect(announced).toEqual([id]);
  });
});

describe("send: a resend refused for want of permission", () => {
  const id = "g:382801613892354050";
  const stored = {
    conversationId: id,
    seq: 7,
    messageId: "101",
    sender: "bob",
    clientMsgId: "k1",
    body: "hi",
    createdAtMs: 1,
  };

  function setup(role: "member" | "admin" | undefined, postPolicy: "everyone" | "admins" = "everyone") {
    const group = {
      ...newConversationRecord(
        { id, kind: "group", name: "g", owner: "alice", open: false, createdAtMs: 1 },
        2,
      ),
      postPolicy,
    };
    const calls = { appended: 0, append: 0 };
    const log = {
      append: async (draft: { conversationId: string }) => {
        calls.append++;
        return { message: { ...stored, ...draft, seq: 8 }, duplicate: false };
      },
      appended: async (conversationId: string, sender: string, clientMsgId: string) => {
        calls.appended++;
        return conversationId === id && sender === "bob" && clientMsgId === "k1" ? stored : undefined;
      },
    } as unknown as MessageLog;
    const store = {
      memberOf: async (_: string, user: string) =>
        user === "bob" && role ? { record: group, role } : undefined,
    } as unknown as MembershipStore;
    const ids = { next: async () => "102" } as unknown as IdPool;
    const conversations = new Conversations(store, log, ids, {
      bodyCharsMax: 100,
      membersMax: 10,
      pullThreshold: 5,
      nameCharsMax: 64,
    });
    const send = (clientMsgId: string, body = "hi") =>
      conversations.send({ sender: "bob", conversationId: id, clientMsgId, body });
    return { send, calls };
  }

  it("gets the original as a duplicate when its key was stored, its refusal otherwise", async () => {
    const removed = setup(undefined);
    expect(await removed.send("k1", "hi again")).toEqual({ message: stored, duplicate: true });
    await expect(removed.send("k2")).rejects.toMatchObject({ reason: "NOT_MEMBER" });
    // A send that fails its own checks is refused for them, before its target.
    await expect(removed.send("k1", "")).rejects.toMatchObject({ reason: "EMPTY_BODY" });
    expect(removed.calls).toEqual({ appended: 2, append: 0 });

    const restricted = setup("member", "admins");
    expect(await restricted.send("k1")).toEqual({ message: stored, duplicate: true });
    await expect(restricted.send("k2")).rejects.toMatchObject({ reason: "POSTING_RESTRICTED" });
    expect(restricted.calls).toEqual({ appended: 2, append: 0 });
  });

  it("whose first transmission through this process waits for its seq gets that one's answer, out of its caller's turn", async () => {
    const { conversations, log, first } = waitingSetup();
    const { issued, order } = await resendInTurn(conversations, "k3");
    // The turn was passed before the answer came: the caller's later sends are not held by the wait.
    expect(order).toEqual(["turn"]);
    first.resolve({ message: { ...stored, clientMsgId: "k3", seq: 9 }, duplicate: false });
    expect(await issued.appended).toEqual({
      message: { ...stored, clientMsgId: "k3", seq: 9 },
      duplicate: true,
    });
    // Nothing waits for another key: refused as before, after its lookup.
    await expect(
      conversations.send({ sender: "bob", conversationId: id, clientMsgId: "k4", body: "x" }),
    ).rejects.toMatchObject({
      reason: "NOT_MEMBER",
    });
    expect(log.calls).toEqual({ appended: 1, awaiting: 2 });
  });

  it("whose first transmission may be in the log through another process is looked up once the log is sequenced up to it, out of its caller's turn", async () => {
    let caughtUp!: () => void;
    const calls = { appended: 0, sequenced: 0 };
    // Stored only once the drafts before the resend are sequenced (the first one among them).
    let sequenced = false;
    const log = {
      appended: async (_c: string, _s: string, clientMsgId: string) => {
        calls.appended++;
        if (clientMsgId === "k8") return { ...stored, clientMsgId: "k8", seq: 4 }; // acked long ago
        return sequenced && clientMsgId === "k5" ? { ...stored, clientMsgId: "k5", seq: 11 } : undefined;
      },
      awaiting: () => undefined,
      sequencedUpToNow: (conversationId: string) => {
        calls.sequenced++;
        expect(conversationId).toBe(id);
        return new Promise<void>((r) => {
          caughtUp = () => {
            sequenced = true;
            r();
          };
        });
      },
    };
    const conversations = refusingEveryone(log);
    const { issued, order } = await resendInTurn(conversations, "k5");
    expect(order).toEqual(["turn"]);
    // Looked up first (not stored yet), then waited for.
    await expect.poll(() => calls.sequenced).toBe(1);
    expect(calls.appended).toBe(1);
    caughtUp();
    expect(await issued.appended).toEqual({
      message: { ...stored, clientMsgId: "k5", seq: 11 },
      duplicate: true,
    });
    // Nothing stored under the key once sequenced: the refusal.
    const refused = conversations.send({ sender: "bob", conversationId: id, clientMsgId: "k6", body: "x" });
    await expect.poll(() => calls.sequenced).toBe(2);
    caughtUp();
    await expect(refused).rejects.toMatchObject({ reason: "NOT_MEMBER" });
    // A first attempt has no earlier transmission to wait for: looked up at once.
    await expect(
      conversations.send({
        sender: "bob",
        conversationId: id,
        clientMsgId: "k7",
        body: "x",
        firstAttemptResendsAfterMs: Date.now(),
      }),
    ).rejects.toMatchObject({ reason: "NOT_MEMBER" });
    // A key stored before is answered at once, with no wait for the log.
    expect(
      await conversations.send({ sender: "bob", conversationId: id, clientMsgId: "k8", body: "x" }),
    ).toEqual({ message: { ...stored, clientMsgId: "k8", seq: 4 }, duplicate: true });
    expect(calls).toEqual({ appended: 6, sequenced: 2 });
  });

  /** bob's resend of `clientMsgId`, issued; `order` records when it passed its turn. */
  async function resendInTurn(conversations: Conversations, clientMsgId: string) {
    const order: string[] = [];
    const issued = await conversations.issue({
      sender: "bob",
      conversationId: id,
      clientMsgId,
      body: "again",
      beforeAppend: () => order.push("turn"),
    });
    return { issued, order };
  }

  /** Conversations over `log` whose membership store knows no member anywhere: every send is refused. */
  function refusingEveryone(log: object) {
    const store = { memberOf: async () => undefined } as unknown as MembershipStore;
    return new Conversations(store, log as unknown as MessageLog, {} as IdPool, {
      bodyCharsMax: 100,
      membersMax: 10,
      pullThreshold: 5,
      nameCharsMax: 64,
    });
  }

  function waitingSetup() {
    let resolve!: (r: AppendResult) => void;
    const answer = new Promise<AppendResult>((r) => {
      resolve = r;
    });
    const calls = { appended: 0, awaiting: 0 };
    const log = {
      calls,
      appended: async () => {
        calls.appended++;
        return undefined;
      },
      awaiting: (conversationId: string, sender: string, clientMsgId: string) => {
        calls.awaiting++;
        return conversationId === id && sender === "bob" && clientMsgId === "k3" ? answer : undefined;
      },
    };
    return { conversations: refusingEveryone(log), log, first: { resolve } };
  }

  it("costs an accepted send no lookup: its append deduplicates it", async () => {
    const member = setup("admin", "admins");
    expect((await member.send("k1")).duplicate).toBe(false);
    expect(member.calls).toEqual({ appended: 0, append: 1 });
  });
});
