import type { Error as WireError } from "../../gen/switchboard/client/v1/client_pb.js";
import { Code } from "../../gen/switchboard/common/v1/common_pb.js";

export { Code };

/**
 * Every failure the SDK reports: a server `error` reply, a local validation failure, a timeout, or a
 * terminal close. `code` is the numeric gRPC-style Code enum the server uses, `reason` a stable
 * machine-readable string (the server's own reasons such as NOT_MEMBER pass through unchanged; the
 * SDK's local ones are listed in `LocalReason`), so apps switch on `reason`, never on `message`.
 */
export class SwitchboardClientError extends Error {
  override readonly name = "SwitchboardClientError";
  readonly code: Code;
  readonly reason: string;
  /** From the server for RESOURCE_EXHAUSTED / UNAVAILABLE: wait at least this long before retrying. */
  readonly retryAfterMs: number;
  /** The WebSocket close code when the error comes from a terminal close. */
  readonly closeCode: number | undefined;

  constructor(
    code: Code,
    reason: string,
    message: string,
    options?: { retryAfterMs?: number; closeCode?: number; cause?: unknown },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.reason = reason;
    this.retryAfterMs = options?.retryAfterMs ?? 0;
    this.closeCode = options?.closeCode;
  }
}

/** Reasons the SDK produces itself (server reasons are passed through as received). */
export const LocalReason = {
  /** Body longer than the server's limit (counted in Unicode code points, as the server does). */
  BODY_TOO_LARGE: "BODY_TOO_LARGE",
  EMPTY_BODY: "EMPTY_BODY",
  INVALID_CLIENT_MSG_ID: "INVALID_CLIENT_MSG_ID",
  /** The encoded frame exceeds the server's frame limit (or the server closed with 1009 because of it). */
  FRAME_TOO_LARGE: "FRAME_TOO_LARGE",
  /**
   * The server closed with 1007 (a text frame that was not valid UTF-8): the request taken to be the
   * culprit, the largest in flight, is never sent again.
   */
  INVALID_FRAME: "INVALID_FRAME",
  /** Too many unacknowledged sends queued. */
  SEND_QUEUE_FULL: "SEND_QUEUE_FULL",
  /**
   * A send still unacknowledged `sendMaxAgeMs` (default 24 h) after it was made: given up, because a
   * resend after the server's dedupe window (docs/protocol.md §3) could store it a second time. It
   * may have been stored: look at the conversation before sending it again.
   */
  SEND_EXPIRED: "SEND_EXPIRED",
  /** A send's `createdAtMs` is not a finite number. */
  INVALID_CREATED_AT: "INVALID_CREATED_AT",
  /** No reply (or no connection) within the timeout. */
  TIMEOUT: "TIMEOUT",
  /** The connection dropped while a non-idempotent request was in flight; it may or may not have run. */
  CONNECTION_LOST: "CONNECTION_LOST",
  /** The client is not started (call connect()) or was closed. */
  NOT_CONNECTED: "NOT_CONNECTED",
  /** close() was called while the request was pending. */
  CLOSED: "CLOSED",
  /**
   * A number argument (a seq, a limit, a minute, `untilMs`) that is not a whole number in its
   * field's range: refused before anything is sent (the server would take the frame for a malformed
   * one, and close the connection after ten).
   */
  INVALID_NUMBER: "INVALID_NUMBER",
  /** The token or URL function threw, or returned nothing usable, or no WebSocket could be loaded. */
  TOKEN_UNAVAILABLE: "TOKEN_UNAVAILABLE",
  /** The WebSocket could not be opened with this URL (terminal). */
  OPEN_FAILED: "OPEN_FAILED",
  /** An event listener threw (reported as an "error" event; the client goes on). */
  LISTENER_FAILED: "LISTENER_FAILED",
  /** The server replied with something the SDK did not expect for this request. */
  UNEXPECTED_REPLY: "UNEXPECTED_REPLY",
} as const;
export type LocalReason = (typeof LocalReason)[keyof typeof LocalReason];

/**
 * Whether asking again later can succeed: the server's transient refusals (docs/protocol.md §6:
 * UNAVAILABLE, INTERNAL, a split service's code-named DEADLINE_EXCEEDED, CANCELLED or UNKNOWN, an
 * ABORTED send), a rate limit, and the SDK's own timeouts and lost connections.
 */
export function isRetryable(err: SwitchboardClientError): boolean {
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

/** An error the SDK raises itself (not the server's verdict). */
export function localError(
  code: Code,
  reason: string,
  message: string,
  cause?: unknown,
): SwitchboardClientError {
  return new SwitchboardClientError(code, reason, message, cause === undefined ? undefined : { cause });
}

/** The server's `error` reply as the app sees it; an empty reason falls back to the code's name. */
export function fromWireError(e: WireError): SwitchboardClientError {
  const reason = e.reason || Code[e.code] || "UNKNOWN";
  return new SwitchboardClientError(e.code, reason, e.message || reason, { retryAfterMs: e.retryAfterMs });
}
