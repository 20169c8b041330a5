import { describe, expect, it } from "vitest";
import type { ConversationRecord } from "../backends/types.js";
import { firstStranger } from "./contacts.js";

describe("firstStranger", () => {
  /** alice: a direct conversation with bob, groups g:1 (with carol) and g:2 (with dave). */
  function membership() {
    const members: Record<string, string[]> = {
      "dm:alice~bob": ["alice", "bob"],
      "g:1": ["alice", "carol"],
      "g:2": ["alice", "dave"],
    };
    const reads = { lists: 0, isMember: 0 };
    const store = {
      isMember: async (id: string, user: string) => {
        reads.isMember++;
        return members[id]?.includes(user) ?? false;
      },
      conversationsOf: async (user: string) => {
        reads.lists++;
        return Object.keys(members)
          .filter((id) => members[id]!.includes(user))
          .map((id) => ({ id, kind: id.startsWith("g:") ? "group" : "direct" }) as ConversationRecord);
      },
    };
    return { store, reads };
  }

  it("finds who shares a direct conversation or a group with the user, listing the user's groups once", async () => {
    const { store, reads } = membership();
    expect(await firstStranger(store, "alice", ["bob", "carol", "dave"], 1_000)).toBeUndefined();
    expect(reads.lists).toBe(1);
    expect(await firstStranger(store, "alice", ["carol", "erin", "dave"], 1_000)).toBe("erin");
  });

  it("does not list the user's groups when direct conversations settle it", async () => {
    const { store, reads } = membership();
    expect(await firstStranger(store, "alice", ["bob"], 1_000)).toBeUndefined();
    expect(reads.lists).toBe(0);
  });
});
