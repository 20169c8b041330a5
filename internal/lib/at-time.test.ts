import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { atTime, TIMER_MS_MAX } from "./at-time.js";

const DAY_MS = 86_400_000;

describe("atTime", () => {
  beforeEach(() => {
    vi.useFakeTimers({ now: 1_800_000_000_000 });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("fires at a time past setTimeout's longest delay, not at that delay", () => {
    const fired = vi.fn();
    const at = Date.now() + 30 * DAY_MS;
    atTime(at, fired);
    vi.advanceTimersByTime(TIMER_MS_MAX + 1);
    vi.advanceTimersByTime(5 * DAY_MS - 2);
    expect(fired).not.toHaveBeenCalled();
    expect(Date.now()).toBeLessThan(at);
    vi.advanceTimersByTime(DAY_MS);
    expect(fired).toHaveBeenCalledTimes(1);
  });

  it("fires once, at a near time, and asynchronously for a time already past", () => {
    const near = vi.fn();
    atTime(Date.now() + 1_000, near);
    vi.advanceTimersByTime(999);
    expect(near).not.toHaveBeenCalled();
    vi.advanceTimersByTime(1);
    expect(near).toHaveBeenCalledTimes(1);
    const past = vi.fn();
    atTime(Date.now() - 1_000, past);
    expect(past).not.toHaveBeenCalled();
    vi.advanceTimersByTime(0);
    expect(past).toHaveBeenCalledTimes(1);
    vi.advanceTimersByTime(10 * DAY_MS);
    expect(near).toHaveBeenCalledTimes(1);
    expect(past).toHaveBeenCalledTimes(1);
  });

  it("never fires once cleared, also after re-arming past the longest delay", () => {
    const fired = vi.fn();
    const timer = atTime(Date.now() + 60 * DAY_MS, fired);
    vi.advanceTimersByTime(TIMER_MS_MAX + 10);
    timer.clear();
    vi.advanceTimersByTime(60 * DAY_MS);
    expect(fired).not.toHaveBeenCalled();
  });
});
