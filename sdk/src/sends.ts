/**
 * The send pipeline: unacknowledged sends by clientMsgId, put on the wire oldest first through a
 * window of at most `maxInflight`, and settled exactly once. A send that times out or whose
 * connection drops goes out again with the SAME clientMsgId, and the server's idempotency turns a
 * resend of something it already stored into the original ack, so retrying is always safe.
 *
 * Sends to one conversation keep the order they were made in: one the server refused for a retryable
 * reason goes out again before any later send to that conversation does (the server refuses those
 * that were already on their way with PREVIOUS_SEND_FAILED, and they go out again after it).
 */
import type { SendAck as PbSendAck } from "../../gen/switchboard/client/v1/client_pb.js";
import { type BackoffOptions, backoffDelay } from "./backoff.js";
import type { SendOptions, SendTarget } from "./client.js";
import { Code, fromWireError, LocalReason, localError, SwitchboardClientError } from "./errors.js";
import { CLIENT_MSG_ID_PATTERN, exceedsChars, randomId } from "./ids.js";
import { type FrameKind, frameTooLargeError, type RequestConn, type RequestTracker } from "./requests.js";
import { type SendAck, toSendAck, type WelcomeInfo } from "./types.js";

type Timer = ReturnType<typeof setTimeout>;
type SendWireTarget = { case: "conversationId"; value: string } | { case: "toUser"; value: string };

/** `welcome.features` entry of a server that understands `Send.first_attempt`. */
const FIRST_ATTEMPT_FEATURE = "first_attempt";

/** Default body limit until a welcome tells us the server's. */
const BODY_CHARS_MAX_DEFAULT = 100_000;

interface PendingSend {
  clientMsgId: string;
  target: SendWireTarget;
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
 * Server errors after which re-sending the same clientMsgId later can succeed (docs/protocol.md §6:
 * INTERNAL and a split service's code-named CANCELLED or UNKNOWN are resent too). The server holds
 * back later sends to the conversation behind exactly these (PREVIOUS_SEND_FAILED), so the two lists
 * must agree.
 */
function isRetryableSendError(err: SwitchboardClientError): boolean {
  switch (err.code) {
    case Code.UNAVAILABLE:
    case Code.ABORTED:
    case Code.DEADLINE_EXCEEDED:
    case Code.INTERNAL:
    case Code.UNKNOWN:
    case Code.CANCELLED:
      return true;
    case Code.RESOURCE_EXHAUSTED:
      // Rate limits carry a retry hint; limits without one (GROUP_FULL) will not go away by waiting.
      return err.retryAfterMs > 0 || err.reason === "RATE_LIMITED";
    default:
      return false;
  }
}

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
  /** How long one attempt waits for its ack before the send goes out again. */
  requestTimeoutMs: number;
  backoff: BackoffOptions;
  random: () => number;
}

export class SendQueue {
  /** Unacknowledged sends by clientMsgId; Map order = send order, kept on resends. */
  private readonly sends = new Map<string, PendingSend>();
  private inflight = 0;
  /**
   * When a send fails with a retryable error (RATE_LIMITED, UNAVAILABLE) every send waits, not just
   * that one: otherwise the whole in-flight window retries at once and the server sees a flood.
   */
  private pausedUntil = 0;
  private pauseTimer: Timer | undefined;

  constructor(private readonly o: SendQueueOptions) {}

  /** Sends queued or in flight, not yet acknowledged. */
  get size(): number {
    return this.sends.size;
  }

  /** Queues a send (or joins the one already pending under its clientMsgId) and starts it if it can. */
  enqueue(target: SendTarget, body: string, options: SendOptions): Promise<SendAck> {
    const clientMsgId = options.clientMsgId ?? randomId();
    const wireTarget: SendWireTarget =
      "conversationId" in target
        ? { case: "conversationId", value: target.conversationId }
        : { case: "toUser", value: target.toUser };
    const invalid = this.validate(clientMsgId, body);
    if (invalid) return Promise.reject(invalid);
    const existing = this.sends.get(clientMsgId);
    if (existing) return existing.promise; // same key = same message: one ack for both callers
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
      body,
      traceparent: options.traceparent ?? "",
      promise,
      resolve,
      reject,
      requestId: undefined,
      retryTimer: undefined,
      deadline: undefined,
      failures: 0,
      settled: false,
      firstAttempt: options.clientMsgId === undefined,
    };
    const timeoutMs = options.timeoutMs ?? this.o.sendTimeoutMs;
    if (timeoutMs > 0) {
      entry.deadline = setTimeout(() => {
        this.settle(
          entry,
          localError(
            Code.DEADLINE_EXCEEDED,
            LocalReason.TIMEOUT,
            `send not acknowledged within ${timeoutMs} ms (it may still be stored; retry with the same clientMsgId)`,
          ),
        );
      }, timeoutMs);
    }
    this.sends.set(clientMsgId, entry);
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
    const pausedMs = this.pausedUntil - Date.now();
    if (pausedMs > 0) {
      this.pauseTimer ??= setTimeout(() => {
        this.pauseTimer = undefined;
        this.pump();
      }, pausedMs);
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
      this.transmit(conn, entry);
    }
  }

  /** The ack of an attempt we stopped waiting for (timed out and re-sent): matched by clientMsgId. */
  settleLate(ack: PbSendAck): void {
    const entry = this.sends.get(ack.clientMsgId);
    if (entry) this.settle(entry, toSendAck(ack));
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

  private validate(clientMsgId: string, body: string): SwitchboardClientError | undefined {
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
            const delay = Math.max(
              err.retryAfterMs,
              backoffDelay(entry.failures++, this.o.backoff, this.o.random),
            );
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
      onConnectionLost: (frameTooBig, err) => {
        if (!inFlight()) return;
        if (err) {
          this.settle(entry, err);
          return;
        }
        if (frameTooBig) this.settle(entry, frameTooLargeError());
        // Otherwise it stays queued and goes out again after the next welcome.
      },
    });
  }

  private settle(entry: PendingSend, outcome: SendAck | SwitchboardClientError): void {
    if (entry.settled) return;
    entry.settled = true;
    if (this.sends.get(entry.clientMsgId) === entry) this.sends.delete(entry.clientMsgId);
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
