/**
 * The connection lifecycle: one logical connection to a gateway that outlives its sockets. Each
 * socket is opened with a token and URL asked for anew, must be welcomed in time, is kept honest by
 * heartbeats, and is left when the server announces a drain. After a close the connection either
 * reconnects with backoff or, on a terminal close, stops for good. connect() and the requests that
 * wait for a connection are released by the welcome and failed when the client stops.
 */
import type { ServerFrame } from "../../gen/switchboard/client/v1/client_pb.js";
import { type BackoffOptions, backoffDelay, longBackoffDelay } from "./backoff.js";
import type { ClientState, TokenSource, UrlSource } from "./client.js";
import { CloseCode, classifyCloseCode } from "./close-codes.js";
import { Code, fromWireError, LocalReason, localError, SwitchboardClientError } from "./errors.js";
import { droppedFrameError, type RequestConn, type RequestTracker } from "./requests.js";
import { unverifiedClaims } from "./token-claims.js";
import {
  type AuthMode,
  decodeFrame,
  type Encoding,
  openSocket,
  type ResolvedWebSocket,
  resolveWebSocket,
  type SocketLike,
  upgradeStatus,
  type WebSocketConstructor,
} from "./transport.js";
import { type DisconnectInfo, toWelcome, type WelcomeInfo } from "./types.js";

type Timer = ReturnType<typeof setTimeout>;

/** Per-connection state; a new object per socket, so stale callbacks can be recognised and ignored. */
export interface Conn {
  socket: SocketLike;
  welcome: WelcomeInfo | undefined;
  /** Upgrade refused with this HTTP status (ws reports it in the error event). */
  httpStatus: number | undefined;
  /** The token this connection was opened with. */
  token: string;
  /** Last transport error (e.g. "connect ECONNREFUSED"), to explain a close without a reason. */
  lastError: string | undefined;
  /** Server asked us to reconnect (drain) at this time. */
  drainAt: number | undefined;
  welcomeTimer: Timer | undefined;
  drainTimer: Timer | undefined;
  heartbeat: ReturnType<typeof setInterval> | undefined;
  /** The request id of the auth frame (frame auth), whose error reply explains the close after it. */
  authId: number | undefined;
  /** The server's error answering the auth frame (TOKEN_EXPIRED, AUTH_UNAVAILABLE, …). */
  authError: SwitchboardClientError | undefined;
  done: boolean;
  closeWaiters: Array<() => void>;
}

interface Waiter {
  resolve(conn: Conn): void;
  reject(err: SwitchboardClientError): void;
  timer: Timer | undefined;
}

const noop = (): void => {};

export interface ConnectionOptions {
  url: UrlSource;
  token: TokenSource;
  encoding: Encoding;
  backoff: BackoffOptions;
  random: () => number;
  /** Timeout of the welcome after opening and of heartbeat answers. */
  requestTimeoutMs: number;
  /** The app's WebSocket implementation, if it gave one. */
  WebSocket: WebSocketConstructor | undefined;
  /** The app's auth mode, if it chose one. */
  auth: AuthMode | undefined;
  requests: RequestTracker;
}

/** What the connection tells the client. */
export interface ConnectionHooks {
  /** A frame for the client arrived on the current connection. */
  frame(conn: Conn, frame: ServerFrame): void;
  /** `conn` was welcomed; connect() and the requests waiting for a connection are released already. */
  opened(conn: Conn, welcome: WelcomeInfo): void;
  disconnected(info: DisconnectInfo): void;
  error(err: SwitchboardClientError): void;
  /**
   * The client stops for good (close() or a terminal failure): its unacknowledged sends fail with
   * `err`. Called before the requests and connect() are failed, the order the app sees them reject.
   */
  failSends(err: SwitchboardClientError): void;
}

export class Connection {
  private _state: ClientState = "idle";
  private _welcome: WelcomeInfo | undefined;
  private conn: Conn | undefined;
  /** The URL of the current (or last) connection attempt. */
  private currentUrl = "";
  private resolved: ResolvedWebSocket | undefined;
  /** Bumped by close(): an openConnection() that awaited across it must not proceed. */
  private epoch = 0;
  private attempt = 0;
  /** When the current run of failed connections began (Date.now()); undefined while connected. */
  private outageStartedAt: number | undefined;
  private lastDisconnect: DisconnectInfo | undefined;
  private unauthorizedStreak = 0;
  private reconnectTimer: Timer | undefined;
  private readonly openWaiters = new Set<Waiter>();
  private connectPromise: Promise<WelcomeInfo> | undefined;
  private connectSettle:
    | { resolve(w: WelcomeInfo): void; reject(e: SwitchboardClientError): void }
    | undefined;

  constructor(
    private readonly o: ConnectionOptions,
    private readonly hooks: ConnectionHooks,
  ) {}

  get state(): ClientState {
    return this._state;
  }

  /** The latest welcome, once connected. */
  get welcome(): WelcomeInfo | undefined {
    return this._welcome;
  }

  /** The current connection, welcomed or not yet; undefined between connections. */
  get current(): Conn | undefined {
    return this.conn;
  }

  /** The current connection once welcomed, until it ends. */
  get open(): Conn | undefined {
    const conn = this.conn;
    return conn?.welcome && !conn.done ? conn : undefined;
  }

  /** Whether `conn` is still the current connection (callbacks of an older one are ignored). */
  isCurrent(conn: RequestConn): boolean {
    return this.conn === conn;
  }

  /**
   * Starts connecting unless already connecting or open. Every caller shares one promise until a
   * welcome or a stop settles it; `timeoutMs` only ends this caller's wait, not the connecting.
   */
  connect(options: { timeoutMs?: number } = {}): Promise<WelcomeInfo> {
    if (this._state === "open" && this._welcome) return Promise.resolve(this._welcome);
    if (!this.connectPromise) {
      this.connectPromise = new Promise<WelcomeInfo>((resolve, reject) => {
        this.connectSettle = { resolve, reject };
      });
      this.connectPromise.catch(noop); // rejections are delivered to callers; never unhandled here
    }
    if (this._state === "idle" || this._state === "closed") {
      this._state = "connecting";
      void this.openConnection();
    }
    const promise = this.connectPromise;
    const timeoutMs = options.timeoutMs;
    if (timeoutMs === undefined || timeoutMs <= 0) return promise;
    return new Promise<WelcomeInfo>((resolve, reject) => {
      const timer = setTimeout(() => reject(this.notConnectedError(timeoutMs)), timeoutMs);
      promise.then(
        (w) => {
          clearTimeout(timer);
          resolve(w);
        },
        (e: unknown) => {
          clearTimeout(timer);
          reject(e);
        },
      );
    });
  }

  /**
   * Stops for good (until connect()): no reconnect, everything waiting fails with CLOSED. Resolves
   * once the socket has closed, or after 1 s without a closing handshake (then it is terminated).
   */
  close(): Promise<void> {
    const wasActive = this._state === "connecting" || this._state === "open";
    this._state = "closed";
    this.epoch++;
    this.clearReconnectTimer();
    const err = localError(Code.CANCELLED, LocalReason.CLOSED, "client closed");
    const conn = this.conn;
    this.conn = undefined;
    let closed: Promise<void> = Promise.resolve();
    if (conn) {
      closed = new Promise<void>((resolve) => {
        conn.closeWaiters.push(resolve);
        // Do not wait forever for a closing handshake from an unresponsive server.
        const fallback = setTimeout(() => {
          conn.socket.terminate?.();
          resolve();
        }, 1_000);
        conn.closeWaiters.push(() => clearTimeout(fallback));
      });
      this.finish(conn);
      try {
        conn.socket.close(1000, "client closed");
      } catch {
        conn.socket.terminate?.();
      }
    }
    this.failEverything(err);
    if (wasActive) this.hooks.disconnected({ code: 1000, reason: "client closed", willReconnect: false });
    return closed;
  }

  /** The current connection once welcomed; waits for one (up to `timeoutMs`) while connecting. */
  whenOpen(timeoutMs: number): Promise<Conn> {
    const open = this.open;
    if (open) return Promise.resolve(open);
    if (this._state === "idle" || this._state === "closed") {
      return Promise.reject(
        localError(
          Code.FAILED_PRECONDITION,
          LocalReason.NOT_CONNECTED,
          "not connected: call connect() first",
        ),
      );
    }
    return new Promise<Conn>((resolve, reject) => {
      const waiter: Waiter = { resolve, reject, timer: undefined };
      waiter.timer = setTimeout(() => {
        this.openWaiters.delete(waiter);
        reject(this.notConnectedError(timeoutMs));
      }, timeoutMs);
      this.openWaiters.add(waiter);
    });
  }

  /** Gives up on a connection we consider dead (no welcome, no heartbeat answer, failed sync). */
  abandon(conn: Conn, reason: string): void {
    if (this.conn !== conn || conn.done) return;
    const socket = conn.socket;
    socket.onmessage = null;
    socket.onopen = null;
    try {
      if (socket.terminate) socket.terminate();
      else socket.close(4000, reason);
    } catch {
      // already closing
    }
    this.onSocketClose(conn, 1006, reason);
  }

  /** A connection worked end to end: the next outage starts again from the short backoff. */
  endOutage(): void {
    this.attempt = 0;
    this.outageStartedAt = undefined;
  }

  private async openConnection(): Promise<void> {
    const epoch = this.epoch;
    let token: string;
    try {
      this.resolved ??= await resolveWebSocket(this.o.WebSocket);
      token = typeof this.o.token === "string" ? this.o.token : await this.o.token();
      const url = typeof this.o.url === "string" ? this.o.url : await this.o.url();
      // A URL function may answer better next time (e.g. a discovery endpoint that was draining).
      if (typeof url !== "string" || url === "") throw new Error(`the url function gave ${String(url)}`);
      this.currentUrl = url;
    } catch (cause) {
      if (epoch !== this.epoch) return;
      this.hooks.error(
        localError(
          Code.UNAVAILABLE,
          LocalReason.TOKEN_UNAVAILABLE,
          `cannot connect: ${String(cause)}`,
          cause,
        ),
      );
      this.scheduleReconnect(1006, "token or WebSocket unavailable", this.nextBackoff(false));
      return;
    }
    if (epoch !== this.epoch) return; // close() was called while we awaited
    let socket: SocketLike;
    try {
      socket = openSocket(
        this.resolved.ctor,
        this.currentUrl,
        token,
        this.o.auth ?? this.resolved.auth,
        this.o.encoding,
      );
    } catch (cause) {
      // A malformed URL (or a WebSocket that rejects our arguments) will not fix itself.
      this.terminal(
        localError(
          Code.INVALID_ARGUMENT,
          "OPEN_FAILED",
          `cannot open ${this.currentUrl}: ${String(cause)}`,
          cause,
        ),
        1006,
        "cannot open socket",
      );
      return;
    }
    const frameAuth = (this.o.auth ?? this.resolved.auth) === "frame";
    const conn: Conn = {
      socket,
      token,
      welcome: undefined,
      httpStatus: undefined,
      lastError: undefined,
      drainAt: undefined,
      welcomeTimer: undefined,
      drainTimer: undefined,
      heartbeat: undefined,
      authId: undefined,
      authError: undefined,
      done: false,
      closeWaiters: [],
    };
    this.conn = conn;
    // Covers a TCP connect that hangs, an upgrade that never completes and a server that never welcomes.
    conn.welcomeTimer = setTimeout(() => this.abandon(conn, "no welcome in time"), this.o.requestTimeoutMs);
    socket.onopen = () => {
      if (this.conn !== conn || !frameAuth) return;
      const sent = this.o.requests.write(conn, { case: "auth", value: { token } });
      if (!(sent instanceof SwitchboardClientError)) conn.authId = sent.id;
    };
    socket.onmessage = (event) => this.receive(conn, event.data);
    // A no-op handler stays installed for the socket's whole life: `ws` throws on an unhandled "error".
    socket.onerror = (event) => {
      conn.httpStatus ??= upgradeStatus(event);
      conn.lastError = event.message ?? (event.error instanceof Error ? event.error.message : undefined);
    };
    socket.onclose = (event) => this.onSocketClose(conn, event.code, event.reason);
  }

  private onSocketClose(conn: Conn, code: number, closeReason: string): void {
    const waiters = conn.closeWaiters.splice(0);
    for (const w of waiters) w();
    if (conn.done || this.conn !== conn) return;
    const reason = closeReason || conn.lastError || "";
    this.conn = undefined;
    const info = classifyCloseCode(code);
    this.finish(conn, code);
    if (this._state === "closed") return;
    // Why the server would not have this connection, when it said so before closing (an error
    // answering the auth frame) or says so by the close alone (3015 after header auth).
    const refusal = conn.authError ?? (conn.welcome ? undefined : refusalOfClose(code, reason));

    const status = conn.httpStatus;
    // A header-authenticated upgrade refused with 401 says nothing more; a token already expired by
    // its own `exp` is why, and that is what close 3005 says to an auth frame: with a token function,
    // ask it again after the backoff, as often as it takes (it may catch up with its issuer).
    if (status === 401 && typeof this.o.token === "function" && expiredByItsClaims(conn.token)) {
      const expired = localError(
        Code.UNAUTHENTICATED,
        "TOKEN_EXPIRED",
        "the server refused the token (HTTP 401), which had expired: asking the token function again",
      );
      this.scheduleReconnect(code, "token expired", this.nextBackoff(false));
      this.hooks.error(expired);
      return;
    }
    if (status === 401 || status === 403) {
      // A token function may just have handed us a stale token: one fresh try, then give up.
      if (typeof this.o.token === "function" && this.unauthorizedStreak === 0) {
        this.unauthorizedStreak++;
        this.scheduleReconnect(code, `upgrade refused with HTTP ${status}`, this.nextBackoff(false));
      } else {
        this.terminal(
          localError(Code.UNAUTHENTICATED, "INVALID_TOKEN", `the server refused the token (HTTP ${status})`),
          code,
          reason || `HTTP ${status}`,
        );
      }
      return;
    }
    if (!info.reconnect) {
      const codeOf = info.name === "BAD_REQUEST" ? Code.INVALID_ARGUMENT : Code.UNAUTHENTICATED;
      const said = conn.authError ? `: ${conn.authError.message}` : "";
      this.terminal(
        new SwitchboardClientError(
          codeOf,
          info.name,
          `connection closed by the server: ${code} ${reason}`.trim() + said,
          {
            closeCode: code,
          },
        ),
        code,
        reason,
      );
      return;
    }
    if (info.freshToken && typeof this.o.token === "string") {
      this.terminal(
        new SwitchboardClientError(
          Code.UNAUTHENTICATED,
          info.name,
          "token expired and no token function to renew it",
          {
            closeCode: code,
          },
        ),
        code,
        reason,
      );
      return;
    }
    let delay =
      conn.drainAt !== undefined
        ? Math.max(0, conn.drainAt - Date.now())
        : this.nextBackoff(info.backoff === "long");
    // The server's own hint (AUTH_UNAVAILABLE: 1 s) is a floor under the backoff.
    if (refusal && refusal.retryAfterMs > delay) delay = refusal.retryAfterMs;
    this.scheduleReconnect(code, reason, delay);
    if (refusal) this.hooks.error(refusal);
  }

  /**
   * Ends a connection's bookkeeping: timers stop, sends in flight go back to the queue (they will be
   * re-sent, same clientMsgId, on the next connection), other in-flight requests fail with
   * CONNECTION_LOST (they are not idempotent in general, so the app decides). After a close code
   * that refuses a frame (1007, 1009) the largest in-flight frame is taken to be the culprit and is
   * never re-sent.
   */
  private finish(conn: Conn, closeCode?: number): void {
    if (conn.done) return;
    conn.done = true;
    clearTimeout(conn.welcomeTimer);
    clearTimeout(conn.drainTimer);
    clearInterval(conn.heartbeat);
    this.o.requests.connectionEnded(conn, closeCode === undefined ? undefined : droppedFrameError(closeCode));
  }

  private scheduleReconnect(code: number, reason: string, delay: number): void {
    this._state = "connecting";
    this.lastDisconnect = { code, reason, willReconnect: true };
    this.hooks.disconnected({ code, reason, willReconnect: true, reconnectInMs: delay });
    this.clearReconnectTimer();
    const epoch = this.epoch;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (epoch === this.epoch && this._state === "connecting") void this.openConnection();
    }, delay);
  }

  private nextBackoff(long: boolean): number {
    const attempt = this.attempt++;
    this.outageStartedAt ??= Date.now();
    return long
      ? longBackoffDelay(attempt, this.o.backoff, this.o.random)
      : backoffDelay(attempt, this.o.backoff, this.o.random, Date.now() - this.outageStartedAt);
  }

  private clearReconnectTimer(): void {
    if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
  }

  private terminal(err: SwitchboardClientError, code: number, reason: string): void {
    this._state = "closed";
    this.epoch++;
    this.clearReconnectTimer();
    const conn = this.conn;
    this.conn = undefined;
    if (conn) {
      this.finish(conn);
      try {
        conn.socket.close(1000);
      } catch {
        conn.socket.terminate?.();
      }
    }
    this.failEverything(err);
    this.hooks.disconnected({ code, reason, willReconnect: false });
    this.hooks.error(err);
  }

  /** Rejects every waiting promise: sends, requests waiting for a connection, connect(). */
  private failEverything(err: SwitchboardClientError): void {
    this.hooks.failSends(err);
    for (const w of [...this.openWaiters]) {
      clearTimeout(w.timer);
      w.reject(err);
    }
    this.openWaiters.clear();
    this.o.requests.failAll(err);
    this.connectSettle?.reject(err);
    this.connectSettle = undefined;
    this.connectPromise = undefined;
  }

  /** A frame arrived: welcomes and drain announcements are the connection's, the rest the client's. */
  private receive(conn: Conn, data: unknown): void {
    if (this.conn !== conn) return;
    let frame: ServerFrame;
    try {
      frame = decodeFrame(data);
    } catch (cause) {
      this.hooks.error(
        localError(Code.INTERNAL, LocalReason.UNEXPECTED_REPLY, `undecodable frame: ${String(cause)}`, cause),
      );
      return;
    }
    const kind = frame.kind;
    if (
      kind.case === "error" &&
      !conn.welcome &&
      conn.authId !== undefined &&
      frame.replyTo === conn.authId
    ) {
      // The auth frame refused: the close that follows says what to do, this says why (and when).
      conn.authError = fromWireError(kind.value);
      return;
    }
    if (kind.case === "welcome") this.onWelcome(conn, toWelcome(kind.value));
    else if (kind.case === "reconnect")
      this.onDrain(conn, kind.value.delayMsMin, kind.value.delayMsMax, kind.value.reason);
    else this.hooks.frame(conn, frame);
  }

  private onWelcome(conn: Conn, welcome: WelcomeInfo): void {
    if (conn.welcome) return;
    clearTimeout(conn.welcomeTimer);
    conn.welcome = welcome;
    this._welcome = welcome;
    this._state = "open";
    this.unauthorizedStreak = 0;
    if (welcome.heartbeatIntervalMs > 0) {
      conn.heartbeat = setInterval(() => this.heartbeat(conn), welcome.heartbeatIntervalMs);
    }
    this.connectSettle?.resolve(welcome);
    this.connectSettle = undefined;
    this.connectPromise = undefined;
    for (const w of [...this.openWaiters]) {
      clearTimeout(w.timer);
      w.resolve(conn);
    }
    this.openWaiters.clear();
    this.hooks.opened(conn, welcome);
  }

  private heartbeat(conn: Conn): void {
    this.o.requests
      .request(conn, { case: "heartbeat", value: {} }, "heartbeat", this.o.requestTimeoutMs)
      .catch((err: unknown) => {
        // No answer in time: the connection is dead even if TCP has not noticed yet.
        if (err instanceof SwitchboardClientError && err.reason === LocalReason.TIMEOUT)
          this.abandon(conn, "heartbeat timeout");
      });
  }

  /** The server is draining: move at a random moment in its window, so its clients do not stampede. */
  private onDrain(conn: Conn, minMs: number, maxMs: number, reason: string): void {
    const lo = Math.min(minMs, maxMs);
    const delay = Math.floor(lo + this.o.random() * (Math.max(minMs, maxMs) - lo));
    conn.drainAt = Date.now() + delay;
    clearTimeout(conn.drainTimer);
    conn.drainTimer = setTimeout(() => {
      if (this.conn !== conn || conn.done) return;
      conn.drainAt = Date.now();
      const socket = conn.socket;
      socket.onmessage = null;
      try {
        socket.close(1000, "reconnecting");
      } catch {
        socket.terminate?.();
      }
      this.onSocketClose(conn, 1000, `server asked to reconnect (${reason || "draining"})`);
    }, delay);
  }

  private notConnectedError(timeoutMs: number): SwitchboardClientError {
    const last = this.lastDisconnect;
    const why = last ? ` (last close: ${last.code}${last.reason ? ` ${last.reason}` : ""})` : "";
    return localError(
      Code.DEADLINE_EXCEEDED,
      LocalReason.TIMEOUT,
      `not connected within ${timeoutMs} ms${why}`,
    );
  }
}

/**
 * The error a close before the welcome stands for when the server said nothing else (header auth):
 * a user over `gateway.userConnectionsMax` connections on the gateway gets the close 3015 alone.
 */
function refusalOfClose(code: number, reason: string): SwitchboardClientError | undefined {
  if (code !== CloseCode.TOO_MANY_CONNECTIONS) return undefined;
  return new SwitchboardClientError(
    Code.RESOURCE_EXHAUSTED,
    "TOO_MANY_CONNECTIONS",
    `the user holds too many connections on this gateway (${code}${reason ? ` ${reason}` : ""}); reconnecting after a longer backoff`,
    { closeCode: code },
  );
}

/** Clock skew allowed before a token counts as expired by its own claims (the server allows 5 s). */
const EXPIRY_SKEW_MS = 5_000;

/**
 * Whether a JWT's own `exp` claim (read, not verified: the server verified it) is past. A token that
 * is not a JWT, or has no `exp`, is not known to be expired.
 */
export function expiredByItsClaims(token: string, nowMs = Date.now()): boolean {
  try {
    const exp = unverifiedClaims(token).exp;
    return typeof exp === "number" && exp * 1000 + EXPIRY_SKEW_MS < nowMs;
  } catch {
    return false;
  }
}
