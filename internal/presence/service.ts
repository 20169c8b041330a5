/**
 * Presence: heartbeats become online/offline with a grace period, so a tunnel or a page reload does
 * not flap the dot. A user is online while any session heartbeats; a session that stopped (ended or
 * silent for `offlineAfterMs`) is dropped, and the user is shown offline only after `offlineAfterMs`
 * without any session. Changes go only to sessions that subscribed to that user (the gateway checks
 * they share a conversation). Presence is ephemeral: only last_active_at is stored.
 */
import type { PresenceStatus } from "../../gen/switchboard/common/v1/common_pb.js";
import type { PresenceService } from "../../gen/switchboard/presence/v1/presence_pb.js";
import type { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import type { PresenceStore } from "../backends/types.js";
import { requireUserId } from "../lib/auth.js";
import { errors } from "../lib/errors.js";
import type { Logger } from "../lib/log.js";
import type { ServiceClient, ServiceImpl } from "../lib/rpc.js";

export const WATCHES_PER_SESSION_MAX = 1_000;
const PERSIST_INTERVAL_MS = 5_000;
/**
 * last_active_at writes wait this long to go out together: a reconnect storm's thousands of first
 * heartbeats become one storage batch (one commit) instead of one each, which cost an authenticated
 * connect about a fifth of its server CPU on the embedded backend (issue 12).
 */
const PERSIST_BATCH_MS = 1_000;

export interface PresenceOptions {
  offlineAfterMs: number;
  store: PresenceStore;
  router: () => ServiceClient<typeof RouterService>;
  log: Logger;
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

  constructor(private readonly options: PresenceOptions) {
    this.now = options.now ?? Date.now;
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
    return {
      $typeName: "switchboard.common.v1.PresenceStatus",
      userId,
      online: s?.online ?? false,
      lastActiveAtMs: BigInt(s?.lastActiveMs || this.unsaved.get(userId) || stored || 0),
    };
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
    this.options
      .router()
      .relay({ sessionIds: [...sessions], frame: { kind: { case: "presence", value: { status } } } })
      .catch((err: unknown) => this.options.log.warn("presence: relay failed", { userId, err }));
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
