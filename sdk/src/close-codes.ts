/**
 * WebSocket close codes the Switchboard gateway uses, and what a client must do about each. The rule
 * of thumb: 1xxx and 30xx mean "come back" (with backoff), 35xx mean "do not come back with the same
 * credentials/behaviour" (terminal).
 */
export interface CloseCodeInfo {
  /** Stable name; for terminal codes also the `reason` of the error the SDK reports. */
  readonly name: string;
  /** Whether the client reconnects. False = terminal: pending work is rejected, nothing retries. */
  readonly reconnect: boolean;
  /** "long" = the server asked us to slow down; wait longer than the usual backoff. */
  readonly backoff: "normal" | "long";
  /** A new token is needed first (a fixed string token cannot recover from this). */
  readonly freshToken: boolean;
  /** The server refused a frame of the connection (1007, 1009): the culprit must never be re-sent. */
  readonly dropFrame: boolean;
  /** Delivery may have been cut short (we always resync on reconnect anyway). */
  readonly resync: boolean;
}

const reconnect = (name: string, extra: Partial<CloseCodeInfo> = {}): CloseCodeInfo => ({
  name,
  reconnect: true,
  backoff: "normal",
  freshToken: false,
  dropFrame: false,
  resync: true,
  ...extra,
});
const terminal = (name: string): CloseCodeInfo => ({
  name,
  reconnect: false,
  backoff: "normal",
  freshToken: false,
  dropFrame: false,
  resync: false,
});

export const CLOSE_CODES = {
  /** Normal closure. When the server does it, reconnect (only our own close() is final). */
  1000: reconnect("NORMAL"),
  /** Going away (server restart, page navigation). */
  1001: reconnect("GOING_AWAY"),
  /** A frame broke RFC 6455 (the WebSocket layer closes): a bug below this SDK; reconnect. */
  1002: reconnect("PROTOCOL_ERROR"),
  /** No status received (treated like 1006). */
  1005: reconnect("NO_STATUS"),
  /** Abnormal closure: TCP reset, refused connection, failed handshake. */
  1006: reconnect("ABNORMAL"),
  /**
   * A text frame we sent was not valid UTF-8 (the WebSocket layer closes, docs/protocol.md §7):
   * reconnect but never resend that frame.
   */
  1007: reconnect("INVALID_FRAME_PAYLOAD_DATA", { dropFrame: true }),
  /**
   * A message broke a bound of the server's WebSocket layer (more than 16,384 fragments): this SDK
   * never fragments, so no frame of ours is to blame; reconnect.
   */
  1008: reconnect("POLICY_VIOLATION"),
  /** A frame we sent was too big: reconnect but never resend that frame. */
  1009: reconnect("MESSAGE_TOO_BIG", { dropFrame: true }),
  /** Server error. */
  1011: reconnect("INTERNAL_ERROR"),
  /** Shutdown/draining: reconnect (the server usually announced it with a `reconnect` event). */
  3001: reconnect("SHUTDOWN"),
  /** Token expired: reconnect with a fresh token from the token function. */
  3005: reconnect("TOKEN_EXPIRED", { freshToken: true }),
  /** We read too slowly and the server dropped us: reconnect and resync. */
  3008: reconnect("SLOW_CONSUMER"),
  /** Too many requests: reconnect with a longer backoff. */
  3013: reconnect("TOO_MANY_REQUESTS", { backoff: "long" }),
  /** A backend closed the connection and allows reconnecting (e.g. the user's rights changed). */
  3014: reconnect("DISCONNECTED", { backoff: "long" }),
  /** The user holds too many connections on that gateway: reconnect with a longer backoff. */
  3015: reconnect("TOO_MANY_CONNECTIONS", { backoff: "long" }),
  /** Invalid token: terminal. */
  3500: terminal("INVALID_TOKEN"),
  /** Too many malformed frames: terminal (a bug in the client; retrying would loop). */
  3501: terminal("BAD_REQUEST"),
  /** No auth frame in time: terminal. */
  3502: terminal("AUTH_TIMEOUT"),
  /** A backend closed the user's connections for good (e.g. a banned account): terminal. */
  3503: terminal("KICKED"),
} as const satisfies Record<number, CloseCodeInfo>;

export type KnownCloseCode = keyof typeof CLOSE_CODES;

/** Named constants for the codes above, e.g. `CloseCode.INVALID_TOKEN === 3500`. */
export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  NO_STATUS: 1005,
  ABNORMAL: 1006,
  INVALID_FRAME_PAYLOAD_DATA: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  SHUTDOWN: 3001,
  TOKEN_EXPIRED: 3005,
  SLOW_CONSUMER: 3008,
  TOO_MANY_REQUESTS: 3013,
  DISCONNECTED: 3014,
  TOO_MANY_CONNECTIONS: 3015,
  INVALID_TOKEN: 3500,
  BAD_REQUEST: 3501,
  AUTH_TIMEOUT: 3502,
  KICKED: 3503,
} as const satisfies Record<string, KnownCloseCode>;

/**
 * Classifies any close code. Unknown codes in 3500-3599 are terminal (same family as the known
 * terminal ones, so a newer server's terminal code does not make old clients hammer it); every other
 * unknown code reconnects with backoff, which is the safe default for a long-lived client.
 */
export function classifyCloseCode(code: number): CloseCodeInfo {
  const known = (CLOSE_CODES as Record<number, CloseCodeInfo>)[code];
  if (known) return known;
  if (code >= 3500 && code <= 3599) return terminal(`CLOSED_${code}`);
  return reconnect(`CLOSED_${code}`);
}
