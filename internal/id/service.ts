import type { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { errors } from "../lib/errors.js";
import type { ServiceImpl } from "../lib/rpc.js";
import { Snowflake } from "./snowflake.js";

export const ALLOCATE_COUNT_MAX = 10_000;

/** The id service: hands out Snowflake ids in batches so no message costs an RPC. */
export function createIdService(workerId: number, now?: () => number): ServiceImpl<typeof IdService> {
  const generator = new Snowflake(now ? { workerId, now } : { workerId });
  return {
    async allocateIds(req) {
      if (req.count < 1 || req.count > ALLOCATE_COUNT_MAX) {
        throw errors.invalid(
          "COUNT_OUT_OF_RANGE",
          `count must be in [1, ${ALLOCATE_COUNT_MAX}], got ${req.count}`,
        );
      }
      return { ids: generator.batch(req.count), workerId };
    },
  };
}
