import { afterEach, describe, expect, it, vi } from "vitest";
import type { AppendResult } from "../types.js";
import { AwaitedAnswers, LATE_ANSWER_KEPT_MS, resendKey } from "./awaited-answers.js";

const result = (seq: number): AppendResult => ({
  duplicate: false,
  message: {
    conversationId: "g:1",
    sender: "ann",
    clientMsgId: "k",
    body: "hi",
    messageId: `m${seq}`,
    createdAtMs: 1,
    seq,
  },
});

afterEach(() => {
  vi.useRealTimers();
});

describe("awaited answers", () => {
  it("gives a resend the answer its first transmission is waiting for, until it came", async () => {
    const answers = new AwaitedAnswers();
    const key = resendKey("g:1", "ann", "k");
    const abandoned = vi.fn();
    const first = answers.expect(key, abandoned);
    const waiting = answers.get(key);
    expect(waiting).toBeDefined();
    expect(answers.get(resendKey("g:1", "ann", "other"))).toBeUndefined();
    first.settle(result(7));
    expect(await waiting).toEqual(result(7));
    // Answered: found stored from now on, not here.
    expect(answers.get(key)).toBeUndefined();
    expect(abandoned).not.toHaveBeenCalled();
  });

  it("forgets a draft that never reached the log, and keeps a late one's for a while", () => {
    vi.useFakeTimers();
    const answers = new AwaitedAnswers();
    const abandoned = vi.fn();
    answers.expect("never", abandoned).failed();
    expect(answers.get("never")).toBeUndefined();

    expect(answers.expect("late", abandoned).late()).toBe(true);
    vi.advanceTimersByTime(LATE_ANSWER_KEPT_MS - 1);
    expect(answers.get("late")).toBeDefined();
    vi.advanceTimersByTime(1);
    expect(answers.get("late")).toBeUndefined();
    // Its pending registration goes with it; a draft that failed had nothing left to drop.
    expect(abandoned).toHaveBeenCalledTimes(1);
    expect(answers.size).toBe(0);
  });

  it("waits for the newest of two sends with one key, and the older's settling leaves it", async () => {
    const answers = new AwaitedAnswers();
    const older = vi.fn();
    const a = answers.expect("k", older);
    const b = answers.expect("k", vi.fn());
    // Still within its deadline: its append waits for its own answer (nothing abandoned).
    expect(older).not.toHaveBeenCalled();
    const waiting = answers.get("k");
    // Past its deadline nobody waits for the older one: its caller lets it go.
    expect(a.late()).toBe(false);
    a.settle(result(1));
    a.failed();
    expect(answers.get("k")).toBe(waiting);
    b.settle(result(2));
    expect(await waiting).toEqual(result(2));
  });

  it("holds a bounded number of drafts, dropping the oldest", () => {
    const answers = new AwaitedAnswers();
    const abandoned = vi.fn();
    for (let i = 0; i <= 20_000; i++) {
      const answer = answers.expect(`k${i}`, () => abandoned(i));
      if (i < 2) answer.late();
    }
    expect(answers.size).toBe(20_000);
    // The late one pushed out goes with its pending registration.
    expect(abandoned).toHaveBeenCalledExactlyOnceWith(0);
    expect(answers.get("k0")).toBeUndefined();
    expect(answers.get("k20000")).toBeDefined();
  });
});
