import { describe, expect, it } from "vitest";
import { RecentSends, type RecentSendsOptions } from "./recent-sends.js";

const CLAIMED = 1_000_000;
const MARGIN = 10_000;
const WINDOW = 3_600_000;

const recentSends = (o: Partial<RecentSendsOptions> = {}) =>
  new RecentSends({ claimedAtMs: CLAIMED, marginMs: MARGIN, entriesMax: 100, windowMs: WINDOW, ...o });

describe("RecentSends", () => {
  it("trusts a first attempt only when no resend of it can have been received before the claim", () => {
    const recent = recentSends();
    expect(recent.needsLookup(undefined)).toBe(true); // not a first attempt: always looked up
    expect(recent.needsLookup(CLAIMED - 1)).toBe(true);
    expect(recent.needsLookup(CLAIMED + MARGIN - 1)).toBe(true);
    expect(recent.needsLookup(CLAIMED + MARGIN)).toBe(false);
    // A bound ahead of the owner's own clock comes from a gateway whose clock is off: looked up.
    expect(recent.needsLookup(CLAIMED + MARGIN + 5, CLAIMED + MARGIN + 5)).toBe(false);
    expect(recent.needsLookup(CLAIMED + MARGIN + 6, CLAIMED + MARGIN + 5)).toBe(true);
  });

  it("answers the keys it remembers, by conversation and key, within the dedupe window", () => {
    const recent = recentSends();
    const stamp = CLAIMED + 5;
    recent.remember("dm:a~b", "a\u0000k1", { seq: 7, messageId: "m7" }, stamp);
    expect(recent.get("dm:a~b", "a\u0000k1", stamp + 1)).toEqual({ seq: 7, messageId: "m7" });
    expect(recent.get("dm:a~c", "a\u0000k1", stamp + 1)).toBeUndefined();
    expect(recent.get("dm:a~b", "a\u0000k2", stamp + 1)).toBeUndefined();
    // Past the window a resend is a new message, as the store's expired dedupe row says; a repeat
    // in between does not extend it (the row is not written again).
    recent.remember("dm:a~b", "a\u0000k1", { seq: 7, messageId: "m7" }, stamp + WINDOW / 2);
    expect(recent.get("dm:a~b", "a\u0000k1", stamp + WINDOW - 1)).toBeDefined();
    expect(recent.get("dm:a~b", "a\u0000k1", stamp + WINDOW)).toBeUndefined();
  });

  it("an evicted key moves the trust bound past its stamp", () => {
    const recent = recentSends({ entriesMax: 2 });
    const late = CLAIMED + 500_000;
    recent.remember("c", "k1", { seq: 1, messageId: "m1" }, late);
    recent.remember("c", "k2", { seq: 2, messageId: "m2" }, late + 10);
    expect(recent.needsLookup(late + MARGIN)).toBe(false);
    // A third key evicts the oldest (k1, stamped `late`): a first attempt whose resends may have
    // come as early as k1 is looked up again.
    recent.remember("c", "k3", { seq: 3, messageId: "m3" }, late + 20);
    expect(recent.get("c", "k1", late)).toBeUndefined();
    expect(recent.get("c", "k2", late)).toEqual({ seq: 2, messageId: "m2" });
    expect(recent.needsLookup(late + MARGIN)).toBe(true);
    expect(recent.needsLookup(late + 1 + MARGIN)).toBe(false);
    // A key remembered again (a repeat) keeps its place: it is still the oldest.
    recent.remember("c", "k2", { seq: 2, messageId: "m2" }, late + 40);
    recent.remember("c", "k4", { seq: 4, messageId: "m4" }, late + 30);
    expect(recent.get("c", "k2", late)).toBeUndefined();
    expect(recent.get("c", "k3", late)).toBeDefined();
  });

  it("after writes of unknown outcome, everything received until then is looked up", () => {
    const recent = recentSends();
    const failedAt = CLAIMED + 300_000;
    expect(recent.needsLookup(failedAt)).toBe(false);
    recent.forgetUntil(failedAt);
    expect(recent.needsLookup(failedAt)).toBe(true);
    expect(recent.needsLookup(failedAt + MARGIN - 1)).toBe(true);
    expect(recent.needsLookup(failedAt + MARGIN)).toBe(false);
    // The bound never moves back.
    recent.forgetUntil(CLAIMED);
    expect(recent.needsLookup(failedAt + MARGIN - 1)).toBe(true);
  });
});
