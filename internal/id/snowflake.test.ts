import { describe, expect, it } from "vitest";
import { HIGH_WATER_LEASE_MS, type HighWaterStore } from "./high-water.js";
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
      { $typeName: "switchboard.id.v1.AllocateIdsRequest", count: 300, received: [] },
      { signal: new AbortController().signal, peer: "test" },
    );
    expect(res.ids).toHaveLength(300);
    const ids = (res.ids ?? []).map((s) => BigInt(s));
    for (let i = 1; i < ids.length; i++) expect(ids[i]! > ids[i - 1]!).toBe(true);
    await expect(
      svc.allocateIds(
        { $typeName: "switchboard.id.v1.AllocateIdsRequest", count: 0, received: [] },
        { signal: new AbortController().signal, peer: "test" },
      ),
    ).rejects.toMatchObject({ reason: "COUNT_OUT_OF_RANGE" });
  });
});

describe("IdService across restarts (the ids its callers received)", () => {
  /** The ids `svc` mints for a caller that received `received` before. */
  const ask = async (svc: ReturnType<typeof createIdService>, count: number, received: string[] = []) =>
    (
      await svc.allocateIds(
        { $typeName: "switchboard.id.v1.AllocateIdsRequest", count, received },
        { signal: new AbortController().signal, peer: "test" },
      )
    ).ids ?? [];

  it("mints above the highest id a caller received from this worker, whatever its clock says", async () => {
    let clock = EPOCH_MS + 100_000_000;
    const before = createIdService(4, () => clock);
    const given = new Set<string>();
    for (let i = 0; i < 2_000; i++) {
      for (const id of await ask(before, 1)) given.add(id);
      clock += 1; // two seconds of ids
    }
    const highest = [...given].at(-1)!;
    // Restarted on a node whose clock is 2 s behind (no store: role id).
    clock -= 2_000;
    const start = clock;
    const after = createIdService(4, () => clock);
    const other = createIdService(9, () => clock + 60_000); // another worker's ids are ignored
    const foreign = (await ask(other, 1))[0]!;
    let repeated = 0;
    for (let i = 0; i < 2_000; i++) {
      const [id] = await ask(after, 1, [foreign, highest]);
      if (given.has(id!)) repeated++;
      expect(BigInt(id!) > BigInt(highest)).toBe(true);
      expect(decodeSnowflake(id!).workerId).toBe(4);
      clock += 1;
    }
    expect(repeated).toBe(0);
    // Without what the caller received, the same restart mints the first run's ids again.
    clock = start;
    const forgetful = createIdService(4, () => clock);
    let again = 0;
    for (let i = 0; i < 2_000; i++) {
      if (given.has((await ask(forgetful, 1))[0]!)) again++;
      clock += 1;
    }
    expect(again).toBeGreaterThan(1_000);
  });

  it("refuses to mint, CLOCK_BEHIND, while its clock is more than 5 s behind such an id, and for good at no bad id", async () => {
    let clock = EPOCH_MS + 100_000_000;
    const first = (
      await ask(
        createIdService(2, () => clock),
        1,
      )
    )[0]!;
    clock -= 60_000; // a clock stepped back a minute
    const after = createIdService(2, () => clock);
    await expect(ask(after, 1, [first])).rejects.toMatchObject({ reason: "CLOCK_BEHIND" });
    // A caller that knows nothing of the first run still gets ids: the bad floor was not taken.
    expect(await ask(after, 1)).toHaveLength(1);
    clock += 60_000; // caught up
    const now = (await ask(after, 1, [first]))[0]!;
    expect(BigInt(now) > BigInt(first)).toBe(true);
    // One id per worker at most.
    await expect(
      ask(
        after,
        1,
        Array.from({ length: 1_025 }, () => first),
      ),
    ).rejects.toMatchObject({
      reason: "COUNT_OUT_OF_RANGE",
    });
  });
});

describe("Snowflake.mintAbove", () => {
  it("never takes a generator below its floor (a persisted mark), nor below what it minted", () => {
    const floorMs = EPOCH_MS + 100_000;
    const gen = new Snowflake({ workerId: 6, now: () => floorMs - 2_000, floorMs });
    const older = new Snowflake({ workerId: 6, now: () => floorMs - 1_000 }).nextBigInt();
    gen.mintAbove(older);
    expect(decodeSnowflake(gen.nextBigInt()).ms).toBe(floorMs);
    const last = gen.nextBigInt();
    gen.mintAbove(last - 1n);
    expect(gen.nextBigInt()).toBe(last + 1n);
  });
});

describe("IdService across restarts (high-water mark)", () => {
  const call = (count: number) =>
    [
      { $typeName: "switchboard.id.v1.AllocateIdsRequest", count, received: [] as string[] } as const,
      { signal: new AbortController().signal, peer: "test" },
    ] as const;
  /** A store that keeps the mark in memory (it outlives the services, as a disk would), counting writes. */
  function memoryStore() {
    const state = { mark: undefined as number | undefined, writes: 0, fail: false };
    const store: HighWaterStore = {
      load: () => state.mark,
      store: async (untilMs) => {
        await new Promise((r) => setTimeout(r, 1));
        if (state.fail) throw new Error("disk full");
        state.writes++;
        state.mark = untilMs;
      },
    };
    return { state, store };
  }

  it("reissues no id after the clock stepped back and the process restarted", async () => {
    let clock = EPOCH_MS + 100_000_000;
    const { store } = memoryStore();
    const before = createIdService(0, () => clock, store);
    const seen = new Set<string>();
    for (let i = 0; i < 1_000; i++) {
      for (const id of (await before.allocateIds(...call(1))).ids ?? []) seen.add(id);
      clock += 1; // a second of ids
    }
    clock -= 3_000; // NTP steps the clock back three seconds
    for (const id of (await before.allocateIds(...call(10))).ids ?? []) seen.add(id); // absorbed: its own clock
    // kill -9 and restart with the same worker id: a new generator, the mark from the store.
    const after = createIdService(0, () => clock, store);
    let duplicates = 0;
    for (let i = 0; i < 3_000; i++) {
      for (const id of (await after.allocateIds(...call(1))).ids ?? []) if (seen.has(id)) duplicates++;
      clock += 1;
    }
    expect(duplicates).toBe(0);
    // Without the mark the same restart reissues a thousand ids (the defect this guards against).
    clock -= 3_000;
    const forgetful = createIdService(0, () => clock);
    let again = 0;
    for (let i = 0; i < 3_000; i++) {
      for (const id of (await forgetful.allocateIds(...call(1))).ids ?? []) if (seen.has(id)) again++;
      clock += 1;
    }
    expect(again).toBeGreaterThan(0);
  });

  it("writes the mark ahead, about twice per lease while ids are issued, not per id or per call", async () => {
    let clock = EPOCH_MS + 100_000_000;
    const { state, store } = memoryStore();
    const svc = createIdService(1, () => clock, store);
    for (let ms = 0; ms < 10 * HIGH_WATER_LEASE_MS; ms += 10) {
      const { ids = [] } = await svc.allocateIds(...call(5));
      for (const id of ids) expect(decodeSnowflake(id).ms).toBeLessThan(state.mark!);
      clock += 10;
    }
    // 2,000 calls over ten leases: a write about every half lease.
    expect(state.writes).toBeGreaterThanOrEqual(10);
    expect(state.writes).toBeLessThanOrEqual(25);
  });

  it("hands out no ids it could not cover with a stored mark", async () => {
    let clock = EPOCH_MS + 100_000_000;
    const { state, store } = memoryStore();
    const svc = createIdService(2, () => clock, store);
    const first = await svc.allocateIds(...call(1));
    state.fail = true;
    clock += 10 * HIGH_WATER_LEASE_MS;
    await expect(svc.allocateIds(...call(1))).rejects.toThrow("disk full");
    state.fail = false;
    const next = await svc.allocateIds(...call(1));
    expect(BigInt(next.ids![0]!) > BigInt(first.ids![0]!)).toBe(true);
  });

  it("starts at the stored mark when the wall clock is behind it", () => {
    const floor = EPOCH_MS + 50_000;
    const gen = new Snowflake({ workerId: 4, now: () => floor - 2_000, floorMs: floor });
    expect(decodeSnowflake(gen.next())).toEqual({ ms: floor, workerId: 4, sequence: 0 });
    expect(decodeSnowflake(gen.next())).toEqual({ ms: floor, workerId: 4, sequence: 1 });
    const late = new Snowflake({ workerId: 4, now: () => floor + 7, floorMs: floor });
    expect(decodeSnowflake(late.next()).ms).toBe(floor + 7);
  });
});
