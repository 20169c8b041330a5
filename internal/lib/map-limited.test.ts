import { describe, expect, it } from "vitest";
import { mapLimited } from "./map-limited.js";

/** Work that waits for nothing: the CPU is busy for `ms`. */
function busy(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until);
}

describe("mapLimited", () => {
  it("calls fn at most `limit` at once and returns the results in the items' order", async () => {
    let running = 0;
    let most = 0;
    const out = await mapLimited([5, 1, 4, 2, 3], 2, async (n) => {
      most = Math.max(most, ++running);
      await new Promise((r) => setTimeout(r, n));
      running--;
      return n * 10;
    });
    expect(out).toEqual([50, 10, 40, 20, 30]);
    expect(most).toBe(2);
  });

  it("gives the event loop back during a long run of calls that wait for nothing, and calls each item once", async () => {
    const calls: number[] = [];
    let doneWhenTimerRan: number | undefined;
    setTimeout(() => {
      doneWhenTimerRan = calls.length;
    }, 0);
    // 200 calls of 0.5 ms: 100 ms in all, each resolving at once (a store answering from memory).
    const out = await mapLimited(
      Array.from({ length: 200 }, (_, i) => i),
      16,
      async (i) => {
        calls.push(i);
        busy(0.5);
        return i;
      },
    );
    expect(out).toEqual(Array.from({ length: 200 }, (_, i) => i));
    expect([...calls].sort((a, b) => a - b)).toEqual(out);
    // The timer ran while the map was under way, not after it.
    expect(doneWhenTimerRan).toBeGreaterThan(0);
    expect(doneWhenTimerRan).toBeLessThan(200);
  });

  it("begins no further call once the signal aborts, and rejects with its reason", async () => {
    const controller = new AbortController();
    const calls: number[] = [];
    const run = mapLimited(
      [1, 2, 3, 4],
      1,
      async (n) => {
        calls.push(n);
        if (n === 2) controller.abort(new Error("stop"));
        return n;
      },
      controller.signal,
    );
    await expect(run).rejects.toThrow("stop");
    expect(calls).toEqual([1, 2]);
  });
});
