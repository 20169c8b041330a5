import { describe, expect, it } from "vitest";
import { PullAudiences } from "./pull-audiences.js";

describe("PullAudiences", () => {
  it("keeps member sets until forgotten, and never keeps one whose membership changed while it was read", async () => {
    const members = new Map([
      ["a", ["u1", "u2"]],
      ["b", ["u3"]],
    ]);
    let reads = 0;
    let during: (() => void) | undefined;
    const audiences = new PullAudiences(async (c) => {
      reads++;
      const list = [...(members.get(c) ?? [])];
      during?.();
      return list;
    });
    expect([...(await audiences.load(["a", "b", "a"])).get("a")!]).toEqual(["u1", "u2"]);
    expect(reads).toBe(2);
    await audiences.load(["a"]);
    expect(reads).toBe(2); // held

    members.set("a", ["u1"]);
    audiences.forget("a");
    expect([...(await audiences.load(["a"])).get("a")!]).toEqual(["u1"]);
    expect(reads).toBe(3);

    // A change lands while the set is being read: the batch gets what was read, nothing is kept.
    audiences.forget("a");
    during = () => {
      during = undefined;
      members.set("a", ["u1", "u9"]);
      audiences.forget("a");
    };
    expect([...(await audiences.load(["a"])).get("a")!]).toEqual(["u1"]);
    expect([...(await audiences.load(["a"])).get("a")!]).toEqual(["u1", "u9"]);
    expect(reads).toBe(5);
  });

  it("forgets every set when the partitions it follows moved, also one being read", async () => {
    const members = new Map([
      ["a", ["u1"]],
      ["b", ["u2"]],
    ]);
    let during: (() => void) | undefined;
    const audiences = new PullAudiences(async (c) => {
      const list = [...(members.get(c) ?? [])];
      during?.();
      return list;
    });
    await audiences.load(["a"]);
    // Another process read b's and a's changes while the partition was away: this router saw none.
    members.set("a", ["u1", "u3"]);
    during = () => {
      during = undefined;
      members.set("b", []);
      audiences.forgetAll();
    };
    expect([...(await audiences.load(["b"])).get("b")!]).toEqual(["u2"]); // what was read, not kept
    expect([...(await audiences.load(["a", "b"])).values()].map((s) => [...s])).toEqual([["u1", "u3"], []]);
  });

  it("holds at most its bound of member ids, the least recently loaded sets going first", async () => {
    let reads = 0;
    const audiences = new PullAudiences(async (c) => {
      reads++;
      return Array.from({ length: 3 }, (_, i) => `${c}${i}`);
    }, 6);
    await audiences.load(["a", "b"]);
    await audiences.load(["c"]); // 9 ids: a goes
    expect(reads).toBe(3);
    await audiences.load(["b", "c"]);
    expect(reads).toBe(3);
    await audiences.load(["a"]);
    expect(reads).toBe(4);
    // A set larger than the bound still serves its batch.
    const big = new PullAudiences(async () => ["x", "y", "z"], 2);
    expect((await big.load(["g"])).get("g")?.size).toBe(3);
  });

  it("names a set it cannot read without keeping the others from their batch; load fails on it", async () => {
    const timeout = new Error("Cassandra timed out");
    const audiences = new PullAudiences(async (c) => {
      if (c === "broken") throw timeout;
      return [`${c}-member`];
    });
    const { sets, unreadable } = await audiences.loadSettled(["a", "broken", "b"]);
    expect([...sets.keys()].sort()).toEqual(["a", "b"]);
    expect(unreadable).toEqual([{ conversationId: "broken", error: timeout }]);
    await expect(audiences.load(["a", "broken"])).rejects.toBe(timeout);
    // What was read is held: the next batch reads only what failed.
    expect([...(await audiences.loadSettled(["a"])).sets.get("a")!]).toEqual(["a-member"]);
  });
});
