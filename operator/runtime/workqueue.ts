/**
 * A keyed, rate-limited work queue with client-go's semantics, because reconciles are level-based
 * (the handler reads the world, not the event), so keys can be merged freely:
 * - a key waiting is not added twice (ten events for one object cause one reconcile);
 * - a key is never processed by two workers at once; added while processing, it runs once more after;
 * - a failed key comes back after max(per-key exponential backoff, the overall token bucket's delay),
 *   so one broken object backs off on its own and many cannot hammer the API server together;
 * - a key may ask to come back later (polling, e.g. a drain in progress).
 */
import type { Logger } from "../../internal/lib/log.js";
import type { OperatorRuntimeMetrics } from "./metrics.js";

export interface WorkQueueOptions {
  /** Names the queue in metrics (label queue, and controller for reconciles) and logs. */
  name: string;
  /** First retry delay of a failing key; doubles per failure. Default 5 ms. */
  baseDelayMs?: number;
  /** Longest retry delay of one key. Default 60 s. */
  maxDelayMs?: number;
  /** Overall retry rate of the token bucket shared by all keys. Default 10/s. */
  qps?: number;
  /** Token bucket size. Default 100. */
  burst?: number;
  metrics?: OperatorRuntimeMetrics;
}

// `void`, not `undefined`: a handler written as a plain `async (key) => { ... }` returns Promise<void>,
// which would not be assignable to Promise<undefined | …>.
// biome-ignore lint/suspicious/noConfusingVoidType: handlers that return nothing must type-check as is
export type ReconcileResult = void | { requeueAfterMs: number };

export class WorkQueue {
  /** Keys waiting, in order. */
  private readonly queue: string[] = [];
  /** Keys that need processing: waiting in `queue`, or to be queued again when their processing ends. */
  private readonly dirty = new Set<string>();
  private readonly processing = new Set<string>();
  private readonly delayed = new Map<string, { at: number; timer: NodeJS.Timeout }>();
  private readonly failures = new Map<string, number>();
  /** Idle workers, woken one per key queued. */
  private readonly waiters: Array<() => void> = [];
  private readonly inFlight = new Set<Promise<void>>();
  private stopped = false;
  private tokens: number;
  private tokensAt = Date.now();
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly qps: number;
  private readonly burst: number;

  constructor(private readonly options: WorkQueueOptions) {
    this.baseDelayMs = options.baseDelayMs ?? 5;
    this.maxDelayMs = options.maxDelayMs ?? 60_000;
    this.qps = options.qps ?? 10;
    this.burst = options.burst ?? 100;
    if (!(this.baseDelayMs > 0 && this.maxDelayMs >= this.baseDelayMs && this.qps > 0 && this.burst >= 1))
      throw new Error(
        `work queue ${options.name}: need baseDelayMs > 0, maxDelayMs >= baseDelayMs, qps > 0, burst >= 1`,
      );
    this.tokens = this.burst;
  }

  /** Keys waiting (not delayed, not being processed). */
  get length(): number {
    return this.queue.length;
  }

  add(key: string): void {
    if (this.stopped || this.dirty.has(key)) return;
    this.dirty.add(key);
    this.options.metrics?.queueAddsTotal.inc({ queue: this.options.name });
    // Being processed: `process` queues it again when it finishes (never two workers on one key).
    if (!this.processing.has(key)) this.enqueue(key);
  }

  /** Adds the key after `delayMs`; of two pending delays for one key, the earlier wins. */
  addAfter(key: string, delayMs: number): void {
    if (this.stopped) return;
    if (!(delayMs > 0)) return this.add(key);
    const at = Date.now() + delayMs;
    const pending = this.delayed.get(key);
    if (pending && pending.at <= at) return;
    if (pending) clearTimeout(pending.timer);
    const timer = setTimeout(() => {
      this.delayed.delete(key);
      this.add(key);
    }, delayMs);
    this.delayed.set(key, { at, timer });
  }

  addRateLimited(key: string): void {
    if (this.stopped) return;
    const failures = this.failures.get(key) ?? 0;
    this.failures.set(key, failures + 1);
    // Capping the exponent first keeps 2^n finite for keys that fail for days.
    const backoff = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** Math.min(failures, 40));
    this.options.metrics?.queueRetriesTotal.inc({ queue: this.options.name });
    this.addAfter(key, Math.max(backoff, this.bucketDelay()));
  }

  /** Resets the key's failure count (its next failure backs off from baseDelayMs again). */
  forget(key: string): void {
    this.failures.delete(key);
  }

  /** Failures recorded for the key since it was last forgotten. */
  retries(key: string): number {
    return this.failures.get(key) ?? 0;
  }

  /**
   * Runs `workers` loops until shutDown. A handler that throws → addRateLimited(key), and the error is
   * logged with the key; one returning {requeueAfterMs} → forget + addAfter; otherwise forget.
   */
  async run(workers: number, handler: (key: string) => Promise<ReconcileResult>, log: Logger): Promise<void> {
    if (!(Number.isInteger(workers) && workers >= 1))
      throw new Error(`work queue ${this.options.name}: workers must be a positive integer, got ${workers}`);
    const loop = async () => {
      for (;;) {
        const key = await this.next();
        if (key === undefined) return;
        const done = this.process(key, handler, log);
        this.inFlight.add(done);
        await done;
        this.inFlight.delete(done);
      }
    };
    await Promise.all(Array.from({ length: workers }, loop));
  }

  /** Stops accepting keys, drops waiting and delayed ones, and waits for the handlers in flight. */
  async shutDown(): Promise<void> {
    this.stopped = true;
    for (const { timer } of this.delayed.values()) clearTimeout(timer);
    this.delayed.clear();
    this.queue.length = 0;
    this.dirty.clear();
    this.updateDepth();
    for (const wake of this.waiters.splice(0)) wake();
    await Promise.all([...this.inFlight]);
  }

  private enqueue(key: string): void {
    this.queue.push(key);
    this.updateDepth();
    this.waiters.shift()?.();
  }

  private async next(): Promise<string | undefined> {
    while (!this.stopped && this.queue.length === 0) await new Promise<void>((r) => this.waiters.push(r));
    const key = this.queue.shift();
    if (this.stopped || key === undefined) return undefined;
    this.dirty.delete(key);
    this.processing.add(key);
    this.updateDepth();
    return key;
  }

  /** One handler call; never rejects (a failure is the key's retry, not the worker's end). */
  private async process(
    key: string,
    handler: (key: string) => Promise<ReconcileResult>,
    log: Logger,
  ): Promise<void> {
    const started = performance.now();
    const controller = this.options.name;
    const observe = (result: "success" | "error") =>
      this.options.metrics?.reconcileDurationSeconds.observe(
        { controller, result },
        (performance.now() - started) / 1000,
      );
    try {
      const result = await handler(key);
      observe("success");
      this.forget(key);
      const after = typeof result === "object" && result !== null ? result.requeueAfterMs : undefined;
      if (after !== undefined && Number.isFinite(after)) this.addAfter(key, Math.max(0, after));
    } catch (err) {
      observe("error");
      this.options.metrics?.reconcileErrorsTotal.inc({ controller });
      log.error("reconcile failed; retrying with backoff", {
        queue: controller,
        key,
        retries: this.retries(key) + 1,
        err,
      });
      this.addRateLimited(key);
    } finally {
      this.processing.delete(key);
      // Added while it was being processed: queue it now that no worker holds it.
      if (this.dirty.has(key) && !this.stopped) this.enqueue(key);
    }
  }

  /** Delay the overall token bucket imposes on one more retry (and takes its token). */
  private bucketDelay(): number {
    const now = Date.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.tokensAt) / 1000) * this.qps);
    this.tokensAt = now;
    this.tokens -= 1;
    return this.tokens >= 0 ? 0 : Math.ceil((-this.tokens / this.qps) * 1000);
  }

  private updateDepth(): void {
    this.options.metrics?.queueDepth.set({ queue: this.options.name }, this.queue.length);
  }
}
