/**
 * Presence: heartbeats become online/offline with a grace period, so a tunnel or a page reload does
 * not flap the dot. A user is online while any session heartbeats; a session that stopped (ended or
 * silent for `offlineAfterMs`) is dropped, and the user is shown offline only after `offlineAfterMs`
 * without any session. Changes go only to sessions that subscribed to that user (the gateway checks
 * they share a conversation). Presence is ephemeral: only last_active_at is stored.
 *
 * A process that starts afresh (a restart, another shard count) knows nobody's sessions: a user whose
 * stored last_active_at is within `offlineAfterMs` is shown online until that much time after it, as
 * if their last session had just ended; their next heartbeat keeps them online, else they go offline
 * then, and the watchers hear of it (the previous process would have told them the same, a few
 * seconds later at most: last_active_at is stored every few seconds).
 *
 * Every change of one user goes through the same router (`router(userId)`), whose stream to each
 * gateway is in order: a user's changes reach a watcher in the order they happened.
 */
import type { PresenceStatus } from "../../gen/switchboard/common/v1/common_pb.js";
import type { PresenceService } from "../../gen/switchboard/presence/v1/presence_pb.js";
import type { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import type { PresenceStore } from "../backends/types.js";
import { requireUserId } from "../lib/auth.js";
import { errors } from "../lib/errors.js";
import type { Logger } from "../lib/log.js";
import type { PresenceMetrics } from "../lib/metrics.js";
import type { ServiceClient, ServiceImpl } from "../lib/rpc.js";

export const WATCHES_PER_SESSION_MAX = 1_000;
const PERSIST_INTERVAL_MS = 5_000;
/**
 * last_active_at writes wait this long to go out together: a reconnect storm's thousands of first
 * heartbeats become one storage batch (one commit) instead of one each, which cost an authenticated
 * connect about a fifth of its server CPU on the embedded backend (issue 12).
 */
const PERSIST_BATCH_MS = 1_000;
/**
 * Session ids per Relay, in bytes (their UTF-8 length plus 3 for the field's tag and length): a user
 * watched by more sessions has each change relayed in several parts, each far below the 4 MiB a gRPC
 * message may hold (one part of 1 MiB is about 55,000 of the gateway's 16-character session ids).
 */
export const RELAY_SESSION_BYTES_MAX = 1 << 20;

export interface PresenceOptions {
  offlineAfterMs: number;
  store: PresenceStore;
  /** The router that relays `userId`'s changes: the same one for each of them (see the file comment). */
  router: (userId: string) => Pick<ServiceClient<typeof RouterService>, "relay">;
  log: Logger;
  /** switchboard_presence_*: this service's counts and failed relays. */
  metrics?: PresenceMetrics;
  now?: () => number;
}

/** A process holding watching sessions (a gateway instance), alive while it renews its lease. */
interface Watcher {
  renewedAtMs: number;
  sessions: Set<string>;
  /**
   * The watcher renewed here since this service started. Until it has, a lease made by a Subscribe
   * does not say this service holds all of the watcher's watches (it may have restarted since the
   * others were made), so the first renewal asks for them all again.
   */
  renewed: boolean;
}

interface UserState {
  sessions: Map<string, number>; // session id → last heartbeat ms
  online: boolean;
  lastActiveMs: number;
  persistedMs: number;
  offlineTimer?: NodeJS.Timeout;
}

export class Presence {
  private readonly users = new Map<string, UserState>();
  private readonly watchers = new Map<string, Set<string>>(); // watched user → sessions
  private readonly watching = new Map<string, Set<string>>(); // session → watched users
  /** Leases by watcher id; a session subscribed with a watcher id is in its watcher's set. */
  private readonly leases = new Map<string, Watcher>();
  private readonly watcherOf = new Map<string, string>(); // session → watcher id
  private readonly sweeper: NodeJS.Timeout;
  private readonly now: () => number;
  /** last_active_at values not written yet, by user (read by status() until they are). */
  private readonly unsaved = new Map<string, number>();
  private persistTimer: NodeJS.Timeout | undefined;
  private readonly detachMetrics: (() => void) | undefined;

  constructor(private readonly options: PresenceOptions) {
    this.now = options.now ?? Date.now;
    this.detachMetrics = options.metrics?.attach(() => this.counts());
    // Sessions whose gateway vanished without EndSession stop heartbeating; sweep them.
    this.sweeper = setInterval(() => this.sweep(), Math.max(100, Math.floor(options.offlineAfterMs / 2)));
    this.sweeper.unref();
  }

  private state(userId: string): UserState {
    let s = this.users.get(userId);
    if (!s) {
      s = { sessions: new Map(), online: false, lastActiveMs: 0, persistedMs: 0 };
      this.users.set(userId, s);
    }
    return s;
  }

  status(userId: string, stored?: number): PresenceStatus {
    const s = this.users.get(userId);
    const lastActiveMs = s?.lastActiveMs || this.unsaved.get(userId) || stored || 0;
    return {
      $typeName: "switchboard.common.v1.PresenceStatus",
      userId,
      // Not held: online only if active so recently that another process may have seen it so.
      online: s ? s.online : this.recent(lastActiveMs),
      lastActiveAtMs: BigInt(lastActiveMs),
    };
  }

  /** Active less than offlineAfterMs ago: a session may still be alive, or be in its grace period. */
  private recent(lastActiveMs: number): boolean {
    return lastActiveMs > 0 && this.now() - lastActiveMs < this.options.offlineAfterMs;
  }

  /**
   * Takes on a user this process does not hold but who was active recently (its predecessor, or the
   * shard that held them before, saw them): online, going offline `offlineAfterMs` after that
   * activity unless a heartbeat comes first (see the file comment).
   */
  private adopt(userId: string, stored: number | undefined): void {
    const lastActiveMs = this.unsaved.get(userId) || stored || 0;
    if (this.users.has(userId) || !this.recent(lastActiveMs)) return;
    const s = this.state(userId);
    s.online = true;
    s.lastActiveMs = lastActiveMs;
    s.persistedMs = lastActiveMs;
    this.scheduleOffline(userId, s);
  }

  /** What the switchboard_presence_* gauges report. */
  private counts(): { usersOnline: number; sessions: number; watches: number } {
    let usersOnline = 0;
    let sessions = 0;
    for (const s of this.users.values()) {
      if (s.online) usersOnline++;
      sessions += s.sessions.size;
    }
    let watches = 0;
    for (const mine of this.watching.values()) watches += mine.size;
    return { usersOnline, sessions, watches };
  }

  heartbeat(userId: string, sessionId: string): PresenceStatus {
    const s = this.state(userId);
    const now = this.now();
    s.sessions.set(sessionId, now);
    s.lastActiveMs = now;
    if (s.offlineTimer) {
      clearTimeout(s.offlineTimer);
      delete s.offlineTimer;
    }
    if (!s.online) {
      s.online = true;
      this.publish(userId);
    }
    if (now - s.persistedMs >= PERSIST_INTERVAL_MS) {
      s.persistedMs = now;
      this.persist(userId, now);
    }
    return this.status(userId);
  }

  endSession(userId: string, sessionId: string): void {
    this.unwatchAll(sessionId);
    const s = this.users.get(userId);
    if (!s?.sessions.delete(sessionId)) return;
    if (s.sessions.size === 0) this.scheduleOffline(userId, s);
  }

  private scheduleOffline(userId: string, s: UserState): void {
    if (s.offlineTimer || !s.online) return;
    const lastSeen = s.lastActiveMs;
    const wait = Math.max(0, lastSeen + this.options.offlineAfterMs - this.now());
    s.offlineTimer = setTimeout(() => {
      delete s.offlineTimer;
      if (s.sessions.size > 0 || !s.online) return;
      s.online = false;
      s.persistedMs = s.lastActiveMs;
      this.persist(userId, s.lastActiveMs);
      this.publish(userId);
      this.forgetIfIdle(userId, s);
    }, wait);
    s.offlineTimer.unref();
  }

  /**
   * Drops the state of a user who is offline, about to go offline for nobody (no timer) and watched
   * by nobody: status() then answers from the stored (or still unsaved) last_active_at. A watched
   * offline user's state stays while watched, and goes when the last watcher leaves (unsubscribe).
   */
  private forgetIfIdle(userId: string, s: UserState): void {
    if (!s.online && s.sessions.size === 0 && !s.offlineTimer && !this.watchers.has(userId))
      this.users.delete(userId);
  }

  private sweep(): void {
    const cutoff = this.now() - this.options.offlineAfterMs;
    for (const [userId, s] of this.users) {
      for (const [sessionId, at] of s.sessions) if (at < cutoff) s.sessions.delete(sessionId);
      if (s.sessions.size === 0) this.scheduleOffline(userId, s);
    }
    // A session's heartbeats reach only its own user's shard, and EndSession never comes from a
    // gateway that died: its watches here go when its gateway stops renewing them.
    for (const [watcherId, watcher] of this.leases) {
      if (watcher.renewedAtMs >= cutoff) continue;
      this.leases.delete(watcherId);
      for (const sessionId of watcher.sessions) this.unwatchAll(sessionId);
    }
  }

  /**
   * Renews a watcher's lease (its sessions' watches stay for another `offlineAfterMs`). True unless it
   * renewed here before and its lease held: the watches of its sessions may not (or no longer) be
   * here, and it subscribes them again.
   */
  keepWatches(watcherId: string): boolean {
    const watcher = this.leases.get(watcherId);
    if (watcher?.renewed) {
      watcher.renewedAtMs = this.now();
      return false;
    }
    if (watcher) {
      watcher.renewedAtMs = this.now();
      watcher.renewed = true;
    } else this.leases.set(watcherId, { renewedAtMs: this.now(), sessions: new Set(), renewed: true });
    return true;
  }

  /** Watcher counts, for tests and metrics. */
  watchCounts(): { sessions: number; watchers: number } {
    return { sessions: this.watching.size, watchers: this.leases.size };
  }

  private persist(userId: string, atMs: number): void {
    this.unsaved.set(userId, atMs);
    if (this.persistTimer) return;
    this.persistTimer = setTimeout(() => void this.writeUnsaved(), PERSIST_BATCH_MS);
    this.persistTimer.unref();
  }

  private writeUnsaved(): Promise<void> {
    this.persistTimer = undefined;
    const batch = [...this.unsaved];
    this.unsaved.clear();
    return Promise.allSettled(
      batch.map(([userId, atMs]) => this.options.store.setLastActive(userId, atMs)),
    ).then((results) => {
      const failed = results.flatMap((r, i) => (r.status === "rejected" ? [[batch[i]![0], r.reason]] : []));
      if (failed.length > 0)
        this.options.log.warn("presence: could not store last_active_at", {
          users: failed.length,
          firstUserId: failed[0]![0],
          err: failed[0]![1],
        });
    });
  }

  private publish(userId: string): void {
    const sessions = this.watchers.get(userId);
    if (!sessions || sessions.size === 0) return;
    const status = this.status(userId);
    const router = this.options.router(userId);
    const relay = (sessionIds: string[]) =>
      router
        .relay({ sessionIds, frame: { kind: { case: "presence", value: { status } } } })
        .catch((err: unknown) => {
          this.options.metrics?.relaysFailed.inc();
          this.options.log.warn("presence: relay failed", { userId, sessions: sessionIds.length, err });
        });
    let part: string[] = [];
    let bytes = 0;
    for (const sessionId of sessions) {
      const size = Buffer.byteLength(sessionId) + 3;
      if (bytes + size > RELAY_SESSION_BYTES_MAX && part.length > 0) {
        void relay(part);
        part = [];
        bytes = 0;
      }
      part.push(sessionId);
      bytes += size;
    }
    void relay(part);
  }

  async subscribe(sessionId: string, userIds: string[], watcherId = ""): Promise<PresenceStatus[]> {
    let mine = this.watching.get(sessionId);
    if (!mine) {
      mine = new Set();
      this.watching.set(sessionId, mine);
    }
    const unique = [...new Set(userIds)];
    if (mine.size + unique.filter((u) => !mine.has(u)).length > WATCHES_PER_SESSION_MAX) {
      throw errors.exhausted(
        "TOO_MANY_WATCHES",
        `a session may watch at most ${WATCHES_PER_SESSION_MAX} users`,
      );
    }
    for (const u of unique) {
      mine.add(u);
      let set = this.watchers.get(u);
      if (!set) {
        set = new Set();
        this.watchers.set(u, set);
      }
      set.add(sessionId);
    }
    if (watcherId !== "" && unique.length > 0) this.lease(sessionId, watcherId);
    const stored = await this.options.store.lastActive(unique.filter((u) => !this.users.has(u)));
    // Watched now: one active recently is held, so that their going offline is told.
    for (const u of unique) if (this.watchers.has(u)) this.adopt(u, stored.get(u));
    return unique.map((u) => this.status(u, stored.get(u)));
  }

  unsubscribe(sessionId: string, userIds: string[]): void {
    const mine = this.watching.get(sessionId);
    if (!mine) return;
    for (const u of userIds) {
      mine.delete(u);
      const set = this.watchers.get(u);
      set?.delete(sessionId);
      if (set?.size === 0) {
        this.watchers.delete(u);
        const s = this.users.get(u);
        if (s) this.forgetIfIdle(u, s);
      }
    }
    if (mine.size === 0) {
      this.watching.delete(sessionId);
      const watcherId = this.watcherOf.get(sessionId);
      if (watcherId !== undefined) {
        this.watcherOf.delete(sessionId);
        this.leases.get(watcherId)?.sessions.delete(sessionId);
      }
    }
  }

  /** Puts a watching session under its watcher's lease (subscribing renews it). */
  private lease(sessionId: string, watcherId: string): void {
    const earlier = this.watcherOf.get(sessionId);
    if (earlier !== undefined && earlier !== watcherId) this.leases.get(earlier)?.sessions.delete(sessionId);
    this.watcherOf.set(sessionId, watcherId);
    let watcher = this.leases.get(watcherId);
    if (!watcher) {
      watcher = { renewedAtMs: this.now(), sessions: new Set(), renewed: false };
      this.leases.set(watcherId, watcher);
    }
    watcher.renewedAtMs = this.now();
    watcher.sessions.add(sessionId);
  }

  private unwatchAll(sessionId: string): void {
    const mine = this.watching.get(sessionId);
    if (mine) this.unsubscribe(sessionId, [...mine]);
  }

  /** Users whose state is held (for tests). */
  get usersHeld(): number {
    return this.users.size;
  }

  /**
   * Stops the timers and writes what is still unsaved (before the store it writes to closes),
   * including the latest last_active_at of users still online: a heartbeat stores it at most every
   * PERSIST_INTERVAL_MS, and what came since would be lost with the process.
   */
  async close(): Promise<void> {
    clearInterval(this.sweeper);
    this.detachMetrics?.();
    for (const [userId, s] of this.users) {
      if (s.offlineTimer) clearTimeout(s.offlineTimer);
      if (s.lastActiveMs > s.persistedMs && s.lastActiveMs > (this.unsaved.get(userId) ?? 0))
        this.unsaved.set(userId, s.lastActiveMs);
    }
    clearTimeout(this.persistTimer);
    if (this.unsaved.size > 0) await this.writeUnsaved();
  }
}

export function presenceServiceImpl(
  presence: Presence,
  store: PresenceStore,
): ServiceImpl<typeof PresenceService> {
  return {
    async heartbeat(req) {
      return { status: presence.heartbeat(requireUserId(req.userId), req.sessionId) };
    },
    async endSession(req) {
      presence.endSession(requireUserId(req.userId), req.sessionId);
      return {};
    },
    async getPresence(req) {
      if (req.userIds.length > 1_000) throw errors.invalid("TOO_MANY_USERS", "at most 1,000 users per call");
      for (const u of req.userIds) requireUserId(u);
      const stored = await store.lastActive(req.userIds);
      return { statuses: req.userIds.map((u) => presence.status(u, stored.get(u))) };
    },
    async subscribe(req) {
      for (const u of req.userIds) requireUserId(u);
      return { statuses: await presence.subscribe(req.sessionId, req.userIds, req.watcherId) };
    },
    async keepWatches(req) {
      if (req.watcherId === "") throw errors.invalid("INVALID_WATCHER", "watcher_id is required");
      return { watchesLost: presence.keepWatches(req.watcherId) };
    },
    async unsubscribe(req) {
      presence.unsubscribe(req.sessionId, req.userIds);
      return {};
    },
  };
}
