/**
 * One router's Deliver stream to one gateway: a FIFO bounded in bytes (not items: one group message
 * to 100 users weighs more than a typing event), opened on demand and re-opened with capped backoff
 * after it fails. A link never blocks its caller: when the gateway is slow past the bound, or its
 * stream is down, events are dropped and counted. Nothing acknowledged is lost by a drop: message
 * events are in the recipients' durable inboxes: the link remembers whose message events it dropped
 * and, once the stream has room again (or is open again), tells the gateway to re-check those users'
 * inboxes (`recheck_inboxes`), so even a dropped tail arrives without waiting for the next message.
 * Events handed to a stream that then failed count as dropped unless the gateway had confirmed them
 * (its credit), and after a failure the link opens again by itself at the end of the down time, for
 * the re-check it owes, rather than at the gateway's next event. Events that stand for stored state
 * and that a client shows the same when told twice (receipts, group changes, presence statuses,
 * closes) are not dropped by a failure: those not confirmed or still queued, and those pushed while
 * the stream is down, go out first on the next stream, in order (within the byte bound); a client
 * may get one of them twice. The gateway also re-checks every
 * connection when a Deliver stream ends abnormally, and a client resyncs from its cursor when it
 * reconnects.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { DeliverRequestSchema, GatewayService } from "../../gen/switchboard/gateway/v1/gateway_pb.js";
import type { Logger } from "../lib/log.js";
import type { Metrics } from "../lib/metrics.js";
import type { ServiceClient } from "../lib/rpc.js";

export type DeliverInit = MessageInitShape<typeof DeliverRequestSchema>;

/** A Deliver client plus what releases it (a gRPC channel; nothing for an in-process client). */
export type GatewayClient = ServiceClient<typeof GatewayService> & { close?(): void };

export interface GatewayLinkOptions {
  gatewayId: string;
  /** Opens a client to the gateway; called again for every re-dial. */
  dial: () => GatewayClient;
  queueBytesMax: number;
  /** First delay before a failed stream is dialled again (doubling up to 5 s); default 100 ms. */
  redialDelayMinMs?: number;
  /**
   * A stream that served this long before it failed was not failing in a row: the count of failures
   * (its backoff, and how often the link re-dials by itself) starts again. Default 5 s.
   */
  stableStreamMs?: number;
  log: Logger;
  metrics: Metrics;
}

const REDIAL_DELAY_MIN_MS = 100;
/** Users remembered for a targeted re-check; past this, the re-check covers all the gateway's users. */
const DROPPED_USERS_MAX = 10_000;
const REDIAL_DELAY_MAX_MS = 5_000;
/** Failures in a row after which a link waits for an event to dial again (instead of its timer). */
const REDIALS_BY_ITSELF_MAX = 3;

/** Approximate wire size of a Deliver request: what the byte bound counts. */
export function deliverBytes(req: DeliverInit): number {
  let bytes = 64;
  for (const u of req.userIds ?? []) bytes += u.length + 10;
  for (const s of req.sessionIds ?? []) bytes += s.length + 2;
  const kind = req.frame?.kind;
  if (kind?.case === "message") {
    const m = kind.value.message;
    bytes += (m?.body?.length ?? 0) + (m?.conversationId?.length ?? 0) + (m?.clientMsgId?.length ?? 0) + 64;
  } else bytes += 128;
  return bytes;
}

/**
 * Whose inboxes must be re-checked if `req` was lost: a message event's recipients, a re-check's
 * users ([]: all of the gateway's); undefined for events nothing durable stands behind (typing, ...).
 */
function recheckUsersOf(req: DeliverInit): readonly string[] | undefined {
  return req.frame?.kind?.case === "message" || req.recheckInboxes ? (req.userIds ?? []) : undefined;
}

/**
 * Whether `req` is sent again on the next stream when a stream fails before the gateway confirmed it:
 * an event standing for stored state that a client shows the same when told twice. Not message events
 * (their users' inboxes are re-checked instead) nor typing (a late indicator is a wrong one).
 */
function keptAcrossFailures(req: DeliverInit): boolean {
  const kind = req.frame?.kind?.case;
  return kind === "receipt" || kind === "conversation" || kind === "presence" || req.close !== undefined;
}

/**
 * One opened Deliver stream's feeder. A stream that failed is ended here too, so its feeder (still
 * awaited by the gRPC call's request pump) takes nothing more from the queue: an event it took would
 * go into a dead stream, lost unnoticed, while its successor's stream waits for it.
 */
interface Feed {
  ended: boolean;
  wake: (() => void) | undefined;
  /**
   * The events handed to gRPC and not yet confirmed by the gateway's credit, oldest first ("all" past
   * UNCONFIRMED_MAX): what a failure may have lost.
   */
  unconfirmed: Array<{ req: DeliverInit; bytes: number }> | "all";
}

/** Events tracked for confirmation per stream at most (the gateway confirms every 256). */
const UNCONFIRMED_MAX = 4_096;

export class GatewayLink {
  private readonly queue: Array<{ req: DeliverInit; bytes: number }> = [];
  private head = 0;
  private queuedBytes = 0;
  /** The feeder of the stream open now. */
  private feed: Feed | undefined;
  /** After a failure: re-dials at the end of the down time if users wait for a re-check. */
  private redialTimer: NodeJS.Timeout | undefined;
  /** The stream is down until this time (after a failure); events meanwhile are dropped. */
  private downUntil = 0;
  private failures = 0;
  private closed = false;
  private running: Promise<void> | undefined;
  /** Users whose message events were dropped since the last re-check ("all": too many to list). */
  private dropped: Set<string> | "all" | undefined;

  constructor(private readonly o: GatewayLinkOptions) {}

  get gatewayId(): string {
    return this.o.gatewayId;
  }

  /** Queues an event for the gateway; false (and counted) when it was dropped. */
  push(req: DeliverInit): boolean {
    if (this.closed) return false;
    const bytes = deliverBytes(req);
    if (Date.now() < this.downUntil) {
      // Kept for the next stream (the redial timer opens it), within the bound; the rest dropped.
      if (!keptAcrossFailures(req) || this.queuedBytes + bytes > this.o.queueBytesMax)
        return this.drop("unreachable", req);
      this.enqueue(req, bytes);
      return true;
    }
    if (this.queuedBytes + bytes > this.o.queueBytesMax) return this.drop("queue_full", req);
    if (this.dropped && this.queuedBytes < this.o.queueBytesMax / 2) this.enqueueRecheck();
    this.enqueue(req, bytes);
    return true;
  }

  /** Asks the gateway to re-read the inboxes of the users whose events were dropped. */
  private enqueueRecheck(): void {
    const users = this.dropped === "all" ? [] : [...(this.dropped ?? [])];
    this.dropped = undefined;
    const req: DeliverInit = { userIds: users, recheckInboxes: true };
    this.enqueue(req, deliverBytes(req));
  }

  private enqueue(req: DeliverInit, bytes: number): void {
    this.queue.push({ req, bytes });
    this.queuedBytes += bytes;
    this.o.metrics.gatewayStreamQueueBytes.inc(bytes);
    if (Date.now() >= this.downUntil) this.running ??= this.run();
    this.feed?.wake?.();
  }

  private drop(reason: "unreachable" | "queue_full", req: DeliverInit): false {
    this.o.metrics.deliveriesDroppedTotal.inc({ reason });
    this.rememberFor(req);
    return false;
  }

  private rememberFor(req: DeliverInit): void {
    const users = recheckUsersOf(req);
    if (users) this.remember(users);
  }

  private remember(userIds: readonly string[]): void {
    if (this.dropped === "all") return;
    this.dropped ??= new Set();
    for (const u of userIds) this.dropped.add(u);
    if (this.dropped.size > DROPPED_USERS_MAX || userIds.length === 0) this.dropped = "all";
  }

  /** Opens the stream and feeds it until it fails or the link closes. */
  private async run(): Promise<void> {
    const client = this.o.dial();
    const feed: Feed = { ended: false, wake: undefined, unconfirmed: [] };
    this.feed = feed;
    const openedAt = Date.now();
    this.o.metrics.gatewayStreams.inc();
    let failed = false;
    /** Events a failure may have lost that go out again on the next stream (keptAcrossFailures). */
    let lost: Array<{ req: DeliverInit; bytes: number }> = [];
    try {
      for await (const credit of client.deliver(this.drain(feed))) {
        // Responses are flow-control credit; a gateway that stops reading fills the byte bound.
        this.failures = 0;
        if (feed.unconfirmed !== "all") feed.unconfirmed.splice(0, credit.delivered);
      }
    } catch (err) {
      failed = true;
      if (!this.closed) {
        this.o.metrics.gatewayStreamFailuresTotal.inc();
        // Credit resets the count too, but a quiet gateway (fewer than 256 events) never gives any.
        if (Date.now() - openedAt >= (this.o.stableStreamMs ?? REDIAL_DELAY_MAX_MS)) this.failures = 0;
        this.failures++;
        const first = this.o.redialDelayMinMs ?? REDIAL_DELAY_MIN_MS;
        const delay = Math.min(REDIAL_DELAY_MAX_MS, first * 2 ** (this.failures - 1));
        this.downUntil = Date.now() + delay;
        // Events handed to gRPC and not confirmed may never have reached the gateway, which may not
        // have seen the stream end either (a half-open connection): their users re-check.
        if (feed.unconfirmed === "all") this.remember([]);
        else {
          for (const { req } of feed.unconfirmed) this.rememberFor(req);
          lost = feed.unconfirmed.filter(({ req }) => keptAcrossFailures(req));
        }
        // A gateway that is gone for good (no gateway-gone record says so) is not dialled forever:
        // after a few failures in a row, only its next event dials it again.
        clearTimeout(this.redialTimer);
        if (this.failures <= REDIALS_BY_ITSELF_MAX) {
          this.redialTimer = setTimeout(() => this.redial(), delay);
          this.redialTimer.unref();
        }
        this.o.log.warn("router: deliver stream to gateway failed; dropping its events until re-dial", {
          gatewayId: this.o.gatewayId,
          retryInMs: delay,
          err,
        });
      }
    } finally {
      feed.ended = true;
      feed.wake?.();
      if (this.feed === feed) this.feed = undefined;
      this.o.metrics.gatewayStreams.dec();
      client.close?.();
      this.clear(lost);
      this.running = undefined;
    }
    if (!failed && !this.closed)
      this.o.log.info("router: gateway ended its deliver stream", { gatewayId: this.o.gatewayId });
  }

  /** The end of a failure's down time: the stream opens again for the re-check it owes. */
  private redial(): void {
    this.redialTimer = undefined;
    if (this.closed || this.running || (!this.dropped && this.head === this.queue.length)) return;
    const early = this.downUntil - Date.now();
    if (early > 0) {
      // A timer may fire a little before the wall clock says it is due: the down time holds.
      this.redialTimer = setTimeout(() => this.redial(), early);
      this.redialTimer.unref();
      return;
    }
    if (this.dropped) this.enqueueRecheck();
    else this.running ??= this.run();
  }

  /** The stream's request side: the queue, until the link closes or the stream ends. */
  private async *drain(feed: Feed): AsyncIterable<DeliverInit> {
    for (;;) {
      if (feed.ended) return;
      if (this.head < this.queue.length) {
        const item = this.queue[this.head]!;
        this.queue[this.head++] = undefined as never;
        if (this.head > 1024 && this.head * 2 > this.queue.length) {
          this.queue.splice(0, this.head);
          this.head = 0;
        }
        this.queuedBytes -= item.bytes;
        this.o.metrics.gatewayStreamQueueBytes.dec(item.bytes);
        if (feed.unconfirmed !== "all") {
          feed.unconfirmed.push(item);
          if (feed.unconfirmed.length > UNCONFIRMED_MAX) feed.unconfirmed = "all";
        }
        yield item.req;
        continue;
      }
      // Drained: the users whose events were dropped meanwhile re-read their inboxes now, not at
      // their next message (which may never come).
      if (this.dropped) {
        this.enqueueRecheck();
        continue;
      }
      if (this.closed) return;
      await new Promise<void>((resolve) => {
        feed.wake = resolve;
      });
      feed.wake = undefined;
    }
  }

  /**
   * What a stream leaves queued when it ends: events kept across failures stay for the next stream,
   * after those of `lost` (handed to the failed stream, so they came first), within the byte bound
   * (the newest dropped past it); not once the link closes. The others are dropped, their users
   * re-checked.
   */
  private clear(lost: ReadonlyArray<{ req: DeliverInit; bytes: number }>): void {
    const queued = this.queue.slice(this.head);
    const keptQueued = this.closed ? [] : queued.filter(({ req }) => keptAcrossFailures(req));
    const kept = this.closed ? [] : [...lost, ...keptQueued];
    const dropped = queued.length - keptQueued.length;
    if (dropped > 0) this.o.metrics.deliveriesDroppedTotal.inc({ reason: "unreachable" }, dropped);
    for (const { req } of queued) this.rememberFor(req);
    this.o.metrics.gatewayStreamQueueBytes.dec(this.queuedBytes);
    this.queue.length = 0;
    this.head = 0;
    this.queuedBytes = 0;
    for (const item of kept) this.enqueueKept(item);
  }

  private enqueueKept(item: { req: DeliverInit; bytes: number }): void {
    if (this.queuedBytes + item.bytes > this.o.queueBytesMax) {
      this.drop("queue_full", item.req);
      return;
    }
    this.queue.push(item);
    this.queuedBytes += item.bytes;
    this.o.metrics.gatewayStreamQueueBytes.inc(item.bytes);
  }

  /** Ends the stream after what is queued has been handed to gRPC (or dropped if it fails). */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.redialTimer);
    this.feed?.wake?.();
    await this.running;
  }
}
