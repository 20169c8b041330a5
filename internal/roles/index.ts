/** The composition root of each role (`switchboard start --role X`); see ADR 0005. */
import type { DescService } from "@bufbuild/protobuf";
import { ChatService } from "../../gen/switchboard/api/v1/chat_pb.js";
import { GatewayService } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { PresenceService } from "../../gen/switchboard/presence/v1/presence_pb.js";
import { PushService } from "../../gen/switchboard/push/v1/push_pb.js";
import { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import type { Config } from "../lib/config.js";
import type { Logger } from "../lib/log.js";
import { type RoleName, type RoleStarter, type RunningProcess, runProcess } from "../process/runtime.js";
import { startAll } from "./all.js";
import { startGateway } from "./gateway.js";
import { startId } from "./id.js";
import { startPresence } from "./presence.js";
import { startPush } from "./push.js";
import { startRouter } from "./router.js";
import { startSequencer } from "./sequencer.js";

export { ROLES, type RoleName, type RunningProcess } from "../process/runtime.js";

interface RoleDefinition {
  start: RoleStarter;
  /**
   * The gRPC services its process serves once started (answered UNAVAILABLE until then); a start
   * that does not add each of them fails (runtime.ts).
   */
  serves: readonly DescService[];
}

const ROLE_DEFINITIONS: Record<RoleName, RoleDefinition> = {
  all: {
    start: startAll,
    serves: [PresenceService, IdService, RouterService, PushService, GatewayService, ChatService],
  },
  gateway: { start: startGateway, serves: [GatewayService] },
  router: { start: startRouter, serves: [RouterService, ChatService] },
  presence: { start: startPresence, serves: [PresenceService] },
  push: { start: startPush, serves: [PushService] },
  id: { start: startId, serves: [IdService] },
  sequencer: { start: startSequencer, serves: [] },
};

export function startRole(role: RoleName, config: Config, log: Logger): Promise<RunningProcess> {
  const { start, serves } = ROLE_DEFINITIONS[role];
  return runProcess(role, config, log, start, serves);
}
