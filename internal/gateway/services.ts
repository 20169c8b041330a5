/** What a gateway and each of its connections work with (types only: connection.ts and requests.ts share them). */
import type { PresenceService } from "../../gen/switchboard/presence/v1/presence_pb.js";
import type { PushService } from "../../gen/switchboard/push/v1/push_pb.js";
import type { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import type { Backends } from "../backends/types.js";
import type { Conversations } from "../conversations/index.js";
import type { Identity } from "../lib/auth.js";
import type { Config } from "../lib/config.js";
import type { Logger } from "../lib/log.js";
import type { Metrics } from "../lib/metrics.js";
import type { ServiceClient } from "../lib/rpc.js";

export type GatewayStores = Pick<
  Backends,
  "log" | "messages" | "membership" | "inbox" | "receipts" | "routing" | "settings"
>;

/** The services, stores and limits a gateway and each of its connections work with. */
export interface GatewayServices {
  config: Config;
  log: Logger;
  metrics: Metrics;
  backends: GatewayStores;
  conversations: Conversations;
  router: ServiceClient<typeof RouterService>;
  presence: ServiceClient<typeof PresenceService>;
  push: ServiceClient<typeof PushService>;
  verify(token: string): Promise<Identity>;
}
