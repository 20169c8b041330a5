import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { errors } from "./errors.js";
import { type DropReason, RetryLater } from "./retry-later.js";

const down = () => errors.unavailable("UNAVAILABLE", "no router");

describe("RetryLater", () => {
  beforeEach(() => {
    vi.useFakeTimers();
    drops.length = 0;
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  /** A call that fails `failures` times (UNAVAILABLE), then succeeds; counts its attempts. */
  function flaky(failures: number, log: string[] = [], name = "call") {
    let attempts = 0;
    return {
      run: async () => {
        attempts++;
        log.push(`${name}#${attempts}`);
        if (attempts <= failures) throw down();
      },
      attempts: () => attempts,
    };
  }
  const drops: Array<[DropReason, number]> = [];
  const dropped = (reason: DropReason, _err: unknown, attempts: number) =>
    void drops.push([reason, attempts]);

  it("calls again after each wait while the call fails retryably, then stops", async () => {
    let retrying = 0;
    const retries = new RetryLater({ delaysMs: [100, 200], waitingMax: 10, retrying: () => retrying++ });
    const call = flaky(2);
    retries.run(call.run, dropped);
    await vi.advanceTimersByTimeAsync(0);
    expect(call.attempts()).toBe(1);
    expect(retrying).toBe(1);
    await vi.advanceTimersByTimeAsync(99);
    expect(call.attempts()).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(call.attempts()).toBe(2);
    await vi.advanceTimersByTimeAsync(200);
    expect(call.attempts()).toBe(3);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(call.attempts()).toBe(3);
    expect(retrying).toBe(2);
    expect(drops).toEqual([]);
    expect(retries.size).toBe(0);
  });

  it("gives up after the last wait, and at once on a failure another attempt would repeat", async () => {
    const retries = new RetryLater({ delaysMs: [100], waitingMax: 10 });
    retries.run(flaky(5).run, dropped);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(drops).toEqual([["failed", 2]]);
    let attempts = 0;
    retries.run(async () => {
      attempts++;
      throw errors.invalid("MISSING_FRAME", "frame is required");
    }, dropped);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(attempts).toBe(1);
    expect(drops).toEqual([
      ["failed", 2],
      ["failed", 1],
    ]);
  });

  it("holds at most waitingMax retries", async () => {
    const retries = new RetryLater({ delaysMs: [100], waitingMax: 2 });
    for (let i = 0; i < 3; i++) retries.run(flaky(1).run, dropped);
    await vi.advanceTimersByTimeAsync(0);
    expect(retries.size).toBe(2);
    expect(drops).toEqual([["retries_full", 1]]);
  });

  it("lets a newer call of a key replace the retries of an older one, so nothing older is told after it", async () => {
    const retries = new RetryLater({ delaysMs: [100, 100], waitingMax: 10 });
    const log: string[] = [];
    retries.run(flaky(1, log, "seq2").run, dropped, "alice/read");
    await vi.advanceTimersByTimeAsync(0);
    // The newer one fails too, while the older one's retry waits: only the newer is tried again.
    retries.run(flaky(1, log, "seq3").run, dropped, "alice/read");
    retries.run(flaky(0, log, "other").run, dropped, "bob/read");
    await vi.advanceTimersByTimeAsync(1_000);
    expect(log).toEqual(["seq2#1", "seq3#1", "other#1", "seq3#2"]);
    expect(drops).toEqual([]);
  });

  it("does not retry an older call that fails after a newer one of its key was made", async () => {
    const retries = new RetryLater({ delaysMs: [100], waitingMax: 10 });
    const log: string[] = [];
    let fail!: (err: unknown) => void;
    retries.run(
      () => {
        log.push("old");
        return new Promise((_, reject) => {
          fail = reject;
        });
      },
      dropped,
      "g:1",
    );
    retries.run(flaky(0, log, "new").run, dropped, "g:1");
    fail(down());
    await vi.advanceTimersByTimeAsync(1_000);
    expect(log).toEqual(["old", "new#1"]);
    expect(drops).toEqual([]);
  });

  it("gives up every waiting retry when closed, and retries nothing after", async () => {
    const retries = new RetryLater({ delaysMs: [100], waitingMax: 10 });
    const waiting = flaky(1);
    retries.run(waiting.run, dropped);
    await vi.advanceTimersByTimeAsync(0);
    retries.close();
    expect(drops).toEqual([["closed", 0]]);
    const later = flaky(1);
    retries.run(later.run, dropped);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(waiting.attempts()).toBe(1);
    expect(later.attempts()).toBe(1);
    expect(drops).toEqual([
      ["closed", 0],
      ["closed", 1],
    ]);
  });
});
