import { describe, expect, it } from "vitest";
import { firstAttemptMarginMs, RecentSends } from "./recent-sends.js";

const CLAIMED = 1_000_000;
const MARGIN = 60_000;

describe("RecentSends", () => {
  it("trusts a first attempt only when it was received a margin after the claim", () => {
    const recent = new RecentSends(CLAIMED, MARGIN, 100);
    expect(recent.needsLookup(undefined)).toBe(true); // not a first attempt: always looked up
    expect(recent.needsLookup(CLAIMED - 1)).toBe(true);
    expect(recent.needsLookup(CLAIMED + MARGIN - 1)).toBe(true);
    expect(recent.needsLookup(CLAIMED + MARGIN)).toBe(false);
  });

  it("answers the keys it remembers, by conversation and key", () => {
    const recent = new RecentSends(CLAIMED, MARGIN, 100);
    recent.remember("dm:a~b", "a\u0000k1", { seq: 7, messageId: "m7" }, CLAIMED + 5);
    expect(recent.get("dm:a~b", "a\u0000k1")).toEqual({ seq: 7, messageId: "m7" });
    expect(recent.get("dm:a~c", "a\u0000k1")).toBeUndefined();
    expect(recent.get("dm:a~b", "a\u0000k2")).toBeUndefined();
  });

  it("an evicted key moves the trust bound past its stamp", () => {
    const recent = new RecentSends(CLAIMED, MARGIN, 2);
    const late = CLAIMED + 500_000;
    recent.remember("c", "k1", { seq: 1, messageId: "m1" }, late);
    recent.remember("c", "k2", { seq: 2, messageId: "m2" }, late + 10);
    expect(recent.needsLookup(late + MARGIN)).toBe(false);
    // A third key evicts the oldest (k1, stamped `late`): a first attempt as late as k1's resend
    // might be is looked up again.
    recent.remember("c", "k3", { seq: 3, messageId: "m3" }, late + 20);
    expect(recent.get("c", "k1")).toBeUndefined();
    expect(recent.get("c", "k2")).toEqual({ seq: 2, messageId: "m2" });
    expect(recent.needsLookup(late + MARGIN)).toBe(true);
    expect(recent.needsLookup(late + 1 + MARGIN)).toBe(false);
    // Remembering a key again keeps it young.
    recent.remember("c", "k2", { seq: 2, messageId: "m2" }, late + 10);
    recent.remember("c", "k4", { seq: 4, messageId: "m4" }, late + 30);
    expect(recent.get("c", "k2")).toBeDefined();
    expect(recent.get("c", "k3")).toBeUndefined();
  });

  it("after writes of unknown outcome, everything received until then is looked up", () => {
    const recent = new RecentSends(CLAIMED, MARGIN, 100);
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

  it("the margin covers two ping intervals and the clock skew, twice", () => {
    expect(firstAttemptMarginMs(25_000)).toBe(60_000);
    expect(firstAttemptMarginMs(1_000)).toBe(12_000);
  });
});
