/**
 * Presence state (who is online, who watches whom) lives in memory, so it is sharded by user: user U's
 * heartbeats, status and watchers live on shard hash(U) mod N. This client gives the gateway the same
 * PresenceService interface over N shards: per-user calls go to the user's shard, per-session and
 * per-watcher calls (EndSession, KeepWatches) go to every shard (a session's watches are spread over
 * them), and lists are split by shard and merged back in the caller's order. A gateway renews its
 * lease and ends sessions shard by shard (presenceShards), so that one shard's failure costs only
 * what that shard holds.
 */

import { create } from "@bufbuild/protobuf";
import type { PresenceStatus } from "../../gen/switchboard/common/v1/common_pb.js";
import {
  EndSessionResponseSchema,
  GetPresenceResponseSchema,
  KeepWatchesResponseSchema,
  type PresenceService,
  SubscribeResponseSchema,
  UnsubscribeResponseSchema,
} from "../../gen/switchboard/presence/v1/presence_pb.js";
import type { ServiceClient } from "../lib/rpc.js";
import { shardOf } from "../lib/shard.js";

type PresenceClient = ServiceClient<typeof PresenceService>;

/** The presence shard of a user (the same placement as every other per-user shard). */
export const presenceShardOf = shardOf;

/**
 * The shards behind a sharded client, under a symbol so that they survive the client being spread
 * into another object (process/peers.ts adds close()).
 */
const SHARDS = Symbol("presence shards");

/**
 * The shards behind `client` in shard order (a user's is presenceShardOf(user, count)): one, the
 * client itself, unless it is a sharded client. For what must be done or redone shard by shard (a
 * lease renewal, a session's end).
 */
export function presenceShards(client: PresenceClient): PresenceClient[] {
  return (client as { [SHARDS]?: PresenceClient[] })[SHARDS] ?? [client];
}

export function shardedPresenceClient(shards: PresenceClient[]): PresenceClient {
  if (shards.length === 0) throw new Error("shardedPresenceClient: no shards");
  if (shards.length === 1) return shards[0]!;
  const shardFor = (userId: string) => shards[shardOf(userId, shards.length)]!;
  const split = (userIds: string[]) => {
    const parts = new Map<PresenceClient, string[]>();
    for (const u of userIds) {
      const shard = shardFor(u);
      const list = parts.get(shard);
      if (list) list.push(u);
      else parts.set(shard, [u]);
    }
    return parts;
  };
  /** Statuses from several shards, in the order of `userIds` (each user once). */
  const merge = (userIds: string[], lists: PresenceStatus[][]) => {
    const byUser = new Map(lists.flat().map((s) => [s.userId, s]));
    const out: PresenceStatus[] = [];
    for (const u of new Set(userIds)) {
      const s = byUser.get(u);
      if (s) out.push(s);
    }
    return out;
  };
  const client: PresenceClient = {
    heartbeat: (req, options) => shardFor(req.userId ?? "").heartbeat(req, options),
    async endSession(req, options) {
      await Promise.all(shards.map((s) => s.endSession(req, options)));
      return create(EndSessionResponseSchema);
    },
    async getPresence(req, options) {
      const userIds = req.userIds ?? [];
      const parts = [...split(userIds)];
      const results = await Promise.all(parts.map(([s, ids]) => s.getPresence({ userIds: ids }, options)));
      return create(GetPresenceResponseSchema, {
        statuses: merge(
          userIds,
          results.map((r) => r.statuses),
        ),
      });
    },
    async subscribe(req, options) {
      const userIds = req.userIds ?? [];
      const sessionId = req.sessionId ?? "";
      const watcherId = req.watcherId ?? "";
      const parts = [...split(userIds)];
      const results = await Promise.all(
        parts.map(([s, ids]) => s.subscribe({ sessionId, userIds: ids, watcherId }, options)),
      );
      return create(SubscribeResponseSchema, {
        statuses: merge(
          userIds,
          results.map((r) => r.statuses),
        ),
      });
    },
    /**
     * Every shard holds some of a watcher's watches: renewed on each; lost if lost on any, even when
     * another failed (a shard says so only once); else the failure, if one failed.
     */
    async keepWatches(req, options) {
      const results = await Promise.allSettled(shards.map((s) => s.keepWatches(req, options)));
      if (results.some((r) => r.status === "fulfilled" && r.value.watchesLost))
        return create(KeepWatchesResponseSchema, { watchesLost: true });
      const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
      if (failed) throw failed.reason;
      return create(KeepWatchesResponseSchema, { watchesLost: false });
    },
    async unsubscribe(req, options) {
      const sessionId = req.sessionId ?? "";
      const parts = [...split(req.userIds ?? [])];
      await Promise.all(parts.map(([s, ids]) => s.unsubscribe({ sessionId, userIds: ids }, options)));
      return create(UnsubscribeResponseSchema);
    },
  };
  return Object.assign(client, { [SHARDS]: shards });
}
