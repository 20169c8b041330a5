import { describe, expect, it } from "vitest";
import { PendingWrites } from "./pending-writes.js";

function deferred() {
  let resolve!: () => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

describe("PendingWrites", () => {
  it("keeps each key until its own commit settles, whichever of several turns it is in", async () => {
    const pending = new PendingWrites<number>();
    const first = deferred();
    const second = deferred();
    pending.set(first.promise, "a", 1);
    pending.set(first.promise, "b", 2);
    pending.set(second.promise, "c", 3);
    expect([pending.get("a"), pending.get("b"), pending.get("c"), pending.get("d")]).toEqual([
      1,
      2,
      3,
      undefined,
    ]);
    second.resolve();
    await second.promise;
    expect([pending.get("a"), pending.get("c")]).toEqual([1, undefined]);
    expect(pending.size).toBe(2);
    first.resolve();
    await first.promise;
    expect([pending.get("a"), pending.get("b")]).toEqual([undefined, undefined]);
    expect(pending.size).toBe(0);
  });

  it("forgets the keys of a failed commit too, and settled() waits for every commit either way", async () => {
    const pending = new PendingWrites<string>();
    const failing = deferred();
    const slow = deferred();
    pending.set(failing.promise, "x", "1");
    pending.set(slow.promise, "y", "2");
    let settled = false;
    const done = pending.settled().then(() => {
      settled = true;
    });
    failing.reject(new Error("disk full"));
    await failing.promise.catch(() => undefined);
    expect(pending.get("x")).toBeUndefined();
    expect(pending.get("y")).toBe("2");
    await new Promise((r) => setImmediate(r));
    expect(settled).toBe(false);
    slow.resolve();
    await done;
    expect(pending.size).toBe(0);
  });
});
