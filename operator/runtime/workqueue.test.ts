import { afterEach, describe, expect, it } from "vitest";
import type { Logger } from "../../internal/lib/log.js";
import { createOperatorRuntimeMetrics } from "./metrics.js";
import { WorkQueue } from "./workqueue.js";

const log: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => log };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
let queues: WorkQueue[] = [];
afterEach(async () => {
  await Promise.all(queues.map((q) => q.shutDown()));
  queues = [];
});
const make = (o: Partial<ConstructorParameters<typeof WorkQueue>[0]> = {}) => {
  const q = new WorkQueue({ name: "test", ...o });
  queues.push(q);
  return q;
};

describe("WorkQueue", () => {
  it("dedupes a key that is waiting", async () => {
    const q = make();
    q.add("a");
    q.add("a");
    q.add("b");
    expect(q.length).toBe(2);
    const seen: string[] = [];
    void q.run(1, async (k) => void seen.push(k), log);
    await sleep(20);
    expect(seen).toEqual(["a", "b"]);
  });

  it("never processes one key concurrently, and re-runs a key added while it was processed", async () => {
    const q = make();
    let inFlight = 0;
    let maxInFlight = 0;
    let runs = 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    void q.run(
      4,
      async () => {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        runs++;
        if (runs === 1) await gate;
        inFlight--;
        return undefined;
      },
      log,
    );
    q.add("k");
    await sleep(10);
    q.add("k"); // while processing: marked dirty, not started
    q.add("k"); // deduped with the dirty one
    await sleep(10);
    expect(runs).toBe(1);
    release();
    await sleep(20);
    expect(runs).toBe(2);
    expect(maxInFlight).toBe(1);
  });

  it("processes distinct keys in parallel up to the worker count", async () => {
    const q = make();
    let inFlight = 0;
    let maxInFlight = 0;
    void q.run(
      3,
      async () => {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        await sleep(30);
        inFlight--;
        return undefined;
      },
      log,
    );
    for (const k of ["a", "b", "c", "d", "e"]) q.add(k);
    await sleep(100);
    expect(maxInFlight).toBe(3);
  });

  it("retries a failing key with growing delays, and forgets the failures after a success", async () => {
    const metrics = createOperatorRuntimeMetrics();
    const q = make({ baseDelayMs: 20, maxDelayMs: 1000, metrics });
    const at: number[] = [];
    void q.run(
      1,
      async () => {
        at.push(Date.now());
        if (at.length <= 3) throw new Error("boom");
        return undefined;
      },
      log,
    );
    q.add("k");
    await sleep(400);
    expect(at).toHaveLength(4);
    const gaps = at.slice(1).map((t, i) => t - (at[i] as number));
    // 20, 40, 80 ms (timers may run late, never early).
    expect(gaps[0]).toBeGreaterThanOrEqual(19);
    expect(gaps[1]).toBeGreaterThanOrEqual(39);
    expect(gaps[2]).toBeGreaterThanOrEqual(79);
    expect(q.retries("k")).toBe(0);
    const errors = await metrics.reconcileErrorsTotal.get();
    expect(errors.values[0]?.value).toBe(3);
  });

  it("applies the overall rate limit to retries of many keys", async () => {
    const q = make({ baseDelayMs: 1, qps: 10, burst: 2 });
    const at: number[] = [];
    const start = Date.now();
    void q.run(
      4,
      async () => {
        at.push(Date.now() - start);
        throw new Error("always");
      },
      log,
    );
    for (const k of ["a", "b", "c", "d"]) q.add(k);
    await sleep(350);
    // 4 first runs, then retries: 2 from the burst at once, the rest at 10/s.
    expect(at.length).toBeGreaterThanOrEqual(6);
    expect(at.length).toBeLessThanOrEqual(9);
  });

  it("requeues after the delay a handler asks for", async () => {
    const q = make();
    const at: number[] = [];
    void q.run(
      1,
      async () => {
        at.push(Date.now());
        return at.length < 2 ? { requeueAfterMs: 50 } : undefined;
      },
      log,
    );
    q.add("k");
    await sleep(120);
    expect(at).toHaveLength(2);
    expect((at[1] as number) - (at[0] as number)).toBeGreaterThanOrEqual(49);
  });

  it("shutDown waits for the handler in flight and drops delayed keys", async () => {
    const q = make();
    let finished = false;
    const runs: string[] = [];
    const running = q.run(
      1,
      async (k) => {
        runs.push(k);
        await sleep(50);
        finished = true;
        return undefined;
      },
      log,
    );
    q.add("a");
    q.addAfter("b", 30);
    await sleep(5);
    await q.shutDown();
    expect(finished).toBe(true);
    await running;
    await sleep(60);
    expect(runs).toEqual(["a"]);
  });

  it("reports its depth", async () => {
    const metrics = createOperatorRuntimeMetrics();
    const q = make({ metrics });
    q.add("a");
    q.add("b");
    expect((await metrics.queueDepth.get()).values[0]?.value).toBe(2);
  });
});
