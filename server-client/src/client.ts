/**
 * A typed client of the server API (switchboard.api.v1.ChatService) over gRPC, built on the
 * generated descriptors with Connect's gRPC transport: every method with its request and response
 * types, the caller's credential on every call, a default deadline, and TLS (with a client certificate
 * for mTLS) when the server uses it.
 */
import { type Client, Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { ChatService } from "../../gen/switchboard/api/v1/chat_pb.js";
import type { Credential } from "./credentials.js";

export interface ChatClientOptions {
  /** `http://host:port` (plaintext, e.g. a local server) or `https://host:port` (TLS). */
  baseUrl: string;
  /** Sent as `authorization: Bearer <credential>` with every call. */
  credential?: Credential;
  /** TLS: the CA that signed the server's certificate, and this client's certificate for mTLS (PEM). */
  tls?: { ca?: string | Buffer; cert?: string | Buffer; key?: string | Buffer };
  /** Deadline of each unary call unless the call sets `timeoutMs` (default 10,000 ms). */
  timeoutMs?: number;
}

/** Every ChatService method, typed, plus `close()` for the HTTP/2 connection. */
export type ChatClient = Client<typeof ChatService> & {
  /**
   * Closes the connection for good: calls in flight fail, later calls fail with FAILED_PRECONDITION
   * "the ChatClient is closed", and `consumeEvents` on this client resolves.
   */
  close(): void;
  /** Aborted by `close()`. */
  readonly closed: AbortSignal;
};

export function createChatClient(options: ChatClientOptions): ChatClient {
  const credential = options.credential;
  const closed = new AbortController();
  // The session manager alone would open a new connection for the next call after close(): refuse
  // every call of a closed client before it reaches the transport.
  const refuseWhenClosed: Interceptor = (next) => (req) => {
    if (closed.signal.aborted) throw new ConnectError("the ChatClient is closed", Code.FailedPrecondition);
    return next(req);
  };
  const authenticate: Interceptor = (next) => async (req) => {
    if (credential !== undefined) {
      const value = typeof credential === "string" ? credential : await credential();
      req.header.set("authorization", `Bearer ${value}`);
    }
    return next(req);
  };
  const sessionManager = new Http2SessionManager(
    options.baseUrl,
    // Keepalive pings: a dead connection (and the event stream on it) is noticed within a minute.
    { pingIntervalMs: 30_000, pingTimeoutMs: 15_000 },
    options.tls ? { ...options.tls } : {},
  );
  const transport = createGrpcTransport({
    baseUrl: options.baseUrl,
    sessionManager,
    interceptors: [refuseWhenClosed, authenticate],
    defaultTimeoutMs: options.timeoutMs ?? 10_000,
  });
  const client = createClient(ChatService, transport);
  const close = () => {
    // Closed first: a consumer whose stream the abort below ends then stops instead of retrying.
    closed.abort();
    sessionManager.abort();
  };
  return Object.assign(client, { close, closed: closed.signal });
}

/**
 * The stable reason of a failed call (docs/protocol.md §6), e.g. `CONVERSATION_NOT_ALLOWED`, from the
 * error's google.rpc.ErrorInfo; undefined for errors that carry none (a transport failure).
 */
export function reasonOf(err: unknown): string | undefined {
  if (!(err instanceof ConnectError)) return undefined;
  return err.findDetails(ErrorInfoSchema)[0]?.reason;
}
