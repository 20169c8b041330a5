import type { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { errors } from "../lib/errors.js";
import type { ServiceImpl } from "../lib/rpc.js";
import { HighWaterMark, type HighWaterStore } from "./high-water.js";
import { ClockMovedBackwardsError, decodeSnowflake, Snowflake, WORKER_MAX } from "./snowflake.js";

export const ALLOCATE_COUNT_MAX = 10_000;
/** Ids a caller may name in `received`: one per worker. */
const RECEIVED_MAX = WORKER_MAX + 1;
/** How far behind an id a caller received this worker's clock may be and still mint (Snowflake's). */
const MAX_BACKWARDS_MS = 5_000;

/**
 * The id service: hands out Snowflake ids in batches so no message costs an RPC. With `highWater`
 * (role all's: the embedded data file, or Cassandra's id_high_water on the distributed backend), the
 * time ids were issued up to survives a restart (high-water.ts). Role id
 * has no store: its callers (the gateways, which outlive an id Pod's restart) carry it, each naming
 * the highest id it received from each worker (`received`), and a worker mints only above its own.
 * So a worker restarted with its clock behind (another node, a clock stepped back) gives a caller
 * that names it no id at or below one that caller holds; a caller that names nothing (one started
 * since, or an older build) is served on the worker's clock, and could be given an id another
 * caller holds if that clock is behind. A worker more than 5 s behind an id named to it refuses to
 * mint (CLOCK_BEHIND).
 */
export function createIdService(
  workerId: number,
  now?: () => number,
  highWater?: HighWaterStore,
): ServiceImpl<typeof IdService> {
  const clock = now ?? Date.now;
  const mark = highWater ? new HighWaterMark(highWater, clock) : undefined;
  const generator = new Snowflake({
    workerId,
    now: clock,
    maxBackwardsMs: MAX_BACKWARDS_MS,
    ...(mark ? { floorMs: mark.floorMs } : {}),
  });
  const behind = (err: unknown) =>
    errors.unavailable("CLOCK_BEHIND", `id worker ${workerId}: ${(err as Error).message}`, err);
  return {
    async allocateIds(req) {
      if (req.count < 1 || req.count > ALLOCATE_COUNT_MAX) {
        throw errors.invalid(
          "COUNT_OUT_OF_RANGE",
          `count must be in [1, ${ALLOCATE_COUNT_MAX}], got ${req.count}`,
        );
      }
      if (req.received.length > RECEIVED_MAX)
        throw errors.invalid(
          "COUNT_OUT_OF_RANGE",
          `received names at most ${RECEIVED_MAX} ids (one per worker), got ${req.received.length}`,
        );
      for (const received of req.received) {
        const id = BigInt(received);
        const minted = decodeSnowflake(id);
        if (minted.workerId !== workerId) continue;
        // Not taken when it lies further ahead than this worker could run on its own clock (a
        // caller's bad id must not stop the worker for good); this call is refused instead.
        const aheadMs = minted.ms - clock();
        if (aheadMs > MAX_BACKWARDS_MS)
          throw behind(new Error(`a caller holds an id of ${aheadMs} ms ahead of this clock`));
        generator.mintAbove(id);
      }
      let ids: string[];
      try {
        ids = generator.batch(req.count);
      } catch (err) {
        if (err instanceof ClockMovedBackwardsError) throw behind(err);
        throw err;
      }
      // Out only once the stored mark is past them: a restart never mints them again.
      if (mark) await mark.cover(generator.lastMillisecond);
      return { ids, workerId };
    },
  };
}
