/**
 * Request/reply bookkeeping. Every client frame goes out under a fresh id; one that wants an answer
 * is remembered under that id until the server's frame with the same `reply_to` arrives, its timeout
 * fires, or its connection ends, whichever comes first. Exactly one of the three reaches the caller.
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { ClientFrameSchema, type ServerFrame } from "../../gen/switchboard/client/v1/client_pb.js";
import { CloseCode, classifyCloseCode } from "./close-codes.js";
import { Code, fromWireError, LocalReason, localError, SwitchboardClientError } from "./errors.js";
import { type Encoding, encodedSize, encodeFrame, OPEN, type SocketLike } from "./transport.js";
import type { WelcomeInfo } from "./types.js";

/** The payload of a client frame (its `kind` oneof), as the frame's constructor takes it. */
export type FrameKind = NonNullable<MessageInitShape<typeof ClientFrameSchema>["kind"]>;
export type ReplyCase = NonNullable<ServerFrame["kind"]["case"]>;
export type ReplyOf<C extends ReplyCase> = Extract<ServerFrame["kind"], { case: C }>["value"];

/** What requests need of a connection: a socket to write to, the server's limits, whether it ended. */
export interface RequestConn {
  readonly socket: SocketLike;
  readonly welcome: WelcomeInfo | undefined;
  readonly done: boolean;
}

/** How the outcome of one request reaches its caller; exactly one of these is called. */
export interface ReplyHandlers {
  /** No reply in time. The request is forgotten: a reply arriving later reaches nobody here. */
  onTimeout(): void;
  onReply(frame: ServerFrame): void;
  /**
   * The connection ended first. `dropped`: the server closed it because of this request's frame
   * (1007, 1009), which must never be sent again; `err` overrides the default CONNECTION_LOST.
   */
  onConnectionLost(dropped: SwitchboardClientError | undefined, err?: SwitchboardClientError): void;
}

interface PendingRequest {
  conn: RequestConn;
  /** Encoded size: on close 1007 or 1009 the largest in-flight frame is the likely culprit. */
  size: number;
  timer: ReturnType<typeof setTimeout>;
  handlers: ReplyHandlers;
}

/** A frame on the wire: the request id it went out under, and its encoded size. */
export interface Written {
  id: number;
  size: number;
}

export interface RequestTrackerOptions {
  encoding: Encoding;
  /** Whether `conn` is still the client's connection: a request on any other fails at once. */
  isCurrent(conn: RequestConn): boolean;
  /** Whether the client was closed: requests its close cut off fail with CLOSED, not CONNECTION_LOST. */
  isClosed(): boolean;
}

/** The error of a request whose frame made the server close the connection with 1009. */
export function frameTooLargeError(): SwitchboardClientError {
  return localError(
    Code.INVALID_ARGUMENT,
    LocalReason.FRAME_TOO_LARGE,
    "the server closed the connection because this frame was too large (1009)",
  );
}

/**
 * The error of the request taken to have made the server close the connection with `closeCode`, a
 * code after which that frame must never be sent again (1007, 1009); undefined for any other code.
 */
export function droppedFrameError(closeCode: number): SwitchboardClientError | undefined {
  if (!classifyCloseCode(closeCode).dropFrame) return undefined;
  if (closeCode === CloseCode.INVALID_FRAME_PAYLOAD_DATA) {
    return localError(
      Code.INVALID_ARGUMENT,
      LocalReason.INVALID_FRAME,
      "the server closed the connection because a frame was not valid UTF-8 (1007); it is not sent again",
    );
  }
  return frameTooLargeError();
}

export class RequestTracker {
  private lastId = 0;
  private readonly pending = new Map<number, PendingRequest>();

  constructor(private readonly o: RequestTrackerOptions) {}

  /** Encodes and writes one frame with a fresh request id, refusing frames above the server's limit. */
  write(conn: RequestConn, kind: FrameKind): Written | SwitchboardClientError {
    this.lastId = (this.lastId % 0xffff_ffff) + 1; // uint32, never 0 (0 = "no reply wanted")
    const id = this.lastId;
    const data = encodeFrame(create(ClientFrameSchema, { id, kind }), this.o.encoding);
    const size = encodedSize(data);
    const max = conn.welcome?.limits.frameBytesMax ?? 0;
    if (max > 0 && size > max) {
      return localError(
        Code.INVALID_ARGUMENT,
        LocalReason.FRAME_TOO_LARGE,
        `frame of ${size} bytes exceeds the server's ${max}`,
      );
    }
    if (conn.socket.readyState === OPEN) {
      try {
        conn.socket.send(data);
      } catch {
        // The socket is closing; its close event re-queues or fails this request.
      }
    }
    return { id, size };
  }

  /** Waits up to `timeoutMs` for the reply to the frame `write` put on `conn` as `sent`. */
  track(conn: RequestConn, sent: Written, timeoutMs: number, handlers: ReplyHandlers): void {
    const { id, size } = sent;
    this.pending.set(id, {
      conn,
      size,
      handlers,
      timer: setTimeout(() => {
        this.pending.delete(id);
        handlers.onTimeout();
      }, timeoutMs),
    });
  }

  /** Sends one request on `conn` and waits for the reply of kind `expect` (or an error). */
  request<C extends ReplyCase>(
    conn: RequestConn,
    kind: FrameKind,
    expect: C,
    timeoutMs: number,
  ): Promise<ReplyOf<C>> {
    return new Promise<ReplyOf<C>>((resolve, reject) => {
      if (conn.done || !this.o.isCurrent(conn)) {
        reject(localError(Code.UNAVAILABLE, LocalReason.CONNECTION_LOST, "the connection is gone"));
        return;
      }
      const sent = this.write(conn, kind);
      if (sent instanceof SwitchboardClientError) {
        reject(sent);
        return;
      }
      this.track(conn, sent, timeoutMs, {
        onTimeout: () =>
          reject(
            localError(
              Code.DEADLINE_EXCEEDED,
              LocalReason.TIMEOUT,
              `no reply to ${String(kind.case)} within ${timeoutMs} ms`,
            ),
          ),
        onReply: (frame) => {
          const k = frame.kind;
          if (k.case === "error") reject(fromWireError(k.value));
          else if (k.case === expect) (resolve as (value: unknown) => void)(k.value);
          else
            reject(
              localError(
                Code.INTERNAL,
                LocalReason.UNEXPECTED_REPLY,
                `expected ${expect}, got ${String(k.case)}`,
              ),
            );
        },
        onConnectionLost: (dropped, err) => {
          reject(
            err ??
              (this.o.isClosed()
                ? localError(Code.CANCELLED, LocalReason.CLOSED, "client closed")
                : (dropped ??
                  localError(
                    Code.UNAVAILABLE,
                    LocalReason.CONNECTION_LOST,
                    "connection lost before the reply; the request may or may not have run",
                  ))),
          );
        },
      });
    });
  }

  /** Hands `frame` to the request it answers; false when none is waiting (no reply, or one too late). */
  deliverReply(frame: ServerFrame): boolean {
    const req = this.pending.get(frame.replyTo);
    if (!req) return false;
    this.pending.delete(frame.replyTo);
    clearTimeout(req.timer);
    req.handlers.onReply(frame);
    return true;
  }

  /**
   * `conn` ended: its requests learn it. With `dropped` (the server refused a frame: close 1007 or
   * 1009) the largest one in flight is taken to be the culprit, so only that one fails, with `dropped`.
   */
  connectionEnded(conn: RequestConn, dropped: SwitchboardClientError | undefined): void {
    let culprit: number | undefined;
    if (dropped) {
      let largest = -1;
      for (const [id, req] of this.pending) {
        if (req.conn === conn && req.size > largest) {
          largest = req.size;
          culprit = id;
        }
      }
    }
    for (const [id, req] of [...this.pending]) {
      if (req.conn !== conn) continue;
      this.pending.delete(id);
      clearTimeout(req.timer);
      req.handlers.onConnectionLost(id === culprit ? dropped : undefined);
    }
  }

  /** The client stopped for good: every request fails with `err`, whatever its connection. */
  failAll(err: SwitchboardClientError): void {
    for (const [id, req] of [...this.pending]) {
      this.pending.delete(id);
      clearTimeout(req.timer);
      req.handlers.onConnectionLost(undefined, err);
    }
  }
}
