import { describe, expect, it } from "vitest";
import type { MembershipBound } from "../types.js";
import { SeqAudience, UNANNOUNCED_AFTER_MS } from "./seq-audience.js";

const bound = (user: string, seq: number | undefined, changedAtMs = 1_000): MembershipBound => ({
  user,
  seq,
  changedAtMs,
});
const sorted = (users: readonly string[]) => [...users].sort();

describe("the members as of a seq", () => {
  // ann and bob from the start; cat added at head 10; dan removed at head 10; eve added, not yet met;
  // fay removed, not yet met.
  const audience = new SeqAudience({
    members: [bound("ann", 0), bound("bob", 0), bound("cat", 10), bound("eve", undefined, 5_000)],
    departed: [bound("dan", 10), bound("fay", undefined, 5_000)],
  });

  it("a message up to a bound goes to the removed member, one after it to the added one", () => {
    expect(sorted(audience.at(10, 2_000))).toEqual(["ann", "bob", "dan", "fay"]);
    expect(sorted(audience.at(11, 2_000))).toEqual(["ann", "bob", "cat", "fay"]);
  });

  it("a change not met yet counts for no message: the added one gets none, the removed one all", () => {
    for (const seq of [1, 10, 11, 500]) {
      const to = audience.at(seq, 6_000);
      expect(to).not.toContain("eve");
      expect(to).toContain("fay");
    }
  });

  it("a change never announced takes effect for the messages created well after it", () => {
    const late = 5_000 + UNANNOUNCED_AFTER_MS + 1;
    expect(sorted(audience.at(11, late))).toEqual(["ann", "bob", "cat", "eve"]);
    expect(sorted(audience.at(11, 5_000 + UNANNOUNCED_AFTER_MS))).toEqual(["ann", "bob", "cat", "fay"]);
  });

  it("with every change met, a message past every bound goes to the bound members", () => {
    const settled = new SeqAudience({
      members: [bound("ann", 0), bound("cat", 10)],
      departed: [bound("dan", 10)],
    });
    expect(settled.at(11, 0)).toEqual(["ann", "cat"]);
    expect(settled.at(11, 0)).toBe(settled.at(12, 0)); // one list for every such message
    expect(sorted(settled.at(3, 0))).toEqual(["ann", "dan"]);
  });

  it("a user removed and added again counts for neither stretch in between", () => {
    const back = new SeqAudience({
      members: [bound("ann", 0), bound("dan", 20)],
      departed: [bound("dan", 10)],
    });
    expect(back.at(10, 0)).toContain("dan");
    expect(back.at(15, 0)).not.toContain("dan");
    expect(back.at(21, 0)).toContain("dan");
  });
});
