import { describe, expect, it } from "vitest";
import { createIdService } from "./service.js";
import { ClockMovedBackwardsError, decodeSnowflake, EPOCH_MS, Snowflake } from "./snowflake.js";

describe("Snowflake", () => {
  it("mints strictly increasing ids, even past 4,096 per millisecond", () => {
    const now = EPOCH_MS + 1_000;
    const gen = new Snowflake({ workerId: 7, now: () => now });
    let prev = -1n;
    for (let i = 0; i < 10_000; i++) {
      const id = gen.nextBigInt();
      expect(id > prev).toBe(true);
      prev = id;
    }
    // 10,000 ids at a frozen clock borrow two future milliseconds, never more than needed.
    expect(decodeSnowflake(prev).ms).toBe(now + 2);
  });

  it("encodes time, worker and sequence in their bit fields", () => {
    const gen = new Snowflake({ workerId: 1023, now: () => EPOCH_MS + 5 });
    const a = decodeSnowflake(gen.next());
    const b = decodeSnowflake(gen.next());
    expect(a).toEqual({ ms: EPOCH_MS + 5, workerId: 1023, sequence: 0 });
    expect(b).toEqual({ ms: EPOCH_MS + 5, workerId: 1023, sequence: 1 });
  });

  it("never collides across workers at the same instant", () => {
    const now = () => EPOCH_MS + 42;
    const seen = new Set<string>();
    for (let w = 0; w < 64; w++) {
      const gen = new Snowflake({ workerId: w, now });
      for (const id of gen.batch(500)) seen.add(id);
    }
    expect(seen.size).toBe(64 * 500);
  });

  it("keeps increasing through a small backwards clock jump", () => {
    let clock = EPOCH_MS + 10_000;
    const gen = new Snowflake({ workerId: 3, now: () => clock, maxBackwardsMs: 5_000 });
    const before = gen.nextBigInt();
    clock -= 3_000;
    const during = gen.nextBigInt();
    clock += 4_000;
    const after = gen.nextBigInt();
    expect(during > before).toBe(true);
    expect(after > during).toBe(true);
  });

  it("refuses to mint when the clock jumps back further than allowed", () => {
    let clock = EPOCH_MS + 10_000;
    const gen = new Snowflake({ workerId: 3, now: () => clock, maxBackwardsMs: 1_000 });
    gen.next();
    clock -= 5_000;
    expect(() => gen.next()).toThrow(ClockMovedBackwardsError);
  });

  it("rejects worker ids outside 0-1023", () => {
    expect(() => new Snowflake({ workerId: 1024 })).toThrow(RangeError);
    expect(() => new Snowflake({ workerId: -1 })).toThrow(RangeError);
  });
});

describe("IdService", () => {
  it("allocates the requested batch in increasing order and bounds the count", async () => {
    const svc = createIdService(5);
    const res = await svc.allocateIds(
      { $typeName: "switchboard.id.v1.AllocateIdsRequest", count: 300 },
      { signal: new AbortController().signal, peer: "test" },
    );
    expect(res.ids).toHaveLength(300);
    const ids = (res.ids ?? []).map((s) => BigInt(s));
    for (let i = 1; i < ids.length; i++) expect(ids[i]! > ids[i - 1]!).toBe(true);
    await expect(
      svc.allocateIds(
        { $typeName: "switchboard.id.v1.AllocateIdsRequest", count: 0 },
        { signal: new AbortController().signal, peer: "test" },
      ),
    ).rejects.toMatchObject({ reason: "COUNT_OUT_OF_RANGE" });
  });
});
