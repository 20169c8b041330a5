/**
 * A raw protocol client for tests: speaks ClientFrame/ServerFrame over `ws` in JSON or binary,
 * correlates replies by id, and records pushed events, so tests can assert exactly what the wire does.
 */
import {
  create,
  fromBinary,
  fromJsonString,
  type MessageInitShape,
  toBinary,
  toJsonString,
} from "@bufbuild/protobuf";
import WebSocket from "ws";
import {
  ClientFrameSchema,
  type ServerFrame,
  ServerFrameSchema,
  type Welcome,
} from "../../gen/switchboard/client/v1/client_pb.js";

type Kind = NonNullable<MessageInitShape<typeof ClientFrameSchema>["kind"]>;
export type ServerKind = ServerFrame["kind"];

export interface RawClientOptions {
  token?: string;
  encoding?: "json" | "binary";
  headers?: Record<string, string>;
  protocols?: string[];
}

export class RawClient {
  /** Pushed events not yet taken by nextEvent. */
  readonly events: ServerFrame[] = [];
  /** Every pushed event ever received, in order. */
  readonly received: ServerFrame[] = [];
  closeCode: number | undefined;
  closeReason = "";
  /** The welcome of a connection authenticated in its upgrade request (`token`). */
  welcome: Welcome | undefined;
  private nextId = 1;
  private readonly waiters = new Map<number, (f: ServerFrame) => void>();
  private readonly failers = new Map<number, (err: Error) => void>();
  private readonly eventWaiters: Array<{
    pred: (f: ServerFrame) => boolean;
    resolve: (f: ServerFrame) => void;
  }> = [];
  readonly closed: Promise<number>;

  private constructor(
    readonly ws: WebSocket,
    readonly encoding: "json" | "binary",
  ) {
    this.closed = new Promise((resolve) => {
      ws.on("close", (code, reason) => {
        this.closeCode = code;
        this.closeReason = reason.toString();
        // Replies can no longer come: fail every request still waiting.
        for (const fail of this.failers.values())
          fail(new Error(`connection closed (${code}) before the reply`));
        this.failers.clear();
        this.waiters.clear();
        resolve(code);
      });
    });
    ws.on("message", (data: Buffer, isBinary) => {
      const frame = isBinary
        ? fromBinary(ServerFrameSchema, data)
        : fromJsonString(ServerFrameSchema, data.toString());
      const waiter = frame.replyTo ? this.waiters.get(frame.replyTo) : undefined;
      if (waiter) {
        this.waiters.delete(frame.replyTo);
        waiter(frame);
        return;
      }
      this.received.push(frame);
      for (let i = 0; i < this.eventWaiters.length; i++) {
        const w = this.eventWaiters[i]!;
        if (w.pred(frame)) {
          this.eventWaiters.splice(i, 1);
          w.resolve(frame);
          return;
        }
      }
      this.events.push(frame);
    });
  }

  static async connect(url: string, options: RawClientOptions = {}): Promise<RawClient> {
    const headers = {
      ...options.headers,
      ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
    };
    const ws = new WebSocket(url, options.protocols ?? [], { headers });
    const client = new RawClient(ws, options.encoding ?? "json");
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("unexpected-response", (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
      ws.once("error", reject);
    });
    if (options.token) {
      const welcome = await client.nextEvent((f) => f.kind.case === "welcome");
      if (welcome.kind.case === "welcome") client.welcome = welcome.kind.value;
    }
    return client;
  }

  /** Sends a frame and resolves with the reply frame. */
  request(kind: Kind, timeoutMs = 10_000): Promise<ServerFrame> {
    const id = this.nextId++;
    const reply = new Promise<ServerFrame>((resolve, reject) => {
      this.waiters.set(id, (f) => {
        this.failers.delete(id);
        resolve(f);
      });
      this.failers.set(id, reject);
      setTimeout(
        () => reject(new Error(`no reply to ${kind.case} within ${timeoutMs} ms`)),
        timeoutMs,
      ).unref();
    });
    this.sendFrame({ id, kind });
    return reply;
  }

  /**
   * A request asked again after each RATE_LIMITED refusal's retryAfterMs (what a client does), at
   * most `attempts` times; the last reply either way.
   */
  async requestPaced(kind: Kind, attempts = 20): Promise<ServerFrame> {
    for (let attempt = 1; ; attempt++) {
      const reply = await this.request(kind);
      const refusal = reply.kind.case === "error" ? reply.kind.value : undefined;
      if (refusal?.reason !== "RATE_LIMITED" || attempt >= attempts) return reply;
      await new Promise((r) => setTimeout(r, refusal.retryAfterMs));
    }
  }

  sendFrame(init: MessageInitShape<typeof ClientFrameSchema>): void {
    const frame = create(ClientFrameSchema, init);
    this.ws.send(
      this.encoding === "binary"
        ? toBinary(ClientFrameSchema, frame)
        : toJsonString(ClientFrameSchema, frame),
    );
  }

  /** Resolves with the first pushed event (already received or future) matching `pred`. */
  nextEvent(pred: (f: ServerFrame) => boolean, timeoutMs = 10_000): Promise<ServerFrame> {
    const idx = this.events.findIndex(pred);
    if (idx >= 0) return Promise.resolve(this.events.splice(idx, 1)[0]!);
    return new Promise((resolve, reject) => {
      const entry = { pred, resolve };
      this.eventWaiters.push(entry);
      setTimeout(() => {
        const i = this.eventWaiters.indexOf(entry);
        if (i >= 0) {
          this.eventWaiters.splice(i, 1);
          reject(new Error(`no matching event within ${timeoutMs} ms`));
        }
      }, timeoutMs).unref();
    });
  }

  /** Syncs from `cursor` until has_more is false; returns all synced message events. */
  async syncAll(cursor = 0n): Promise<{
    messages: Array<{ body: string; seq: bigint; messageId: string; conversationId: string; cursor: bigint }>;
    cursor: bigint;
  }> {
    const out = [];
    for (;;) {
      const reply = await this.request({ case: "sync", value: { cursor } });
      if (reply.kind.case !== "sync") throw new Error(`sync failed: ${JSON.stringify(reply.kind.value)}`);
      for (const e of reply.kind.value.messages) {
        const m = e.message!;
        out.push({
          body: m.body,
          seq: m.seq,
          messageId: m.messageId,
          conversationId: m.conversationId,
          cursor: e.cursor,
        });
      }
      cursor = reply.kind.value.cursor;
      if (!reply.kind.value.hasMore) return { messages: out, cursor };
    }
  }

  /**
   * syncAll from 0, again until it holds at least `count` messages or `timeoutMs` passed: an ack means
   * durable in the log; the inbox entries follow it (on the distributed backend, a moment later).
   */
  async syncAtLeast(count: number, timeoutMs = 30_000): ReturnType<RawClient["syncAll"]> {
    const deadline = Date.now() + timeoutMs;
    let synced = await this.syncAll();
    while (synced.messages.length < count && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 200));
      synced = await this.syncAll();
    }
    return synced;
  }

  close(): void {
    this.ws.close();
  }
}

/** The value of a server frame of kind `C`. */
export type KindValue<C> = Extract<ServerKind, { case: C }> extends { value: infer V } ? V : never;

/** Narrow a reply to an expected case, failing with the actual frame otherwise. */
export function expectCase<C extends NonNullable<ServerKind["case"]>>(
  frame: ServerFrame,
  c: C,
): KindValue<C> {
  if (frame.kind.case !== c)
    throw new Error(
      `expected ${c}, got ${frame.kind.case}: ${JSON.stringify(frame.kind.value, (_k, v) => (typeof v === "bigint" ? String(v) : v))}`,
    );
  return frame.kind.value as KindValue<C>;
}
