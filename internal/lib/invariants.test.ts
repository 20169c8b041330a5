import { describe, expect, it } from "vitest";
import { assert, invariantViolated, onInvariantViolation } from "./errors.js";

describe("invariant violations", () => {
  it("are told to the process's listener (its metric and log) as they are made, and still throw", () => {
    const told: string[] = [];
    const stop = onInvariantViolation((message) => told.push(message));
    expect(() => assert(1 + 1 === 3, "arithmetic holds")).toThrow("invariant violated: arithmetic holds");
    assert(true, "never told");
    const err = invariantViolated("no cursor for alice/g:1/7");
    expect(err.message).toBe("invariant violated: no cursor for alice/g:1/7");
    stop();
    expect(() => assert(false, "after stop")).toThrow();
    expect(told).toEqual(["arithmetic holds", "no cursor for alice/g:1/7"]);
  });
});
