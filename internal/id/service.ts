import type { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { errors } from "../lib/errors.js";
import type { ServiceImpl } from "../lib/rpc.js";
import { HighWaterMark, type HighWaterStore } from "./high-water.js";
import { Snowflake } from "./snowflake.js";

export const ALLOCATE_COUNT_MAX = 10_000;

/**
 * The id service: hands out Snowflake ids in batches so no message costs an RPC. With `highWater`
 * (the embedded store's), the time ids were issued up to survives a restart (high-water.ts); without
 * it (role id, distributed role all: no store of its own), a restart after the clock stepped back
 * may issue ids again.
 */
export function createIdService(
  workerId: number,
  now?: () => number,
  highWater?: HighWaterStore,
): ServiceImpl<typeof IdService> {
  const clock = now ?? Date.now;
  const mark = highWater ? new HighWaterMark(highWater, clock) : undefined;
  const generator = new Snowflake({ workerId, now: clock, ...(mark ? { floorMs: mark.floorMs } : {}) });
  return {
    async allocateIds(req) {
      if (req.count < 1 || req.count > ALLOCATE_COUNT_MAX) {
        throw errors.invalid(
          "COUNT_OUT_OF_RANGE",
          `count must be in [1, ${ALLOCATE_COUNT_MAX}], got ${req.count}`,
        );
      }
      const ids = generator.batch(req.count);
      // Out only once the stored mark is past them: a restart never mints them again.
      if (mark) await mark.cover(generator.lastMillisecond);
      return { ids, workerId };
    },
  };
}
