import { describe, expect, it, vi } from "vitest";
import { type Burst, CollapseWindows } from "./collapse-windows.js";

describe("collapse windows", () => {
  it("admits the first, holds the rest, and summarises them when the window closes", () => {
    vi.useFakeTimers({ now: 0 });
    try {
      const summaries: Array<[string, Burst<string>]> = [];
      const windows = new CollapseWindows<string>(1_000, (key, burst) => summaries.push([key, burst]));
      expect(windows.admit("a", "m1", 0)).toBe(true);
      expect(windows.admit("a", "m2", 100)).toBe(false);
      expect(windows.admit("a", "m3", 200)).toBe(false);
      expect(windows.admit("b", "x1", 200)).toBe(true);
      vi.advanceTimersByTime(999);
      expect(summaries).toEqual([["a", { latest: "m3", count: 2 }]]);
      expect(windows.admit("b", "x2", 1_300)).toBe(true); // b's window passed with nothing held
      expect(windows.admit("a", "m4", 1_100)).toBe(false); // the summary opened a new window
    } finally {
      vi.useRealTimers();
    }
  });

  it("never holds with a zero window, and bounds the keys it tracks (evicted holds are summarised)", () => {
    const summaries: string[] = [];
    const none = new CollapseWindows<string>(0, () => summaries.push("x"));
    expect([none.admit("a", "1"), none.admit("a", "2")]).toEqual([true, true]);
    const small = new CollapseWindows<string>(60_000, (key, b) => summaries.push(`${key}:${b.latest}`), 2);
    small.admit("a", "a1");
    small.admit("a", "a2");
    small.admit("b", "b1");
    small.admit("c", "c1"); // evicts a, whose held a2 goes out now
    expect(summaries).toEqual(["a:a2"]);
    small.admit("c", "c2");
    small.flushAll();
    expect(summaries).toEqual(["a:a2", "c:c2"]);
    expect(small.holding).toBe(0);
  });
});
