import { describe, expect, it } from "vitest";
import type { ConversationRecord } from "../backends/types.js";
import { ContactCheck } from "./contacts.js";

/** A membership store of `members` by conversation (newest first), counting its reads. */
function membership(members: Record<string, string[]>) {
  const reads = { lists: 0, isMember: 0, membersAmong: 0 };
  const store = {
    isMember: async (id: string, user: string) => {
      reads.isMember++;
      return members[id]?.includes(user) ?? false;
    },
    membersAmong: async (id: string, users: readonly string[]) => {
      reads.membersAmong++;
      return new Set(users.filter((u) => members[id]?.includes(u)));
    },
    conversationsOf: async (user: string, limit: number) => {
      reads.lists++;
      return Object.keys(members)
        .filter((id) => members[id]!.includes(user))
        .slice(0, limit)
        .map((id) => ({ id, kind: id.startsWith("g:") ? "group" : "direct" }) as ConversationRecord);
    },
  };
  return { store, reads };
}

function check(store: ReturnType<typeof membership>["store"], clock = { now: 0 }, idsMax = 100_000) {
  return new ContactCheck(store, {
    groupsScanned: 1_000,
    groupListTtlMs: 10_000,
    groupListRereadMs: 1_000,
    idsMax,
    now: () => clock.now,
  });
}

describe("ContactCheck", () => {
  /** alice: a direct conversation with bob, groups g:1 (with carol) and g:2 (with dave). */
  const small = () =>
    membership({
      "dm:alice~bob": ["alice", "bob"],
      "g:1": ["alice", "carol"],
      "g:2": ["alice", "dave"],
    });

  it("finds who shares a direct conversation or a group with the user, listing the user's groups once", async () => {
    const { store, reads } = small();
    const contacts = check(store);
    expect(await contacts.firstStranger("alice", ["bob", "carol", "dave"])).toBeUndefined();
    expect(reads.lists).toBe(1);
    expect(await contacts.firstStranger("alice", ["carol", "erin", "dave", "frank"])).toBe("erin");
  });

  it("does not list the user's groups when direct conversations settle it", async () => {
    const { store, reads } = small();
    expect(await check(store).firstStranger("alice", ["bob"])).toBeUndefined();
    expect(reads.lists).toBe(0);
  });

  it("asks each group once about all the targets still unsettled, and stops once none is left", async () => {
    // 1,000 groups, the oldest shared with 100 targets: the review's worst case took 100,000 reads.
    const members: Record<string, string[]> = {};
    const targets = Array.from({ length: 100 }, (_, i) => `t${i}`);
    for (let i = 999; i >= 1; i--) members[`g:${i}`] = ["alice"];
    members["g:0"] = ["alice", ...targets];
    const { store, reads } = membership(members);
    expect(await check(store).firstStranger("alice", targets)).toBeUndefined();
    expect(reads).toEqual({ lists: 1, isMember: 100, membersAmong: 1_000 });

    // Shared with the newest group: one group read settles them all (a few more run alongside).
    members["g:999"] = ["alice", ...targets];
    const again = membership(members);
    expect(await check(again.store).firstStranger("alice", targets)).toBeUndefined();
    expect(again.reads.membersAmong).toBeLessThanOrEqual(8);
  });

  it("uses a user's group list again for a while, and reads it anew before calling someone a stranger", async () => {
    const members: Record<string, string[]> = { "g:1": ["alice", "carol"] };
    const { store, reads } = membership(members);
    const clock = { now: 0 };
    const contacts = check(store, clock);
    expect(await contacts.firstStranger("alice", ["carol"])).toBeUndefined();
    expect(await contacts.firstStranger("alice", ["carol"])).toBeUndefined();
    expect(reads.lists).toBe(1);
    // A group with erin, made after the list was read: found once the list is a second old...
    members["g:2"] = ["alice", "erin"];
    clock.now = 500;
    expect(await contacts.firstStranger("alice", ["erin"])).toBe("erin");
    expect(reads.lists).toBe(1);
    clock.now = 1_000;
    expect(await contacts.firstStranger("alice", ["erin"])).toBeUndefined();
    expect(reads.lists).toBe(2);
    // ...or at once when a group change reached the user.
    members["g:3"] = ["alice", "frank"];
    contacts.forget("alice");
    expect(await contacts.firstStranger("alice", ["frank"])).toBeUndefined();
    expect(reads.lists).toBe(3);
    // Past its lifetime the list is read again.
    clock.now = 20_000;
    expect(await contacts.firstStranger("alice", ["carol"])).toBeUndefined();
    expect(reads.lists).toBe(4);
  });

  it("does not count a held group the user was removed from, with no read more", async () => {
    // alice's list is held (g:1, with carol and dave); then she is removed from g:1, which nothing
    // tells her gateway (the change goes to the remaining members).
    const members: Record<string, string[]> = { "g:1": ["alice", "carol", "dave"] };
    const { store, reads } = membership(members);
    const clock = { now: 0 };
    const contacts = check(store, clock);
    expect(await contacts.firstStranger("alice", ["carol"])).toBeUndefined();
    members["g:1"] = ["carol", "dave"];
    const before = { ...reads };
    clock.now = 500; // the held list is young: not read again
    expect(await contacts.firstStranger("alice", ["carol", "dave"])).toBe("carol");
    expect(reads.membersAmong - before.membersAmong).toBe(1);
    expect(reads.lists).toBe(before.lists);
    clock.now = 9_000;
    expect(await contacts.firstStranger("alice", ["dave"])).toBe("dave");
  });

  it("drops lists past their lifetime as others are stored, and holds at most idsMax group ids", async () => {
    const members: Record<string, string[]> = {};
    for (let g = 0; g < 10; g++)
      members[`g:${g}`] = ["carol", ...Array.from({ length: 50 }, (_, u) => `u${u}`)];
    const { store } = membership(members);
    const clock = { now: 0 };
    const contacts = check(store, clock, 60);
    for (let u = 0; u < 5; u++) await contacts.firstStranger(`u${u}`, ["carol"]);
    // Five lists of ten groups, each counting 11: 55.
    expect(contacts.holding).toEqual({ lists: 5, weight: 55 });
    // A sixth would make 66: the oldest goes.
    await contacts.firstStranger("u5", ["carol"]);
    expect(contacts.holding).toEqual({ lists: 5, weight: 55 });
    // Past their lifetime, all the others go when the next one is stored, not only when read.
    clock.now = 10_000;
    await contacts.firstStranger("u6", ["carol"]);
    expect(contacts.holding).toEqual({ lists: 1, weight: 11 });
    contacts.forget("u6");
    expect(contacts.holding).toEqual({ lists: 0, weight: 0 });
  });

  it("starts no more reads once told to stop", async () => {
    const members: Record<string, string[]> = {};
    for (let g = 0; g < 100; g++) members[`g:${g}`] = ["alice"];
    const { store, reads } = membership(members);
    const abort = new AbortController();
    const slowStore = {
      ...store,
      membersAmong: async (id: string, users: readonly string[]) => {
        if (reads.membersAmong === 8) abort.abort();
        return store.membersAmong(id, users);
      },
    };
    const contacts = check(slowStore);
    await expect(contacts.firstStranger("alice", ["zed"], abort.signal)).rejects.toThrow();
    expect(reads.membersAmong).toBe(16);
  });
});
