/**
 * Each session's records in the routing table: its "up", published until it is written, and its
 * "down", published once no "up" of it can still be written, and then until it is written too.
 *
 * A connection is not made to wait for its "up" for long (REGISTRATION_WAIT_MS): while the routing
 * table cannot be written (the distributed backend keeps it on Kafka, which may be down) a client
 * still connects, syncs and reads history from the store. Such a session's "up" is published again,
 * with backoff, for as long as it lasts; the connection is told when it lands, to look at its inbox
 * once (a message routed while no router knew of the session went only there).
 *
 * A "down" waits for the session's "up" in flight: written after the "down", it would show a closed
 * session as connected until this gateway restarts, and routers would keep its user from push
 * notifications. For the same reason a "down" is published again, with backoff, for as long as the
 * gateway runs, and a closing gateway waits a little for the "down"s still on their way.
 *
 * Records more than REGISTRATION_WAIT_MS behind (an "up" or a "down" not written) are counted for
 * switchboard_gateway_routing_records_behind; the first one behind is logged (not each), and so is
 * the moment none is any more.
 */

import type { SessionEvent } from "../backends/types.js";
import type { Logger } from "../lib/log.js";

/** How long a new connection's welcome waits for its session's "up" to be written. */
export const REGISTRATION_WAIT_MS = 2_000;
/**
 * How often records are looked at for having fallen behind, while any is being published: one timer
 * for all, not one per connect (two per connect cost ~8 % of the connect rate).
 */
export const REGISTRATION_SWEEP_MS = 100;
/** Waits between attempts at a record that failed: doubling from the first to the last, with jitter. */
export const REGISTRATION_RETRY_FIRST_MS = 1_000;
export const REGISTRATION_RETRY_MAX_MS = 10_000;
/** Records being published at most; past it a new "down" is given up at once (and logged). */
const RECORDS_PENDING_MAX = 200_000;

export interface SessionRegistrationsOptions {
  publish(event: SessionEvent): Promise<void>;
  log: Logger;
  random?: () => number;
  now?: () => number;
}

/** One record being published until it is written. */
interface Publication {
  readonly event: SessionEvent;
  /** When it was asked for (ms). */
  readonly since: number;
  /** The attempt in flight, if any: it never rejects. */
  attempt: Promise<void> | undefined;
  timer: ReturnType<typeof setTimeout> | undefined;
  ended: boolean;
  /** Resolves once it is written, or given up. */
  settle: () => void;
  /** Told once whether it was written within REGISTRATION_WAIT_MS (an "up": the welcome waits). */
  decided?: (inTime: boolean) => void;
}

/** A session's registration as its connection sees it. */
export interface Registration {
  /** True once the "up" is written, false once REGISTRATION_WAIT_MS passed first (or it ended). */
  inTime: Promise<boolean>;
  /** Resolves once the "up" is written, or the session ended first; never rejects. */
  written: Promise<void>;
}

export class SessionRegistrations {
  /** Sessions whose "up" is not written yet, by session id. */
  private readonly ups = new Map<string, Publication>();
  /** Sessions whose "down" is not written yet, by session id. */
  private readonly downs = new Map<string, Publication>();
  /** Records known to be behind (failed, or past REGISTRATION_WAIT_MS): logged as a whole. */
  private readonly behind = new Set<Publication>();
  /** Records neither written nor behind yet, oldest first: what the sweep looks at. */
  private readonly young = new Set<Publication>();
  private sweeper: ReturnType<typeof setInterval> | undefined;
  private closed = false;

  constructor(private readonly o: SessionRegistrationsOptions) {}

  /** Publishes the session's "up" until it is written, or the session ends (`unregister`, `close`). */
  register(up: SessionEvent): Registration {
    let decided!: (inTime: boolean) => void;
    const inTime = new Promise<boolean>((r) => {
      decided = r;
    });
    const { publication, written } = this.publish(up, undefined, decided);
    this.ups.set(up.sessionId, publication);
    return { inTime, written };
  }

  /**
   * The session ended: its "up" is no longer published, and its "down" is, once an attempt in flight
   * settled (even an "up" that failed may have been written: a timed-out request), until written.
   */
  unregister(down: SessionEvent): void {
    const up = this.ups.get(down.sessionId);
    if (up) this.end(up);
    if (this.closed || this.ups.size + this.downs.size >= RECORDS_PENDING_MAX) {
      this.o.log.warn(
        "gateway: a session's 'down' routing record was not published; routers count the session connected until this gateway restarts",
        { sessionId: down.sessionId, reason: this.closed ? "closed" : "too many records pending" },
      );
      return;
    }
    const { publication } = this.publish(down, up?.attempt);
    this.downs.set(down.sessionId, publication);
  }

  /**
   * The gateway closes: no more "up"s (the sessions' promises resolve), and the "down"s on their way
   * get up to `waitMs` to be written before they are given up.
   */
  async close(waitMs: number): Promise<void> {
    this.closed = true;
    for (const up of this.ups.values()) this.end(up);
    const deadline = this.now() + waitMs;
    while (this.downs.size > 0 && this.now() < deadline)
      await new Promise((r) => setTimeout(r, Math.min(50, deadline - this.now())));
    for (const down of this.downs.values()) this.end(down);
  }

  /**
   * Records more than REGISTRATION_WAIT_MS behind: sessions welcomed without being in the routing
   * table, or closed and still in it (switchboard_gateway_routing_records_behind). Those within it
   * are the ordinary moment of every connect and disconnect, not a fault.
   */
  overdue(): number {
    const before = this.now() - REGISTRATION_WAIT_MS;
    let n = 0;
    for (const records of [this.ups, this.downs])
      for (const p of records.values()) if (p.since <= before) n++;
    return n;
  }

  /**
   * Publishes `event` until it is written or ended (after `after` settled, if given); `written`
   * resolves then.
   */
  private publish(
    event: SessionEvent,
    after?: Promise<void>,
    decided?: (inTime: boolean) => void,
  ): { publication: Publication; written: Promise<void> } {
    let settle!: () => void;
    const written = new Promise<void>((r) => {
      settle = r;
    });
    const publication: Publication = {
      event,
      since: this.now(),
      attempt: undefined,
      timer: undefined,
      ended: false,
      settle,
      ...(decided ? { decided } : {}),
    };
    this.young.add(publication);
    if (!this.sweeper) {
      this.sweeper = setInterval(() => this.sweep(), REGISTRATION_SWEEP_MS);
      this.sweeper.unref();
    }
    if (after)
      void after.then(() => {
        if (!publication.ended) this.attempt(publication, 1);
      });
    else this.attempt(publication, 1);
    return { publication, written };
  }

  /**
   * Records not written REGISTRATION_WAIT_MS after they were asked for are behind, failed or not:
   * against a frozen broker an attempt can hang for minutes (the producer's own retries) first.
   */
  private sweep(): void {
    const before = this.now() - REGISTRATION_WAIT_MS;
    for (const p of this.young) {
      if (p.since > before) break; // the rest are younger still
      this.fellBehind(p);
    }
    if (this.young.size === 0) this.stopSweeping();
  }

  private stopSweeping(): void {
    clearInterval(this.sweeper);
    this.sweeper = undefined;
  }

  private attempt(p: Publication, n: number): void {
    p.timer = undefined;
    p.attempt = this.o.publish(p.event).then(
      () => {
        p.attempt = undefined;
        if (!p.ended) this.end(p, true);
      },
      (err: unknown) => {
        p.attempt = undefined;
        if (p.ended) return;
        this.fellBehind(p, err);
        p.timer = setTimeout(() => this.attempt(p, n + 1), this.delay(n));
      },
    );
  }

  private fellBehind(p: Publication, err?: unknown): void {
    this.young.delete(p);
    p.decided?.(false);
    if (this.behind.has(p)) return;
    if (this.behind.size === 0)
      this.o.log.warn(
        p.event.kind === "up"
          ? "gateway: a session's routing record is not written yet; its connection gets no live events until it is (still trying)"
          : "gateway: a closed session's routing record is not removed yet; routers count it connected until it is (still trying)",
        { sessionId: p.event.sessionId, ...(err === undefined ? {} : { err }) },
      );
    this.behind.add(p);
  }

  /** `p` is done: `written`, or ended before (the session closed, the gateway closes). */
  private end(p: Publication, written = false): void {
    p.ended = true;
    clearTimeout(p.timer);
    p.timer = undefined;
    const records = p.event.kind === "up" ? this.ups : this.downs;
    if (records.get(p.event.sessionId) === p) records.delete(p.event.sessionId);
    this.young.delete(p);
    if (this.young.size === 0) this.stopSweeping();
    if (this.behind.delete(p) && this.behind.size === 0 && !this.closed)
      this.o.log.info("gateway: no session's routing record is behind any more");
    p.decided?.(written); // once told late, it stays late (a promise settles once)
    p.settle();
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
