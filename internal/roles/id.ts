/** Role id: the Snowflake id service, nothing else (no storage). Worker id = StatefulSet ordinal. */
import { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { createIdService } from "../id/index.js";
import { addService } from "../lib/rpc.js";
import type { RoleStarter } from "../process/runtime.js";

export const startId: RoleStarter = async (ctx) => {
  addService(ctx.grpc!, IdService, createIdService(ctx.config.id.workerId));
  ctx.log.info("id service started", { workerId: ctx.config.id.workerId });
  return {};
};
