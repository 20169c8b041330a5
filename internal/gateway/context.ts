import type { PresenceService } from "../../gen/switchboard/presence/v1/presence_pb.js";
import type { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import type { Identity } from "../lib/auth.js";
import type { Config } from "../lib/config.js";
import type { Logger } from "../lib/log.js";
import type { Metrics } from "../lib/metrics.js";
import type { ServiceClient } from "../lib/rpc.js";
import type { Conversations } from "../router/index.js";
import type { Connection } from "./connection.js";
import type { GatewayStores } from "./gateway.js";

/** What a connection needs from its gateway: services, storage, limits and the registry. */
export interface GatewayContext {
  config: Config;
  log: Logger;
  metrics: Metrics;
  backends: GatewayStores;
  conversations: Conversations;
  router: ServiceClient<typeof RouterService>;
  presence: ServiceClient<typeof PresenceService>;
  verify(token: string): Promise<Identity>;
  /** Per-user send limit across all the user's connections; 0 or ms to wait. */
  takeUserSend(userId: string): number;
  sharesConversation(a: string, b: string): Promise<boolean>;
  register(conn: Connection): Promise<void>;
  unregister(conn: Connection): void;
}
