import type { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import type { ServiceClient } from "../lib/rpc.js";

/** How long after a failed refill no refill is started ahead of need. */
const REFILL_BACKOFF_MS = 1_000;

/**
 * Keeps a local stock of Snowflake ids, refilled in batches: no RPC per message. Each refill names the
 * highest id received from each worker so far, so a worker restarted with its clock behind mints above
 * it (internal/id/service.ts).
 */
export class IdPool {
  private stock: string[] = [];
  private refill: Promise<void> | undefined;
  /** The highest id received from each worker, by worker id. */
  private readonly received = new Map<number, bigint>();

  constructor(
    private readonly ids: ServiceClient<typeof IdService>,
    private readonly batchSize: number,
  ) {}

  /** When a refill last failed: background refills wait REFILL_BACKOFF_MS after it. */
  private failedAt = Number.NEGATIVE_INFINITY;

  async next(): Promise<string> {
    for (;;) {
      const id = this.stock.pop();
      if (id !== undefined) {
        // Ahead of need, but not again at every id while the id service refuses (a foreground fill,
        // below, still asks when the stock runs out, and its caller gets the refusal).
        if (
          this.stock.length < this.batchSize / 4 &&
          !this.refill &&
          Date.now() - this.failedAt >= REFILL_BACKOFF_MS
        )
          void this.fill().catch(() => undefined);
        return id;
      }
      await this.fill();
    }
  }

  private fill(): Promise<void> {
    // Shared by every caller waiting for ids: not bounded by the deadline of the one that started it.
    this.refill ??= this.ids
      .allocateIds({ count: this.batchSize, received: [...this.received.values()].map(String) })
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
        this.failedAt = Date.now();
        throw err;
      })
      .finally(() => {
        this.refill = undefined;
      });
    return this.refill;
  }
}
