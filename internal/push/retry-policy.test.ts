import { describe, expect, it } from "vitest";
import { DEFAULT_RETRY_POLICY, nextRetry } from "./retry-policy.js";

describe("push retry policy", () => {
  it("backs off exponentially with equal jitter, capped", () => {
    const low = (attempt: number) => nextRetry(DEFAULT_RETRY_POLICY, attempt, undefined, () => 0);
    const high = (attempt: number) => nextRetry(DEFAULT_RETRY_POLICY, attempt, undefined, () => 1);
    expect([1, 2, 3, 4].map((a) => low(a))).toEqual([
      { retry: true, delayMs: 250 },
      { retry: true, delayMs: 500 },
      { retry: true, delayMs: 1000 },
      { retry: true, delayMs: 2000 },
    ]);
    expect(high(4)).toEqual({ retry: true, delayMs: 4000 });
    const many = { ...DEFAULT_RETRY_POLICY, attemptsMax: 100 };
    expect(nextRetry(many, 20, undefined, () => 1)).toEqual({ retry: true, delayMs: 30_000 });
  });

  it("honours Retry-After exactly, and gives up past the cap or the attempt limit", () => {
    expect(nextRetry(DEFAULT_RETRY_POLICY, 1, 7_000)).toEqual({ retry: true, delayMs: 7_000 });
    expect(nextRetry(DEFAULT_RETRY_POLICY, 1, 0)).toEqual({ retry: true, delayMs: 0 });
    expect(nextRetry(DEFAULT_RETRY_POLICY, 1, 3_600_000)).toMatchObject({ retry: false });
    expect(nextRetry(DEFAULT_RETRY_POLICY, 5, 1_000)).toEqual({
      retry: false,
      why: "gave up after 5 attempts",
    });
  });
});
