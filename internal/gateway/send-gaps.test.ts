import { describe, expect, it } from "vitest";
import { Code, errors, SwitchboardError } from "../lib/errors.js";
import { leavesGap, SendGaps } from "./send-gaps.js";

const unavailable = errors.unavailable("LOG_UNAVAILABLE", "kafka did not take it");
/** The `order`-th send, `clientMsgId`, is refused for the gap that `first` left. */
const heldBackBy = (gaps: SendGaps, first: string, clientMsgId: string, order: number) =>
  expect(() => gaps.pass("dm:a~b", clientMsgId, order, order)).toThrow(
    expect.objectContaining({ reason: "PREVIOUS_SEND_FAILED", message: expect.stringContaining(first) }),
  );

describe("SendGaps", () => {
  it("holds back a conversation's later sends until the refused one comes again", () => {
    const gaps = new SendGaps(10_000);
    gaps.refused("dm:a~b", "k1", unavailable, 1, 1);
    heldBackBy(gaps, "k1", "k2", 2);
    // Refusing k2 for that leaves the gap where it was: k1 first.
    gaps.refused("dm:a~b", "k2", errors.aborted("PREVIOUS_SEND_FAILED", ""), 2, 2);
    gaps.pass("g:1", "k3", 3, 3); // another conversation
    gaps.pass("dm:a~b", "k1", 4, 4); // the resend
    gaps.pass("dm:a~b", "k2", 5, 5);
  });

  it("names the earliest refused send, whatever the order the refusals came in", () => {
    const gaps = new SendGaps(10_000);
    // k2 (the 2nd send) is rate-limited while k1 (the 1st) waits for Kafka, which then refuses it.
    gaps.refused("dm:a~b", "k2", errors.exhausted("RATE_LIMITED", "", 200), 2, 0);
    gaps.pass("dm:a~b", "k1", 1, 1); // arrived before k2: not held back by it
    gaps.refused("dm:a~b", "k1", unavailable, 1, 2);
    heldBackBy(gaps, "k1", "k2", 3); // k2's resend must wait for k1's
    gaps.pass("dm:a~b", "k1", 4, 4);
    gaps.pass("dm:a~b", "k2", 5, 5);
  });

  it("sends refused behind the first one come before anything sent after them", () => {
    const gaps = new SendGaps(10_000);
    // A (1st) is refused; B (2nd) was already on its way and is held back by the gap.
    gaps.refused("dm:a~b", "A", unavailable, 1, 1);
    heldBackBy(gaps, "A", "B", 2);
    gaps.refused("dm:a~b", "B", errors.aborted("PREVIOUS_SEND_FAILED", ""), 2, 2);
    gaps.pass("dm:a~b", "A", 3, 3); // A's resend, checked at its turn...
    gaps.pass("dm:a~b", "A", 3, 3); // ...and again right before its append
    // C, sent after A's resend went out, before B's refusal reached the client: it must not pass B.
    heldBackBy(gaps, "B", "C", 4);
    gaps.refused("dm:a~b", "C", errors.aborted("PREVIOUS_SEND_FAILED", ""), 4, 4);
    heldBackBy(gaps, "B", "C", 5); // C's resend before B's
    gaps.pass("dm:a~b", "B", 6, 6);
    gaps.pass("dm:a~b", "C", 7, 7);
    gaps.pass("dm:a~b", "D", 8, 8); // all came again: the gap is closed
  });

  it("a resend refused again right before its append keeps the place of the send it repeats", () => {
    const gaps = new SendGaps(10_000);
    gaps.refused("dm:a~b", "A", unavailable, 2, 1);
    gaps.refused("dm:a~b", "B", errors.aborted("PREVIOUS_SEND_FAILED", ""), 3, 1);
    gaps.pass("dm:a~b", "A", 4, 2); // A's resend passed its turn
    // Before A's append, the 1st send (Y, issued before A) fails in Kafka: Y first, then A, then B.
    gaps.refused("dm:a~b", "Y", unavailable, 1, 3);
    heldBackBy(gaps, "Y", "A", 4);
    gaps.refused("dm:a~b", "A", errors.aborted("PREVIOUS_SEND_FAILED", ""), 4, 4);
    gaps.pass("dm:a~b", "Y", 5, 5);
    heldBackBy(gaps, "A", "B", 6);
    gaps.pass("dm:a~b", "A", 7, 7);
    gaps.pass("dm:a~b", "B", 8, 8);
  });

  it("a send refused again in a later gap keeps its first place, ahead of sends that arrived after it", () => {
    // Kafka away for long, the client resending each refused send as soon as it is told (found from
    // outside: the gap asked for B before A, and B was stored first).
    const gaps = new SendGaps(10_000);
    gaps.refused("dm:a~b", "A", unavailable, 1, 1); // A (1st) refused
    gaps.pass("dm:a~b", "A", 3, 3); // its resend passes: the gap closes
    gaps.refused("dm:a~b", "B", unavailable, 2, 4); // B (2nd) refused later
    gaps.pass("dm:a~b", "B", 4, 4); // its resend passes: closed again
    gaps.refused("dm:a~b", "A", unavailable, 3, 5); // A's resend refused
    gaps.pass("dm:a~b", "A", 5, 5); // A's second resend passes
    gaps.refused("dm:a~b", "B", unavailable, 4, 6); // B's resend refused
    gaps.refused("dm:a~b", "A", unavailable, 5, 7); // A's second resend refused after it
    heldBackBy(gaps, "A", "B", 8); // A first: it was sent first
    gaps.pass("dm:a~b", "A", 9, 9);
    gaps.pass("dm:a~b", "B", 10, 10);
    // Once stored, a send's place is forgotten: a send of that id again (none should come) has its own.
    gaps.settled("dm:a~b", "A");
    gaps.settled("dm:a~b", "B");
    gaps.refused("dm:a~b", "D", unavailable, 11, 11);
    gaps.refused("dm:a~b", "A", unavailable, 12, 12);
    heldBackBy(gaps, "D", "A", 13);
  });

  it("forgets a gap whose send did not come again within its lifetime", () => {
    const gaps = new SendGaps(10_000);
    gaps.refused("dm:a~b", "k1", unavailable, 1, 0);
    expect(() => gaps.pass("dm:a~b", "k2", 2, 9_999)).toThrow();
    gaps.pass("dm:a~b", "k2", 3, 10_000);
    gaps.pass("dm:a~b", "k3", 4, 10_001);
  });

  it("opens gaps only for refusals the client is told to retry", () => {
    expect(leavesGap(unavailable)).toBe(true);
    expect(leavesGap(errors.exhausted("RATE_LIMITED", "", 200))).toBe(true);
    expect(leavesGap(errors.exhausted("STORAGE_FULL", "", 5_000))).toBe(true);
    expect(leavesGap(new Error("unexpected"))).toBe(true); // INTERNAL to the client
    // A peer refusing the gateway's own credential: the client is told UNAVAILABLE and resends.
    expect(leavesGap(new SwitchboardError(Code.UNAUTHENTICATED, "INVALID_CREDENTIALS", "key"))).toBe(true);
    expect(leavesGap(errors.denied("METHOD_NOT_ALLOWED", ""))).toBe(true);
    // Already in the log in its place: its resend gets the original ack.
    expect(leavesGap(errors.unavailable("SEQUENCE_TIMEOUT", ""))).toBe(false);
    expect(leavesGap(errors.denied("NOT_MEMBER", ""))).toBe(false);
    expect(leavesGap(errors.invalid("BODY_TOO_LARGE", ""))).toBe(false);
    expect(leavesGap(errors.exhausted("GROUP_FULL", ""))).toBe(false);
    const gaps = new SendGaps(10_000);
    gaps.refused("dm:a~b", "k1", errors.denied("NOT_MEMBER", ""), 1, 0);
    gaps.pass("dm:a~b", "k2", 2, 1);
  });

  it("keeps at most `max` gaps, forgetting the oldest", () => {
    const gaps = new SendGaps(10_000, 2);
    for (const [i, c] of ["g:1", "g:2", "g:3"].entries()) gaps.refused(c, `k-${c}`, unavailable, i + 1, 0);
    gaps.pass("g:1", "other", 9, 1);
    expect(() => gaps.pass("g:2", "other", 9, 1)).toThrow();
    expect(() => gaps.pass("g:3", "other", 9, 1)).toThrow();
  });
});
