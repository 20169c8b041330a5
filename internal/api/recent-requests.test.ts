import { describe, expect, it } from "vitest";
import { RecentRequests } from "./recent-requests.js";

describe("RecentRequests", () => {
  it("answers a retry with the first attempt's result, per caller, also while that attempt runs", async () => {
    const recent = new RecentRequests<string>();
    let made = 0;
    let finish!: () => void;
    const create = () =>
      new Promise<string>((resolve) => {
        made++;
        finish = () => resolve(`group-${made}`);
      });
    const first = recent.run("client:a", "k1", "req", create);
    const concurrent = recent.run("client:a", "k1", "req", create);
    finish();
    expect(await first).toEqual({ value: "group-1", duplicate: false });
    expect(await concurrent).toEqual({ value: "group-1", duplicate: true });
    expect(await recent.run("client:a", "k1", "req", create)).toEqual({ value: "group-1", duplicate: true });
    // Another caller's key is its own.
    const other = recent.run("client:b", "k1", "req", create);
    finish();
    expect(await other).toEqual({ value: "group-2", duplicate: false });
    // No key: nothing is remembered.
    const unkeyed = recent.run("client:a", "", "req", create);
    finish();
    expect(await unkeyed).toEqual({ value: "group-3", duplicate: false });
    expect(made).toBe(3);
  });

  it("refuses a key used for another request, and malformed keys", async () => {
    const recent = new RecentRequests<string>();
    await recent.run("client:a", "k1", "name=a", async () => "g1");
    await expect(recent.run("client:a", "k1", "name=b", async () => "g2")).rejects.toMatchObject({
      reason: "IDEMPOTENCY_KEY_REUSED",
    });
    await expect(recent.run("client:a", "a b", "x", async () => "g3")).rejects.toMatchObject({
      reason: "INVALID_IDEMPOTENCY_KEY",
    });
    await expect(recent.run("client:a", "k".repeat(65), "x", async () => "g3")).rejects.toMatchObject({
      reason: "INVALID_IDEMPOTENCY_KEY",
    });
  });

  it("forgets an attempt whose result it did not make, so that no request is refused as another one", async () => {
    // After a restart the store finds the group an unknown earlier request made: neither this request
    // nor a later one with the same key is the key's reference.
    const recent = new RecentRequests<{ id: string; created: boolean }>();
    const found = async () => ({ id: "g1", created: false });
    const made = (r: { created: boolean }) => r.created;
    expect(await recent.run("client:a", "k1", "name=b", found, made)).toEqual({
      value: { id: "g1", created: false },
      duplicate: false,
    });
    expect(recent.size).toBe(0);
    expect((await recent.run("client:a", "k1", "name=a", found, made)).value.id).toBe("g1");
    // What this process made is remembered as before.
    await recent.run("client:a", "k2", "name=a", async () => ({ id: "g2", created: true }), made);
    await expect(recent.run("client:a", "k2", "name=b", found, made)).rejects.toMatchObject({
      reason: "IDEMPOTENCY_KEY_REUSED",
    });
  });

  it("forgets a failed attempt, so that its retry tries again", async () => {
    const recent = new RecentRequests<string>();
    await expect(
      recent.run("client:a", "k1", "req", async () => {
        throw new Error("storage failed");
      }),
    ).rejects.toThrow("storage failed");
    expect(await recent.run("client:a", "k1", "req", async () => "g1")).toEqual({
      value: "g1",
      duplicate: false,
    });
  });

  it("remembers keys for a bounded time and count", async () => {
    let now = 0;
    const recent = new RecentRequests<string>(1_000, 3, () => now);
    for (const k of ["k1", "k2", "k3", "k4"]) await recent.run("client:a", k, "req", async () => `g-${k}`);
    expect(recent.size).toBe(3);
    // k1 was the oldest: forgotten for k4.
    expect((await recent.run("client:a", "k1", "req", async () => "again")).duplicate).toBe(false);
    expect((await recent.run("client:a", "k3", "req", async () => "again")).duplicate).toBe(true);
    now = 1_000;
    expect((await recent.run("client:a", "k4", "req", async () => "later")).value).toBe("later");
    expect(recent.size).toBe(1);
  });
});
