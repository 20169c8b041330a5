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

  it("closes a window found past its end before its timer ran: the held burst is summarised, the summary opens the next window", () => {
    vi.useFakeTimers({ now: 0 });
    try {
      const summaries: Array<Burst<string>> = [];
      const windows = new CollapseWindows<string>(10_000, (_key, burst) => summaries.push(burst));
      expect(windows.admit("k", "m1", 0)).toBe(true);
      expect(windows.admit("k", "m2", 5_000)).toBe(false);
      // m3 arrives at the window's end, before its timer has run (the event loop was busy).
      expect(windows.admit("k", "m3", 10_000)).toBe(false);
      expect(summaries).toEqual([{ latest: "m2", count: 1 }]);
      // The first window's timer is due now: it must not close the window m3 is held in.
      vi.advanceTimersByTime(5_000);
      expect(summaries).toHaveLength(1);
      expect(windows.holding).toBe(1);
      // That window ends 10 s after the summary opened it, with m3's summary.
      vi.advanceTimersByTime(5_000);
      expect(summaries).toEqual([
        { latest: "m2", count: 1 },
        { latest: "m3", count: 1 },
      ]);
      expect(windows.holding).toBe(0);
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

  it("forgets windows that ended with nothing held, with or without later notifications", () => {
    vi.useFakeTimers({ now: 0 });
    try {
      const windows = new CollapseWindows<string>(10_000, () => undefined);
      for (let i = 0; i < 1_000; i++) windows.admit(`quiet ${i}`, "m", 0); // each notified once
      windows.admit("busy", "m1", 0);
      windows.admit("busy", "m2", 1_000); // held: its summary is due at 10 s
      expect(windows.size).toBe(1_001);
      // No notification at all after them: the sweep forgets the quiet ones once their window ends.
      vi.advanceTimersByTime(10_000);
      expect(windows.size).toBe(1); // busy's summary opened its next window
      vi.advanceTimersByTime(20_000);
      expect(windows.size).toBe(0);
      // A notification after a quiet spell also sweeps what ended before it.
      windows.admit("x", "m", 30_000);
      windows.admit("y", "m", 45_000);
      expect(windows.size).toBe(1);
    } finally {
      vi.useRealTimers();
    }
  });
});
