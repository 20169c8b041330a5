import type { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { ALLOCATE_COUNT_MAX } from "../id/service.js";
import type { ServiceClient } from "../lib/rpc.js";

/** How long after a failed refill no refill is started ahead of need. */
const REFILL_BACKOFF_MS = 1_000;
/**
 * How long the stock of a pool fed by another process should last at the rate ids were taken lately:
 * an id service restarting (a process killed and started again takes seconds) then stalls no send.
 * Ids are opaque: one minted some seconds before its message was sent orders nothing (seq does).
 */
const ID_RESERVE_MS = 10_000;
/** The rate is counted in slots of a second over the reserve's span. */
const SLOT_MS = 1_000;

/**
 * Keeps a local stock of Snowflake ids, refilled in batches: no RPC per message. The stock is kept at
 * what the last `reserveMs` took (at least a quarter of `batchSize`, at most what the id service
 * hands out per call), each refill bringing at least `batchSize` and at most one call's worth. Each
 * refill names the highest id received from each worker so far, so a worker restarted with its clock
 * behind mints above it (internal/id/service.ts).
 */
export class IdPool {
  private stock: string[] = [];
  private refill: Promise<void> | undefined;
  /** The highest id received from each worker, by worker id. */
  private readonly received = new Map<number, bigint>();
  /** Ids taken per slot of SLOT_MS over the reserve's span, the slot of `slotStartMs` first. */
  private readonly taken: number[];
  private slotStartMs = Number.NEGATIVE_INFINITY;
  private readonly now: () => number;

  /**
   * `reserveMs`: ID_RESERVE_MS for an id service in another process; 0 for one in this process (it
   * restarts with it), which keeps a quarter of `batchSize` at least, as much as it fetches per call.
   */
  constructor(
    private readonly ids: ServiceClient<typeof IdService>,
    private readonly batchSize: number,
    options: { reserveMs?: number; now?: () => number } = {},
  ) {
    this.taken = new Array<number>(Math.ceil((options.reserveMs ?? ID_RESERVE_MS) / SLOT_MS)).fill(0);
    this.now = options.now ?? Date.now;
  }

  /** When a refill last failed, and why: no refill is asked for within REFILL_BACKOFF_MS after it. */
  private failedAt = Number.NEGATIVE_INFINITY;
  private failure: unknown;

  async next(): Promise<string> {
    for (;;) {
      const id = this.stock.pop();
      if (id !== undefined) {
        const wanted = this.count();
        // Ahead of need, but not again at every id while the id service refuses.
        if (
          this.stock.length < Math.max(this.batchSize / 4, wanted) &&
          !this.refill &&
          this.now() - this.failedAt >= REFILL_BACKOFF_MS
        )
          void this.fill(wanted).catch(() => undefined);
        return id;
      }
      // Out of stock right after a refill failed: refused at once with that failure (its caller is
      // told to retry), not asked again by every send while the id service is down, each waiting
      // for the call's own retries; the first send after REFILL_BACKOFF_MS asks again.
      if (!this.refill && this.now() - this.failedAt < REFILL_BACKOFF_MS) throw this.failure;
      await this.fill(this.count(0));
    }
  }

  /**
   * Counts `n` ids taken now; returns how many the reserve's span took (this slot's so far included),
   * at most one call's worth.
   */
  private count(n = 1): number {
    const slots = this.taken.length;
    if (slots === 0) return 0;
    const now = this.now();
    const elapsed = Math.floor((now - this.slotStartMs) / SLOT_MS);
    if (elapsed > 0) {
      for (let i = 0; i < Math.min(elapsed, slots); i++) this.taken.copyWithin(1, 0).fill(0, 0, 1);
      this.slotStartMs = elapsed >= slots ? now - (now % SLOT_MS) : this.slotStartMs + elapsed * SLOT_MS;
    }
    this.taken[0]! += n;
    let sum = 0;
    for (const t of this.taken) sum += t;
    return Math.min(sum, ALLOCATE_COUNT_MAX);
  }

  /** Brings `wanted` ids (as the reserve asks), at least batchSize, at most one call's worth. */
  private fill(wanted: number): Promise<void> {
    const count = Math.min(ALLOCATE_COUNT_MAX, Math.max(this.batchSize, wanted));
    // Shared by every caller waiting for ids: not bounded by the deadline of the one that started it.
    this.refill ??= this.ids
      .allocateIds({ count, received: [...this.received.values()].map(String) })
      .then((res) => {
        const last = res.ids.at(-1);
        if (last !== undefined) {
          const id = BigInt(last);
          if (id > (this.received.get(res.workerId) ?? -1n)) this.received.set(res.workerId, id);
        }
        // Keep ascending order when popping: newest batch goes underneath the remaining stock.
        this.stock = [...res.ids.slice().reverse(), ...this.stock];
      })
      .catch((err: unknown) => {
        this.failedAt = this.now();
        this.failure = err;
        throw err;
      })
      .finally(() => {
        this.refill = undefined;
      });
    return this.refill;
  }
}
