/** The composition root of each role (`switchboard start --role X`); see ADR 0005. */
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

const STARTERS: Record<RoleName, RoleStarter> = {
  all: startAll,
  gateway: startGateway,
  router: startRouter,
  presence: startPresence,
  push: startPush,
  id: startId,
  sequencer: startSequencer,
};

export function startRole(role: RoleName, config: Config, log: Logger): Promise<RunningProcess> {
  return runProcess(role, config, log, STARTERS[role]);
}
