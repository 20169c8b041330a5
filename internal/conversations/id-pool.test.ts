import { describe, expect, it } from "vitest";
import type { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { createIdService, decodeSnowflake, EPOCH_MS } from "../id/index.js";
import type { ServiceClient } from "../lib/rpc.js";
import { IdPool } from "./id-pool.js";

describe("IdPool", () => {
  it("names the highest id it received from each worker in every refill", async () => {
    let clock = EPOCH_MS + 100_000_000;
    // Two id workers behind one address, answering in turn.
    const workers = [createIdService(1, () => clock), createIdService(2, () => clock)];
    const asked: string[][] = [];
    const answered: string[] = [];
    let turn = 0;
    const client = {
      allocateIds: async (req: { count: number; received: string[] }) => {
        asked.push([...req.received]);
        const res = await workers[turn++ % 2]!.allocateIds(
          { $typeName: "switchboard.id.v1.AllocateIdsRequest", ...req },
          { signal: new AbortController().signal, peer: "test" },
        );
        answered.push(...(res.ids ?? []));
        return res;
      },
    } as unknown as ServiceClient<typeof IdService>;
    const pool = new IdPool(client, 4);
    for (let i = 0; i < 12; i++) {
      await pool.next();
      clock += 1;
    }
    expect(asked.length).toBeGreaterThanOrEqual(3);
    expect(asked[0]).toEqual([]);
    // From the third refill on each worker has answered: its highest id so far is named.
    // A worker's ids rise from answer to answer: its highest so far is its last.
    const highest = (worker: number, ids: string[]) =>
      BigInt(ids.filter((id) => decodeSnowflake(id).workerId === worker).at(-1)!);
    const third = asked[2]!;
    const before = answered.slice(0, 8); // what the first two refills (4 ids each) brought
    expect(third.map(BigInt).sort()).toEqual([highest(1, before), highest(2, before)].sort());
  });

  it("does not ask again within a second of a failed refill, and fails a send only when the stock is out", async () => {
    let clock = EPOCH_MS + 100_000_000;
    let calls = 0;
    let failing = false;
    const worker = createIdService(3, () => clock);
    const client = {
      allocateIds: async (req: { count: number; received: string[] }) => {
        calls++;
        if (failing) throw new Error("id service down");
        return worker.allocateIds(
          { $typeName: "switchboard.id.v1.AllocateIdsRequest", ...req },
          { signal: new AbortController().signal, peer: "test" },
        );
      },
    } as unknown as ServiceClient<typeof IdService>;
    const pool = new IdPool(client, 8, { reserveMs: 0, now: () => clock });
    await pool.next(); // the first fill: 8 ids, one taken
    expect(calls).toBe(1);
    failing = true;
    for (let i = 0; i < 6; i++) await pool.next(); // below a quarter: one refill ahead of need, which fails
    await new Promise((r) => setTimeout(r, 10));
    expect(calls).toBe(2);
    await pool.next(); // the last id: no second refill ahead of need within a second
    await new Promise((r) => setTimeout(r, 10));
    expect(calls).toBe(2);
    // Out of stock within a second of the failure: refused with it at once, without asking again.
    await expect(pool.next()).rejects.toThrow(/id service down/);
    expect(calls).toBe(2);
    clock += 1_000;
    await expect(pool.next()).rejects.toThrow(/id service down/); // a second on: asked, and refused
    expect(calls).toBe(3);
    failing = false;
    await expect(pool.next()).rejects.toThrow(/id service down/); // within a second of that failure
    clock += 1_000;
    await pool.next(); // back: asked, and served
    expect(calls).toBe(4);
  });

  it("keeps what the last ten seconds took in stock, so an id service down for seconds stalls no send", async () => {
    let clock = EPOCH_MS + 200_000_000;
    let down = false;
    const counts: number[] = [];
    const worker = createIdService(4, () => clock);
    const client = {
      allocateIds: async (req: { count: number; received: string[] }) => {
        if (down) throw new Error("id service down");
        counts.push(req.count);
        return worker.allocateIds(
          { $typeName: "switchboard.id.v1.AllocateIdsRequest", ...req },
          { signal: new AbortController().signal, peer: "test" },
        );
      },
    } as unknown as ServiceClient<typeof IdService>;
    const pool = new IdPool(client, 8, { now: () => clock });
    const seen = new Set<string>();
    /** `perSecond` ids a second for `seconds`, letting background refills land between them. */
    const take = async (perSecond: number, seconds: number) => {
      for (let i = 0; i < perSecond * seconds; i++) {
        seen.add(await pool.next());
        clock += 1000 / perSecond;
        await new Promise((r) => setImmediate(r));
      }
    };
    await take(0.5, 40);
    // At two seconds apart (five ids in ten seconds), a refill brings batchSize.
    expect(Math.max(...counts)).toBe(8);
    await take(200, 12);
    // Ten seconds at 200 a second: refills of what the last ten seconds took, about 2,000.
    expect(Math.max(...counts)).toBeGreaterThanOrEqual(1_700);
    expect(Math.max(...counts)).toBeLessThanOrEqual(2_010);
    const calls = counts.length;
    down = true;
    await take(200, 8); // 1,600 ids, none asked for: the stock held them
    expect(counts.length).toBe(calls);
    down = false;
    await take(200, 2);
    expect(seen.size).toBe(20 + 200 * 22);

    // An id service in the same process (reserve 0) restarts with it: batchSize per call at any rate.
    counts.length = 0;
    const inProcess = new IdPool(client, 8, { reserveMs: 0, now: () => clock });
    for (let i = 0; i < 400; i++) {
      seen.add(await inProcess.next());
      clock += 5;
      await new Promise((r) => setImmediate(r));
    }
    expect(new Set(counts)).toEqual(new Set([8]));
    expect(seen.size).toBe(20 + 200 * 22 + 400);
  });
});
