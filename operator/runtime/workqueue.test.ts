/** WorkQueue semantics (client-go's): unit tests on fake timers, so delays are exact and runs instant. */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { Logger } from "../../internal/lib/log.js";
import { createOperatorRuntimeMetrics } from "./metrics.js";
import { type ReconcileResult, WorkQueue, type WorkQueueOptions } from "./workqueue.js";

const logged: Array<{ msg: string; fields: Record<string, unknown> | undefined }> = [];
const log: Logger = {
  debug() {},
  info() {},
  warn: (msg, fields) => void logged.push({ msg, fields }),
  error: (msg, fields) => void logged.push({ msg, fields }),
  child: () => log,
};
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const advance = (ms: number) => vi.advanceTimersByTimeAsync(ms);

let queues: WorkQueue[] = [];
const make = (o: Partial<WorkQueueOptions> = {}) => {
  const q = new WorkQueue({ name: "test", ...o });
  queues.push(q);
  return q;
};

beforeEach(() => {
  vi.useFakeTimers();
  logged.length = 0;
});
afterEach(async () => {
  const stopping = Promise.all(queues.map((q) => q.shutDown()));
  await vi.runAllTimersAsync();
  await stopping;
  queues = [];
  vi.useRealTimers();
});

describe("WorkQueue", () => {
  it("does not add a key that is already waiting", async () => {
    const metrics = createOperatorRuntimeMetrics();
    const q = make({ metrics });
    q.add("a");
    q.add("a");
    q.add("b");
    q.add("a");
    expect(q.length).toBe(2);
    expect((await metrics.queueAddsTotal.get()).values[0]?.value).toBe(2);
    const seen: string[] = [];
    void q.run(1, async (k) => void seen.push(k), log);
    await advance(10);
    expect(seen).toEqual(["a", "b"]);
    expect(q.length).toBe(0);
  });

  it("never processes one key concurrently; a key added while processed runs once more, after", async () => {
    const q = make();
    const inFlight = new Map<string, number>();
    let maxPerKey = 0;
    const runs: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    void q.run(
      4,
      async (k) => {
        const n = (inFlight.get(k) ?? 0) + 1;
        inFlight.set(k, n);
        maxPerKey = Math.max(maxPerKey, n);
        runs.push(k);
        if (runs.length === 1) await gate;
        else await sleep(5);
        inFlight.set(k, n - 1);
      },
      log,
    );
    q.add("k");
    await advance(1);
    expect(runs).toEqual(["k"]);
    q.add("k"); // while processing: marked dirty, not handed to a free worker
    q.add("k"); // merged with the dirty one
    expect(q.length).toBe(0);
    await advance(50);
    expect(runs).toEqual(["k"]);
    release();
    await advance(50);
    expect(runs).toEqual(["k", "k"]);
    expect(maxPerKey).toBe(1);
    // Many adds racing many workers: still one at a time per key.
    for (let i = 0; i < 20; i++) {
      q.add("k");
      q.add(`other-${i % 3}`);
      await advance(2);
    }
    await advance(100);
    expect(maxPerKey).toBe(1);
  });

  it("processes distinct keys in parallel, up to the worker count", async () => {
    const q = make();
    let inFlight = 0;
    let maxInFlight = 0;
    const done: string[] = [];
    void q.run(
      3,
      async (k) => {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        await sleep(30);
        inFlight--;
        done.push(k);
      },
      log,
    );
    for (const k of ["a", "b", "c", "d", "e"]) q.add(k);
    await advance(31);
    expect(done.sort()).toEqual(["a", "b", "c"]);
    expect(maxInFlight).toBe(3);
    await advance(30);
    expect(done.sort()).toEqual(["a", "b", "c", "d", "e"]);
    expect(maxInFlight).toBe(3);
  });

  it("retries a throwing handler with growing delays, logs the key, and forget resets the backoff", async () => {
    const metrics = createOperatorRuntimeMetrics();
    const q = make({ baseDelayMs: 10, maxDelayMs: 50, metrics });
    const at: number[] = [];
    let failUntil = 5;
    const t0 = Date.now();
    void q.run(
      1,
      async () => {
        at.push(Date.now() - t0);
        if (at.length <= failUntil) throw new Error("boom");
      },
      log,
    );
    q.add("k");
    await advance(1_000);
    // 10, 20, 40, then capped at 50 ms; the sixth run succeeds.
    expect(at).toEqual([0, 10, 30, 70, 120, 170]);
    expect(q.retries("k")).toBe(0); // the success forgot the failures
    expect((await metrics.reconcileErrorsTotal.get()).values[0]?.value).toBe(5);
    expect((await metrics.queueRetriesTotal.get()).values[0]?.value).toBe(5);
    const durations = await metrics.reconcileDurationSeconds.get();
    const count = (result: string) =>
      durations.values.find(
        (v) =>
          v.metricName?.endsWith("_count") && v.labels.result === result && v.labels.controller === "test",
      )?.value;
    expect(count("error")).toBe(5);
    expect(count("success")).toBe(1);
    expect(logged[0]?.fields).toMatchObject({ key: "k", retries: 1 });
    expect(logged[0]?.fields?.err).toMatchObject({ message: "boom" });

    // Failing again starts from the base delay, not from where it stopped.
    failUntil = 3;
    at.length = 0;
    const t1 = Date.now();
    q.add("k");
    await advance(1_000);
    expect(at.map((t) => t - (t1 - t0))).toEqual([0, 10, 30, 70]);
  });

  it("forget resets a failing key's backoff", async () => {
    const q = make({ baseDelayMs: 10, maxDelayMs: 10_000 });
    const at: number[] = [];
    const t0 = Date.now();
    void q.run(
      1,
      async () => {
        at.push(Date.now() - t0);
        throw new Error("always");
      },
      log,
    );
    q.add("f");
    await advance(35);
    expect(at).toEqual([0, 10, 30]); // next at 70 (40 ms backoff), then 150 (80 ms)
    expect(q.retries("f")).toBe(3);
    q.forget("f");
    expect(q.retries("f")).toBe(0);
    await advance(50);
    // The retry already scheduled stays; the failure after it backs off from the base again.
    expect(at).toEqual([0, 10, 30, 70, 80]);
  });

  it("delays retries by the overall token bucket when many keys fail", async () => {
    const q = make({ baseDelayMs: 1, maxDelayMs: 1, qps: 10, burst: 2 });
    const at: number[] = [];
    const t0 = Date.now();
    void q.run(
      4,
      async () => {
        at.push(Date.now() - t0);
        throw new Error("always");
      },
      log,
    );
    for (const k of ["a", "b", "c", "d"]) q.add(k);
    await advance(1_000);
    // 4 first runs at once; the first 2 retries come from the burst (after the 1 ms backoff); after
    // that the bucket allows one retry per 100 ms whatever the keys' own backoff.
    expect(at.slice(0, 6)).toEqual([0, 0, 0, 0, 1, 1]);
    const later = at.slice(6);
    expect(later.length).toBeGreaterThanOrEqual(9);
    expect(later.length).toBeLessThanOrEqual(10);
    for (let i = 1; i < later.length; i++)
      expect((later[i] as number) - (later[i - 1] as number)).toBeGreaterThanOrEqual(99);
  });

  it("requeues after the delay a handler returns, and forgets the key's failures", async () => {
    const q = make({ baseDelayMs: 10 });
    const at: number[] = [];
    const t0 = Date.now();
    void q.run(
      1,
      async (): Promise<ReconcileResult> => {
        at.push(Date.now() - t0);
        if (at.length === 1) throw new Error("first fails");
        return at.length === 2 ? { requeueAfterMs: 50 } : undefined;
      },
      log,
    );
    q.add("k");
    await advance(15);
    expect(at).toEqual([0, 10]);
    expect(q.retries("k")).toBe(0);
    await advance(100);
    expect(at).toEqual([0, 10, 60]);
  });

  it("shutDown waits for the handler in flight, drops waiting and delayed keys, and refuses new ones", async () => {
    const q = make();
    let finished = false;
    const runs: string[] = [];
    const running = q.run(
      1,
      async (k) => {
        runs.push(k);
        await sleep(50);
        finished = true;
      },
      log,
    );
    q.add("a");
    q.add("c"); // waiting behind "a" on the single worker
    q.addAfter("b", 30);
    await advance(5);
    let stopped = false;
    const stopping = q.shutDown().then(() => {
      stopped = true;
    });
    await advance(20);
    expect(stopped).toBe(false); // "a" is still running
    await advance(40);
    await stopping;
    expect(finished).toBe(true);
    await running;
    q.add("d");
    q.addAfter("e", 1);
    await advance(100);
    expect(runs).toEqual(["a"]);
    expect(q.length).toBe(0);
  });

  it("reports its depth", async () => {
    const metrics = createOperatorRuntimeMetrics();
    const q = make({ name: "depth", metrics });
    const depth = async () =>
      (await metrics.queueDepth.get()).values.find((v) => v.labels.queue === "depth")?.value;
    q.add("a");
    q.add("b");
    q.addAfter("c", 100);
    expect(await depth()).toBe(2);
    void q.run(1, async () => sleep(10), log);
    await advance(1);
    expect(await depth()).toBe(1);
    await advance(50);
    expect(await depth()).toBe(0);
    await advance(100);
    await advance(20);
    expect(await depth()).toBe(0);
  });
});
