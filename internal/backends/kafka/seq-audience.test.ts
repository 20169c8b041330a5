import { describe, expect, it } from "vitest";
import type { ChangeBound, DepartureBound, MemberBound } from "../types.js";
import { SeqAudience, UNANNOUNCED_AFTER_MS } from "./seq-audience.js";

const at = (seq: number | undefined, changedAtMs = 1_000): ChangeBound => ({ seq, changedAtMs });
const member = (user: string, joined: ChangeBound): MemberBound => ({ user, joined });
const departed = (user: string, joined: ChangeBound, left: ChangeBound): DepartureBound => ({
  user,
  joined,
  left,
});
const sorted = (users: readonly string[]) => [...users].sort();

describe("the members as of a seq", () => {
  // ann and bob from the start; cat added at head 10; dan removed at head 10; eve added, not yet met;
  // fay removed, not yet met.
  const audience = new SeqAudience({
    members: [
      member("ann", at(0)),
      member("bob", at(0)),
      member("cat", at(10)),
      member("eve", at(undefined, 5_000)),
    ],
    departed: [departed("dan", at(0), at(10)), departed("fay", at(0), at(undefined, 5_000))],
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
      members: [member("ann", at(0)), member("cat", at(10))],
      departed: [departed("dan", at(0), at(10))],
    });
    expect(settled.at(11, 0)).toEqual(["ann", "cat"]);
    expect(settled.at(11, 0)).toBe(settled.at(12, 0)); // one list for every such message
    expect(sorted(settled.at(3, 0))).toEqual(["ann", "dan"]);
  });

  it("a user who left and came back, more than once, counts for their stretches only", () => {
    // dan: member to 10, out 11–20, back 21–30, out 31–40, member again from 41.
    const back = new SeqAudience({
      members: [member("ann", at(0)), member("dan", at(40))],
      departed: [departed("dan", at(0), at(10)), departed("dan", at(20), at(30))],
    });
    const dans = Array.from({ length: 45 }, (_, i) => i + 1).filter((seq) => back.at(seq, 0).includes("dan"));
    expect(dans).toEqual([
      ...Array.from({ length: 10 }, (_, i) => i + 1),
      ...Array.from({ length: 10 }, (_, i) => i + 21),
      ...Array.from({ length: 5 }, (_, i) => i + 41),
    ]);
  });

  it("a membership added and ended before the sequencer met either counts for neither side of it", () => {
    // gus added and removed again; neither announcement met yet: a message before both is not his.
    const brief = new SeqAudience({
      members: [member("ann", at(0))],
      departed: [departed("gus", at(undefined, 5_000), at(undefined, 5_100))],
    });
    expect(brief.at(7, 5_050)).toEqual(["ann"]);
  });
});
