import { Code } from "../../gen/switchboard/common/v1/common_pb.js";

export { Code };

/** The ErrorInfo domain of Switchboard's reasons (docs/protocol.md §6) on the gRPC APIs. */
export const ERROR_DOMAIN = "switchboard.dev";

/**
 * The one error type of Switchboard. `code` mirrors gRPC status codes, `reason` is a stable
 * machine-readable string clients may switch on (documented in docs/protocol.md), `message` is for
 * humans. `cause` is kept for logs and never sent to clients.
 */
export class SwitchboardError extends Error {
  override readonly name = "SwitchboardError";
  readonly code: Code;
  readonly reason: string;
  /** For RESOURCE_EXHAUSTED / UNAVAILABLE: the earliest sensible retry, in milliseconds. */
  readonly retryAfterMs: number;
  /**
   * Context of this occurrence for programs (e.g. `{ conversationId }`): sent to gRPC callers in the
   * error's google.rpc.ErrorInfo metadata, never to WebSocket clients. Keys are lowerCamelCase.
   */
  readonly metadata: Readonly<Record<string, string>>;
  /**
   * What a client is told (a WebSocket error frame, a gRPC status this process answers with): the
   * message, unless it holds what only the platform's operators should read (an internal call's
   * transport error names internal addresses).
   */
  readonly publicMessage: string;

  constructor(
    code: Code,
    reason: string,
    message: string,
    options?: {
      cause?: unknown;
      retryAfterMs?: number;
      metadata?: Record<string, string>;
      publicMessage?: string;
    },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.reason = reason;
    this.retryAfterMs = options?.retryAfterMs ?? 0;
    this.metadata = options?.metadata ?? {};
    this.publicMessage = options?.publicMessage ?? message;
  }

  /** Normalises anything thrown into a SwitchboardError; unknown errors become INTERNAL. */
  static from(err: unknown): SwitchboardError {
    if (err instanceof SwitchboardError) return err;
    return new SwitchboardError(Code.INTERNAL, "INTERNAL", "internal error", { cause: err });
  }
}

/**
 * Reasons a gRPC server gives a caller whose own credential or identity it refuses (ADR 0007). A
 * process that gets one from a peer was refused for what it is, not for what its client asked:
 * the deployment's fault (a key rotated out, a policy, TokenReview overloaded during a rollout).
 */
export const CREDENTIAL_REFUSALS: ReadonlySet<string> = new Set([
  "UNAUTHENTICATED",
  "MALFORMED_CREDENTIALS",
  "INVALID_CREDENTIALS",
  "CONFLICTING_CREDENTIALS",
  "CREDENTIALS_CHANGED",
  "TOKEN_REVIEW_FAILED",
  "TOKEN_REVIEWS_BUSY",
  "CERTIFICATE_NOT_TRUSTED",
  "CERTIFICATE_EXPIRED",
  "CERTIFICATE_NOT_YET_VALID",
  "CERTIFICATE_NO_PRINCIPAL",
  "CERTIFICATE_NOT_FOR_CLIENTS",
  "METHOD_NOT_ALLOWED",
]);

/**
 * What a client is told of `err`: a peer's refusal of this process's own credential (above) is
 * UNAVAILABLE, retry in a second, for nothing the client did or can fix, and the peer's reason
 * would read as the client's own token being bad (docs/protocol.md §6). Anything else as it is.
 */
export function forClients(err: SwitchboardError): SwitchboardError {
  if (!CREDENTIAL_REFUSALS.has(err.reason)) return err;
  return new SwitchboardError(Code.UNAVAILABLE, "UNAVAILABLE", "an internal call failed: UNAVAILABLE", {
    cause: err,
    retryAfterMs: 1_000,
  });
}

/** Shorthands for the errors the services raise most. */
export const errors = {
  invalid: (reason: string, message: string) => new SwitchboardError(Code.INVALID_ARGUMENT, reason, message),
  notFound: (reason: string, message: string) => new SwitchboardError(Code.NOT_FOUND, reason, message),
  denied: (reason: string, message: string) => new SwitchboardError(Code.PERMISSION_DENIED, reason, message),
  exhausted: (reason: string, message: string, retryAfterMs = 0) =>
    new SwitchboardError(Code.RESOURCE_EXHAUSTED, reason, message, { retryAfterMs }),
  unauthenticated: (reason: string, message: string) =>
    new SwitchboardError(Code.UNAUTHENTICATED, reason, message),
  unavailable: (reason: string, message: string, cause?: unknown) =>
    new SwitchboardError(Code.UNAVAILABLE, reason, message, { cause, retryAfterMs: 1000 }),
  precondition: (reason: string, message: string) =>
    new SwitchboardError(Code.FAILED_PRECONDITION, reason, message),
  aborted: (reason: string, message: string) => new SwitchboardError(Code.ABORTED, reason, message),
};

const violationListeners = new Set<(message: string) => void>();

/**
 * Calls `listener` with every invariant violation from now on (the process counts them in
 * switchboard_invariant_violations_total); returns what stops it.
 */
export function onInvariantViolation(listener: (message: string) => void): () => void {
  violationListeners.add(listener);
  return () => violationListeners.delete(listener);
}

/** The error of a violated invariant (a programmer error, never bad input), counted as it is made. */
export function invariantViolated(message: string): Error {
  for (const listener of violationListeners) listener(message);
  return new Error(`invariant violated: ${message}`);
}

/**
 * Invariant check (TigerBeetle style): a failed assertion is a programmer error, never bad input.
 * It throws so tests crash loudly; production counts it (onInvariantViolation) and the caller's owner
 * decides.
 */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw invariantViolated(message);
}
