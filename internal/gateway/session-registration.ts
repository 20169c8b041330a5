/**
 * Each session's records in the routing table: its "up", published until it is written, and its
 * "down", published only once no "up" of it can still be written.
 *
 * A connection is not made to wait for its "up" for long (REGISTRATION_WAIT_MS): while the routing
 * table cannot be written (the distributed backend keeps it on Kafka, which may be down) a client
 * still connects, syncs and reads history from the store. Such a session's "up" is published again,
 * with backoff, for as long as it lasts; the connection is told when it lands, to look at its inbox
 * once (a message routed while no router knew of the session went only there).
 *
 * A "down" waits for the session's "up" in flight: written after the "down", it would show a closed
 * session as connected until this gateway restarts, and routers would keep its user from push
 * notifications. For the same reason a "down" that fails is published again (DOWN_RETRY_DELAYS_MS),
 * and a closing gateway waits a little for the "down"s still on their way.
 */

import type { SessionEvent } from "../backends/types.js";
import type { Logger } from "../lib/log.js";
import { RetryLater } from "../lib/retry-later.js";

/** How long a new connection's welcome waits for its session's "up" to be written. */
export const REGISTRATION_WAIT_MS = 2_000;
/** Waits between attempts at an "up" that failed: doubling from the first to the last, with jitter. */
export const REGISTRATION_RETRY_FIRST_MS = 1_000;
export const REGISTRATION_RETRY_MAX_MS = 10_000;

/** Waits before each new attempt at a "down" that failed (about two minutes in all). */
export const DOWN_RETRY_DELAYS_MS = [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 60_000];
/** "down"s waiting to be tried again at most (past it one that fails is given up, and logged). */
const DOWN_RETRIES_WAITING_MAX = 100_000;

export interface SessionRegistrationsOptions {
  publish(event: SessionEvent): Promise<void>;
  log: Logger;
  random?: () => number;
  now?: () => number;
}

interface Registration {
  /** When the session was registered (ms). */
  readonly since: number;
  /** The attempt in flight, if any: it never rejects. */
  attempt: Promise<void> | undefined;
  timer: ReturnType<typeof setTimeout> | undefined;
  ended: boolean;
  /** Resolves the promise `register` returned. */
  settle: () => void;
}

export class SessionRegistrations {
  /** Sessions whose "up" is not written yet, by session id. */
  private readonly pending = new Map<string, Registration>();
  /** Sessions whose "up" failed at least once and is not written yet: warned of as a whole. */
  private readonly failing = new Set<string>();
  /** "down"s published again until written (or given up). */
  private readonly downRetries = new RetryLater({
    delaysMs: DOWN_RETRY_DELAYS_MS,
    waitingMax: DOWN_RETRIES_WAITING_MAX,
    retryable: () => true,
  });
  /** Each "down" not yet written or given up: what `close` waits for. */
  private readonly downs = new Set<Promise<void>>();

  constructor(private readonly o: SessionRegistrationsOptions) {}

  /**
   * Publishes the session's "up" until it is written. The promise resolves once it is, or once the
   * session ended first (`unregister`, `close`); it never rejects.
   */
  register(up: SessionEvent): Promise<void> {
    return new Promise<void>((resolve) => {
      const r: Registration = {
        since: this.now(),
        attempt: undefined,
        timer: undefined,
        ended: false,
        settle: resolve,
      };
      this.pending.set(up.sessionId, r);
      this.attempt(up, r, 1);
    });
  }

  /**
   * The session ended: its "up" is no longer published, and its "down" is, once an attempt in flight
   * settled (even an "up" that failed may have been written: a timed-out request), until written.
   */
  unregister(down: SessionEvent): void {
    const r = this.pending.get(down.sessionId);
    if (r) this.end(down.sessionId, r);
    const published = (async () => {
      await r?.attempt;
      await new Promise<void>((done) =>
        this.downRetries.run(
          () => this.o.publish(down).then(done),
          (reason, err, attempts) => {
            if (reason !== "closed")
              this.o.log.warn(
                "gateway: a session's 'down' routing record could not be written; routers count it connected until this gateway restarts",
                { sessionId: down.sessionId, attempts, reason, err },
              );
            done();
          },
        ),
      );
    })();
    this.downs.add(published);
    void published.finally(() => this.downs.delete(published));
  }

  /**
   * The gateway closes: no more "up"s (the sessions' promises resolve), and the "down"s still on their
   * way get up to `waitMs` before their retries are given up.
   */
  async close(waitMs: number): Promise<void> {
    for (const [sessionId, r] of this.pending) this.end(sessionId, r);
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      Promise.all(this.downs),
      new Promise<void>((r) => {
        timer = setTimeout(r, waitMs);
      }),
    ]);
    clearTimeout(timer);
    this.downRetries.close();
  }

  /**
   * Sessions welcomed without being in the routing table: their "up" not written after
   * REGISTRATION_WAIT_MS (switchboard_gateway_unrouted_sessions). Those still within it are the
   * ordinary moment of every connect, not a fault.
   */
  overdue(): number {
    const before = this.now() - REGISTRATION_WAIT_MS;
    let n = 0;
    for (const r of this.pending.values()) if (r.since <= before) n++;
    return n;
  }

  private attempt(up: SessionEvent, r: Registration, n: number): void {
    r.timer = undefined;
    r.attempt = this.o.publish(up).then(
      () => {
        r.attempt = undefined;
        if (r.ended) return;
        this.end(up.sessionId, r);
        if (this.failing.size === 0 && n > 1)
          this.o.log.info("gateway: sessions' routing records are written again");
      },
      (err: unknown) => {
        r.attempt = undefined;
        if (r.ended) return;
        if (this.failing.size === 0)
          this.o.log.warn(
            "gateway: a session's routing record could not be written; its connection gets no live messages until it is (retried)",
            { sessionId: up.sessionId, err },
          );
        this.failing.add(up.sessionId);
        r.timer = setTimeout(() => this.attempt(up, r, n + 1), this.delay(n));
      },
    );
  }

  private end(sessionId: string, r: Registration): void {
    r.ended = true;
    clearTimeout(r.timer);
    r.timer = undefined;
    this.pending.delete(sessionId);
    this.failing.delete(sessionId);
    r.settle();
  }

  /** The wait after attempt `n` failed: doubling, capped, and spread (sessions failed together). */
  private delay(n: number): number {
    const base = Math.min(REGISTRATION_RETRY_MAX_MS, REGISTRATION_RETRY_FIRST_MS * 2 ** (n - 1));
    return Math.round(base * (0.5 + (this.o.random ?? Math.random)() / 2));
  }

  private now(): number {
    return (this.o.now ?? Date.now)();
  }
}

/** Whether `promise` (one that never rejects) settles within `ms`; no timer is left behind. */
export function settlesWithin(promise: Promise<void>, ms: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    void promise.then(() => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}
