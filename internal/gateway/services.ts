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

/** A router's Relay, as the gateway uses it. */
export type Relayer = Pick<ServiceClient<typeof RouterService>, "relay">;

export type GatewayStores = Pick<
  Backends,
  "log" | "messages" | "membership" | "inbox" | "receipts" | "routing" | "settings" | "dataSet"
>;

/** The services, stores and limits a gateway and each of its connections work with. */
export interface GatewayServices {
  config: Config;
  log: Logger;
  metrics: Metrics;
  backends: GatewayStores;
  conversations: Conversations;
  /**
   * The router that relays a conversation's events (typing, receipts): one per conversation while
   * it is reachable, so that they reach each gateway in order (process/relay-routes.ts).
   */
  relays(conversationId: string): Relayer;
  presence: ServiceClient<typeof PresenceService>;
  push: ServiceClient<typeof PushService>;
  verify(token: string): Promise<Identity>;
}

/** What the gateway does for its connections' requests beyond their reply (gateway.ts implements it). */
export interface EventRelays {
  /**
   * Relays an event to members' devices without waiting: `relay` (which reads whom to tell and asks
   * the router) is tried again for about 30 s while it fails (every router restarting); a newer
   * event with the same `key` replaces the retries of an older one. For events whose change is
   * stored (a receipt), so that a late event says nothing the stores do not.
   */
  relayEventually(event: "receipt", key: string, relay: () => Promise<unknown>): void;
}
