/**
 * WebSocket close codes sent by the gateway (docs/protocol.md has the table). Reconnect-class
 * codes tell the client to reconnect with jittered backoff and resync; terminal codes tell it to stop.
 */
export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  /** Server shutting down or draining: reconnect (elsewhere). */
  SHUTDOWN: 3001,
  /** The token expired: reconnect with a fresh token. */
  TOKEN_EXPIRED: 3005,
  /** The client read too slowly and its send queue overflowed: reconnect and sync. */
  SLOW_CONSUMER: 3008,
  /** Flooding despite RATE_LIMITED errors: reconnect after a backoff. */
  TOO_MANY_REQUESTS: 3013,
  /** A backend closed the connection (ChatService.Disconnect, reconnect allowed). */
  DISCONNECTED: 3014,
  /** The user already holds gateway.userConnectionsMax connections here: reconnect after a backoff. */
  TOO_MANY_CONNECTIONS: 3015,
  /** The token is invalid: do not reconnect with it. */
  INVALID_TOKEN: 3500,
  /** Too many malformed frames or a protocol violation: do not reconnect blindly. */
  BAD_REQUEST: 3501,
  /** No authentication within the deadline. */
  AUTH_TIMEOUT: 3502,
  /** A backend closed the user's connections for good (ChatService.Disconnect): do not reconnect. */
  KICKED: 3503,
} as const;

export const RECONNECT_CODES: ReadonlySet<number> = new Set([
  CloseCode.GOING_AWAY,
  CloseCode.MESSAGE_TOO_BIG,
  CloseCode.INTERNAL_ERROR,
  CloseCode.SHUTDOWN,
  CloseCode.TOKEN_EXPIRED,
  CloseCode.SLOW_CONSUMER,
  CloseCode.TOO_MANY_REQUESTS,
  CloseCode.DISCONNECTED,
  CloseCode.TOO_MANY_CONNECTIONS,
]);
