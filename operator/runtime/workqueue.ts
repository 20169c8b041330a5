/**
 * A keyed, rate-limited work queue with client-go's semantics, because reconciles are level-based:
 * - a key waiting is not added twice (ten events for one object cause one reconcile);
 * - a key is never processed by two workers at once; added while processing, it runs once more after;
 * - a failed key comes back after max(per-key exponential backoff, the overall token bucket's delay);
 * - a key may ask to come back later (polling, e.g. a drain in progress).
 */
import type { Logger } from "../../internal/lib/log.js";
import type { OperatorRuntimeMetrics } from "./metrics.js";

export interface WorkQueueOptions {
  name: string;
  /** First retry delay of a failing key; doubles per failure. Default 5 ms. */
  baseDelayMs?: number;
  /** Longest retry delay. Default 60 s. */
  maxDelayMs?: number;
  /** Overall retry rate (token bucket), so many failing keys cannot hammer the API server. Default 10/s. */
  qps?: number;
  /** Token bucket size. Default 100. */
  burst?: number;
  metrics?: OperatorRuntimeMetrics;
}

export type ReconcileResult = undefined | { requeueAfterMs: number };

export class WorkQueue {
  private readonly queue: string[] = [];
  /** Keys that need processing: waiting in `queue`, or to be re-queued when their processing ends. */
  private readonly dirty = new Set<string>();
  private readonly processing = new Set<string>();
  private readonly delayed = new Map<string, { at: number; timer: NodeJS.Timeout }>();
  private readonly failures = new Map<string, number>();
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
    this.tokens = this.burst;
  }

  get length(): number {
    return this.queue.length;
  }

  add(key: string): void {
    if (this.stopped || this.dirty.has(key)) return;
    this.dirty.add(key);
    this.options.metrics?.queueAddsTotal.inc({ queue: this.options.name });
    if (!this.processing.has(key)) {
      this.queue.push(key);
      this.updateDepth();
      this.waiters.shift()?.();
    }
  }

  /** Adds the key after `delayMs`; an earlier pending delay for the key wins. */
  addAfter(key: string, delayMs: number): void {
    if (this.stopped) return;
    if (delayMs <= 0) return this.add(key);
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
    const failures = this.failures.get(key) ?? 0;
    this.failures.set(key, failures + 1);
    const backoff = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** Math.min(failures, 30));
    this.options.metrics?.queueRetriesTotal.inc({ queue: this.options.name });
    this.addAfter(key, Math.max(backoff, this.bucketDelay()));
  }

  forget(key: string): void {
    this.failures.delete(key);
  }

  /** Failures recorded for the key since it last succeeded. */
  retries(key: string): number {
    return this.failures.get(key) ?? 0;
  }

  async run(workers: number, handler: (key: string) => Promise<ReconcileResult>, log: Logger): Promise<void> {
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

  /** Stops handing out keys, drops delayed ones, and waits for the handlers in flight. */
  async shutDown(): Promise<void> {
    this.stopped = true;
    for (const { timer } of this.delayed.values()) clearTimeout(timer);
    this.delayed.clear();
    for (const wake of this.waiters.splice(0)) wake();
    await Promise.all([...this.inFlight]);
  }

  private async next(): Promise<string | undefined> {
    while (!this.stopped && this.queue.length === 0) await new Promise<void>((r) => this.waiters.push(r));
    if (this.stopped) return undefined;
    const key = this.queue.shift() as string;
    this.dirty.delete(key);
    this.processing.add(key);
    this.updateDepth();
    return key;
  }

  private async process(
    key: string,
    handler: (key: string) => Promise<ReconcileResult>,
    log: Logger,
  ): Promise<void> {
    const started = performance.now();
    const controller = this.options.name;
    try {
      const result = await handler(key);
      this.forget(key);
      if (result && result.requeueAfterMs >= 0) this.addAfter(key, result.requeueAfterMs);
      this.options.metrics?.reconcileDurationSeconds.observe(
        { controller, result: "success" },
        (performance.now() - started) / 1000,
      );
    } catch (err) {
      this.options.metrics?.reconcileDurationSeconds.observe(
        { controller, result: "error" },
        (performance.now() - started) / 1000,
      );
      this.options.metrics?.reconcileErrorsTotal.inc({ controller });
      log.warn("reconcile failed; retrying with backoff", { key, retries: this.retries(key) + 1, err });
      if (!this.stopped) this.addRateLimited(key);
    } finally {
      this.processing.delete(key);
      // Added while it was being processed: it runs once more, now.
      if (this.dirty.has(key) && !this.stopped) {
        this.queue.push(key);
        this.updateDepth();
        this.waiters.shift()?.();
      }
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
