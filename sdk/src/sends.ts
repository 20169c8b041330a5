/**
 * The send pipeline: unacknowledged sends by their idempotency key, the server's (conversation,
 * sender, clientMsgId) (docs/protocol.md §3), put on the wire oldest first through a window of at
 * most `maxInflight`, and settled exactly once. A send that times out or whose connection drops goes
 * out again with the SAME clientMsgId, and the server's idempotency turns a resend of something it
 * already stored into the original ack, so retrying is safe, within the server's dedupe window: a
 * send is given up `maxAgeMs` after it was made, well before the window ends.
 *
 * Sends to one conversation keep the order they were made in: one the server refused for a retryable
 * reason goes out again before any later send to that conversation does (the server refuses those
 * that were already on their way with PREVIOUS_SEND_FAILED, and they go out again after it).
 */
import type { SendAck as PbSendAck } from "../../gen/switchboard/client/v1/client_pb.js";
import { type BackoffOptions, backoffDelay } from "./backoff.js";
import type { SendOptions, SendTarget } from "./client.js";
import {
  Code,
  fromWireError,
  isRetryable,
  LocalReason,
  localError,
  SwitchboardClientError,
} from "./errors.js";
import { CLIENT_MSG_ID_PATTERN, exceedsChars, randomId } from "./ids.js";
import type { FrameKind, RequestConn, RequestTracker } from "./requests.js";
import { type SendAck, toSendAck, type WelcomeInfo } from "./types.js";

type Timer = ReturnType<typeof setTimeout>;
type SendWireTarget = { case: "conversationId"; value: string } | { case: "toUser"; value: string };

/** `welcome.features` entry of a server that understands `Send.first_attempt`. */
const FIRST_ATTEMPT_FEATURE = "first_attempt";

/** Default body limit until a welcome tells us the server's. */
const BODY_CHARS_MAX_DEFAULT = 100_000;

/**
 * How long a send is tried before it is given up (SEND_EXPIRED), by default: 24 hours, a seventh of
 * the distributed backend's default dedupe window (`kafka.dedupeWindowHours`, 168 h). Past the window
 * a resend is stored as a new message (docs/protocol.md §3: "give up resending a message long before
 * the window ends").
 */
export const DEFAULT_SEND_MAX_AGE_MS = 24 * 60 * 60 * 1000;

/** The longest delay setTimeout keeps (about 24.8 days); a later deadline is checked before each attempt. */
const TIMER_MAX_MS = 2 ** 31 - 1;

interface PendingSend {
  clientMsgId: string;
  target: SendWireTarget;
  /** When the message was made (Unix ms): the caller's `createdAtMs`, else when send() was called. */
  createdAtMs: number;
  body: string;
  traceparent: string;
  promise: Promise<SendAck>;
  resolve(ack: SendAck): void;
  reject(err: SwitchboardClientError): void;
  /** The request id it is in flight under, if any. */
  requestId: number | undefined;
  retryTimer: Timer | undefined;
  deadline: Timer | undefined;
  /** Server-side retryable errors in a row (drives the retry backoff). */
  failures: number;
  /** The last retryable refusal, named if the send then times out (so a caller learns why). */
  lastRefusal: SwitchboardClientError | undefined;
  settled: boolean;
  /**
   * Not transmitted yet under a clientMsgId this client made up itself: the next transmission is
   * the key's first anywhere, which the frame says (`first_attempt`) so the server may skip looking
   * for an earlier copy. A caller's own clientMsgId may have been sent before (an outbox restored
   * after a restart), so it never is.
   */
  firstAttempt: boolean;
}

/** The conversation a send goes to: a direct one's id from the two users (as the server names it). */
function conversationOf(target: SendWireTarget, me: string): string {
  if (target.case === "conversationId") return target.value;
  return me <= target.value ? `dm:${me}~${target.value}` : `dm:${target.value}~${me}`;
}

/**
 * Whether two targets are the same conversation, so that one clientMsgId is one message in both.
 * A `toUser` target is the direct conversation with that user, which takes the user's own id to name;
 * until the first welcome tells it (`me` undefined) only targets of the same form are known to be the
 * same (two sends that are the same message after all both go out, and the server answers the second
 * with the first's ack, `duplicate`).
 */
function sameConversation(a: SendWireTarget, b: SendWireTarget, me: string | undefined): boolean {
  if (a.case === b.case) return a.value === b.value;
  return me !== undefined && conversationOf(a, me) === conversationOf(b, me);
}

/**
 * Server errors after which re-sending the same clientMsgId later can succeed (docs/protocol.md §6:
 * INTERNAL and a split service's code-named CANCELLED or UNKNOWN are resent too). The server holds
 * back later sends to the conversation behind exactly these (PREVIOUS_SEND_FAILED), so the two lists
 * must agree.
 */
const isRetryableSendError = isRetryable;

export interface SendQueueOptions {
  requests: RequestTracker;
  /** The connection sends may go out on (welcomed, not ended); undefined between connections. */
  openConnection(): RequestConn | undefined;
  /** The latest welcome: its limits decide which bodies are refused locally. */
  welcome(): WelcomeInfo | undefined;
  /** Most unacknowledged sends kept (queued or in flight). */
  maxPending: number;
  /** Most sends in flight on a connection at once. */
  maxInflight: number;
  /** Default overall deadline of a send, ms (0 = none). */
  sendTimeoutMs: number;
  /**
   * How long after it was made a send is given up whatever its timeout (SEND_EXPIRED), ms; 0 = never
   * (a resend after the server's dedupe window may store a duplicate).
   */
  maxAgeMs: number;
  /** How long one attempt waits for its ack before the send goes out again. */
  requestTimeoutMs: number;
  backoff: BackoffOptions;
  random: () => number;
}

export class SendQueue {
  /** Unacknowledged sends; Set order = send order, kept on resends. */
  private readonly sends = new Set<PendingSend>();
  /**
   * The same by clientMsgId: mostly one each, but one key may be pending in several conversations,
   * where it names different messages (docs/protocol.md §3).
   */
  private readonly byClientMsgId = new Map<string, PendingSend[]>();
  private inflight = 0;
  /**
   * When a send fails with a retryable error (RATE_LIMITED, UNAVAILABLE) every send waits, not just
   * that one: otherwise the whole in-flight window retries at once and the server sees a flood.
   */
  private pausedUntil = 0;
  private pauseTimer: Timer | undefined;
  /**
   * After a RATE_LIMITED refusal, sends go out one every `paceMs` (a tenth under the welcome's
   * sendsPerSecond) until the queue is empty: a backlog sent as fast as the window allows is mostly
   * refused, each refusal adding to the server's wait, and drains at a fraction of the allowed rate.
   */
  private paceMs = 0;
  private nextSendAt = 0;

  constructor(private readonly o: SendQueueOptions) {}

  /** Sends queued or in flight, not yet acknowledged. */
  get size(): number {
    return this.sends.size;
  }

  /**
   * Queues a send (or joins the one already pending under its key: the same clientMsgId to the same
   * conversation) and starts it if it can.
   */
  enqueue(target: SendTarget, body: string, options: SendOptions): Promise<SendAck> {
    const clientMsgId = options.clientMsgId ?? randomId();
    const wireTarget: SendWireTarget =
      "conversationId" in target
        ? { case: "conversationId", value: target.conversationId }
        : { case: "toUser", value: target.toUser };
    const invalid = this.validate(clientMsgId, body, options.createdAtMs);
    if (invalid) return Promise.reject(invalid);
    const me = this.o.welcome()?.userId;
    const existing = this.byClientMsgId
      .get(clientMsgId)
      ?.find((e) => sameConversation(e.target, wireTarget, me));
    if (existing) return existing.promise; // same key = same message: one ack for both callers
    const createdAtMs = options.createdAtMs ?? Date.now();
    const expiresInMs =
      this.o.maxAgeMs > 0 ? createdAtMs + this.o.maxAgeMs - Date.now() : Number.POSITIVE_INFINITY;
    if (expiresInMs <= 0) return Promise.reject(this.expiredError());
    if (this.sends.size >= this.o.maxPending) {
      return Promise.reject(
        localError(
          Code.RESOURCE_EXHAUSTED,
          LocalReason.SEND_QUEUE_FULL,
          `${this.sends.size} sends are already pending`,
        ),
      );
    }
    let resolve!: (ack: SendAck) => void;
    let reject!: (err: SwitchboardClientError) => void;
    const promise = new Promise<SendAck>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const entry: PendingSend = {
      clientMsgId,
      target: wireTarget,
      createdAtMs,
      body,
      traceparent: options.traceparent ?? "",
      promise,
      resolve,
      reject,
      requestId: undefined,
      retryTimer: undefined,
      deadline: undefined,
      failures: 0,
      lastRefusal: undefined,
      settled: false,
      firstAttempt: options.clientMsgId === undefined,
    };
    const timeoutMs = options.timeoutMs ?? this.o.sendTimeoutMs;
    if (timeoutMs > 0 && timeoutMs <= expiresInMs) {
      entry.deadline = setTimeout(() => {
        const refused = entry.lastRefusal;
        this.settle(
          entry,
          localError(
            Code.DEADLINE_EXCEEDED,
            LocalReason.TIMEOUT,
            `send not acknowledged within ${timeoutMs} ms (${refused ? `last refused with ${refused.reason}: ${refused.message}; ` : ""}it may still be stored; retry with the same clientMsgId)`,
          ),
        );
        this.pump(); // its place in the window, if it had one, is free
      }, timeoutMs);
    } else if (expiresInMs <= TIMER_MAX_MS) {
      // Checked before every attempt too: a timer may fire late after the device slept.
      entry.deadline = setTimeout(() => {
        this.settle(entry, this.expiredError());
        this.pump();
      }, expiresInMs);
    }
    this.sends.add(entry);
    const same = this.byClientMsgId.get(clientMsgId);
    if (same) same.push(entry);
    else this.byClientMsgId.set(clientMsgId, [entry]);
    this.pump();
    return promise;
  }

  /**
   * Puts queued sends on the wire, oldest first, keeping at most maxInflight outstanding; none
   * behind a send of its conversation that waits to be retried.
   */
  pump(): void {
    const conn = this.o.openConnection();
    if (!conn) return;
    const pausedMs = Math.max(this.pausedUntil, this.paceMs > 0 ? this.nextSendAt : 0) - Date.now();
    if (pausedMs > 0) {
      this.pumpIn(pausedMs);
      return;
    }
    const me = this.o.welcome()?.userId ?? "";
    const waiting = new Set<string>();
    for (const entry of this.sends.values()) {
      if (this.inflight >= this.o.maxInflight) return;
      if (entry.requestId !== undefined) continue;
      if (entry.retryTimer !== undefined) {
        waiting.add(conversationOf(entry.target, me));
        continue;
      }
      // Only while a send waits for its retry: the usual pump costs no work per entry for it.
      if (waiting.size > 0 && waiting.has(conversationOf(entry.target, me))) continue;
      if (this.expired(entry)) {
        this.settle(entry, this.expiredError());
        continue;
      }
      this.transmit(conn, entry);
      if (this.paceMs > 0) {
        // One at a time while paced: the next goes out when its turn comes.
        this.nextSendAt = Date.now() + this.paceMs;
        this.pumpIn(this.paceMs);
        return;
      }
    }
  }

  /** Pumps again in `ms` (once: a wake-up already set stands). */
  private pumpIn(ms: number): void {
    this.pauseTimer ??= setTimeout(() => {
      this.pauseTimer = undefined;
      this.pump();
    }, ms);
  }

  /**
   * The ack of an attempt we stopped waiting for (timed out and re-sent): matched by its key, the
   * clientMsgId in the conversation the ack names.
   */
  settleLate(ack: PbSendAck): void {
    const me = this.o.welcome()?.userId;
    const acked: SendWireTarget = { case: "conversationId", value: ack.conversationId };
    const entry = this.byClientMsgId.get(ack.clientMsgId)?.find((e) => sameConversation(e.target, acked, me));
    if (!entry) return;
    this.settle(entry, toSendAck(ack));
    // Its attempt in flight (it went out again) gave its place back: the sends queued behind the
    // window go out now, not at a next event that may never come (its own reply no longer pumps).
    this.pump();
  }

  /** The client stopped for good: every unacknowledged send fails with `err`. */
  failAll(err: SwitchboardClientError): void {
    for (const entry of [...this.sends.values()]) this.settle(entry, err);
  }

  /** close(): no pause may wake the queue up again. */
  cancelPauseTimer(): void {
    clearTimeout(this.pauseTimer);
    this.pauseTimer = undefined;
  }

  /** Whether the send is past its age bound (made `maxAgeMs` ago or earlier). */
  private expired(entry: PendingSend): boolean {
    return this.o.maxAgeMs > 0 && Date.now() - entry.createdAtMs >= this.o.maxAgeMs;
  }

  private expiredError(): SwitchboardClientError {
    const hours = Math.round((this.o.maxAgeMs / 3_600_000) * 100) / 100;
    return localError(
      Code.DEADLINE_EXCEEDED,
      LocalReason.SEND_EXPIRED,
      `send not acknowledged within ${hours} h of being made: given up, since a resend after the server's dedupe window would store it again (it may have been stored: look at the conversation before sending it again)`,
    );
  }

  private validate(
    clientMsgId: string,
    body: string,
    createdAtMs: number | undefined,
  ): SwitchboardClientError | undefined {
    if (createdAtMs !== undefined && !Number.isFinite(createdAtMs)) {
      return localError(
        Code.INVALID_ARGUMENT,
        LocalReason.INVALID_CREATED_AT,
        "createdAtMs must be a finite number",
      );
    }
    if (!CLIENT_MSG_ID_PATTERN.test(clientMsgId)) {
      return localError(
        Code.INVALID_ARGUMENT,
        LocalReason.INVALID_CLIENT_MSG_ID,
        "clientMsgId must be 1-64 printable ASCII characters",
      );
    }
    if (body.length === 0)
      return localError(Code.INVALID_ARGUMENT, LocalReason.EMPTY_BODY, "body must not be empty");
    const max = this.o.welcome()?.limits.bodyCharsMax || BODY_CHARS_MAX_DEFAULT;
    if (exceedsChars(body, max)) {
      return localError(Code.INVALID_ARGUMENT, LocalReason.BODY_TOO_LARGE, `body exceeds ${max} characters`);
    }
    return undefined;
  }

  private transmit(conn: RequestConn, entry: PendingSend): void {
    const kind: FrameKind = {
      case: "send",
      value: {
        target: entry.target,
        clientMsgId: entry.clientMsgId,
        body: entry.body,
        traceparent: entry.traceparent,
        // A server of an earlier version refuses the field in JSON frames: only where it is listed.
        firstAttempt:
          entry.firstAttempt && this.o.welcome()?.features.includes(FIRST_ATTEMPT_FEATURE) === true,
      },
    };
    entry.firstAttempt = false;
    const sent = this.o.requests.write(conn, kind);
    if (sent instanceof SwitchboardClientError) {
      this.settle(entry, sent);
      return;
    }
    const { id } = sent;
    entry.requestId = id;
    this.inflight++;
    // Ends this attempt (its slot in the window is free again) and tells whether the send still
    // waits for it; false once the attempt has ended (the send settled or went out again).
    const inFlight = (): boolean => {
      if (entry.requestId !== id) return false;
      entry.requestId = undefined;
      this.inflight--;
      return !entry.settled;
    };
    this.o.requests.track(conn, sent, this.o.requestTimeoutMs, {
      onTimeout: () => {
        // Re-sending the same clientMsgId is safe; the server answers with the original ack.
        if (inFlight()) this.pump();
      },
      onReply: (frame) => {
        if (!inFlight()) return;
        const kind = frame.kind;
        if (kind.case === "ack") {
          this.settle(entry, toSendAck(kind.value));
        } else if (kind.case === "error") {
          const err = fromWireError(kind.value);
          if (isRetryableSendError(err)) {
            entry.lastRefusal = err;
            const perSecond = this.o.welcome()?.limits.sendsPerSecond ?? 0;
            // A tenth under the rate: timers fire late and early, and a send a moment early is refused.
            if (err.reason === "RATE_LIMITED" && perSecond > 0) this.paceMs = 1100 / perSecond;
            // The server's hint when it gives one (a rate limit knows when it lets the next send
            // through); otherwise further off with each refusal in a row.
            const delay =
              err.retryAfterMs > 0
                ? err.retryAfterMs
                : backoffDelay(entry.failures++, this.o.backoff, this.o.random);
            this.pausedUntil = Math.max(this.pausedUntil, Date.now() + delay);
            entry.retryTimer = setTimeout(() => {
              entry.retryTimer = undefined;
              this.pump();
            }, delay);
          } else {
            this.settle(entry, err);
          }
        } else {
          this.settle(
            entry,
            localError(Code.INTERNAL, LocalReason.UNEXPECTED_REPLY, `unexpected reply ${kind.case} to send`),
          );
        }
        this.pump();
      },
      onConnectionLost: (dropped, err) => {
        if (!inFlight()) return;
        if (err) {
          this.settle(entry, err);
          return;
        }
        if (dropped) this.settle(entry, dropped); // the server refused its frame: never again
        // Otherwise it stays queued and goes out again after the next welcome.
      },
    });
  }

  private settle(entry: PendingSend, outcome: SendAck | SwitchboardClientError): void {
    if (entry.settled) return;
    entry.settled = true;
    this.sends.delete(entry);
    if (this.sends.size === 0) this.paceMs = 0; // the backlog is gone: back to the full window
    const same = this.byClientMsgId.get(entry.clientMsgId)?.filter((e) => e !== entry);
    if (same?.length) this.byClientMsgId.set(entry.clientMsgId, same);
    else this.byClientMsgId.delete(entry.clientMsgId);
    if (entry.requestId !== undefined) {
      entry.requestId = undefined;
      this.inflight--;
    }
    clearTimeout(entry.retryTimer);
    clearTimeout(entry.deadline);
    if (outcome instanceof SwitchboardClientError) entry.reject(outcome);
    else entry.resolve(outcome);
  }
}
