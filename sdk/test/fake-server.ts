/**
 * A small in-process Switchboard gateway for the SDK's tests: speaks the client protocol (proto3 JSON
 * and protobuf binary) over `ws` on 127.0.0.1 with an ephemeral port, keeps an inbox per user, each
 * conversation's messages (history; pull-model groups have no inbox entries), durable send dedupe by
 * (conversation, sender, clientMsgId), and lets a test intercept any frame to misbehave on purpose.
 */
import type { IncomingMessage } from "node:http";
import {
  create,
  fromBinary,
  fromJsonString,
  type MessageInitShape,
  toBinary,
  toJsonString,
} from "@bufbuild/protobuf";
import { type WebSocket, WebSocketServer } from "ws";
import {
  type ClientFrame,
  ClientFrameSchema,
  type MessageEvent,
  MessageEventSchema,
  type SendAck,
  SendAckSchema,
  ServerFrameSchema,
} from "../../gen/switchboard/client/v1/client_pb.js";
import {
  Code,
  ConversationKind,
  DeliveryModel,
  type Message,
  MessageSchema,
} from "../../gen/switchboard/common/v1/common_pb.js";

export type ServerFrameInit = MessageInitShape<typeof ServerFrameSchema>;
type ServerKindInit = NonNullable<ServerFrameInit["kind"]>;
type FrameValue<K extends NonNullable<ClientFrame["kind"]["case"]>> = Extract<
  ClientFrame["kind"],
  { case: K }
>["value"];

export interface FakeConn {
  index: number;
  ws: WebSocket;
  /** Token seen in the Authorization header or the auth frame. */
  token: string | undefined;
  userId: string | undefined;
  /** Encoding of the last frame received (the server answers in kind). */
  binary: boolean;
  /** Sync finished (has_more=false): live messages flow. */
  live: boolean;
  closed: boolean;
  closeCode: number | undefined;
  /** Whether the welcome went out as a binary frame. */
  welcomeBinary: boolean | undefined;
}

export interface ReceivedFrame {
  conn: FakeConn;
  binary: boolean;
  frame: ClientFrame;
}

/** Return true when the hook handled the frame (the default handling is skipped). */
export type FrameHook = (conn: FakeConn, frame: ClientFrame, server: FakeServer) => boolean | undefined;

export interface FakeServerOptions {
  /** Token → user id; a token not in the map is invalid. Default: "token-<user>" is valid for <user>. */
  authenticate?: (token: string) => string | undefined;
  heartbeatIntervalMs?: number;
  /** Largest sync page the server returns. */
  syncPageSize?: number;
  bodyCharsMax?: number;
  frameBytesMax?: number;
  /**
   * Force the encoding of the welcome after header auth, ignoring the negotiated subprotocol (a
   * server that does not negotiate). Default: the subprotocol's encoding, JSON without one.
   */
  welcomeEncoding?: "json" | "binary";
  /** `welcome.features`. Default: what the gateway lists. */
  features?: string[];
}

export class FakeServer {
  readonly conns: FakeConn[] = [];
  readonly frames: ReceivedFrame[] = [];
  /** Inbox per user: index i holds the event with cursor i+1. */
  readonly inbox = new Map<string, MessageEvent[]>();
  /** Acks by the idempotency key (conversation, sender, clientMsgId). */
  readonly acks = new Map<string, SendAck>();
  /** Group members by group id. */
  readonly groups = new Map<string, string[]>();
  /** Each conversation's messages, seq order (what `history` reads). */
  readonly log = new Map<string, Message[]>();
  /** Groups on the pull model: their messages go live with cursor 0 and into no inbox. */
  readonly pull = new Set<string>();
  hook: FrameHook | undefined;
  /** `welcome.data_set`: change it to act as a server restored from a backup. */
  dataSet = "data-set-1";
  /** Called for each new connection before anything is sent; return true to skip the welcome. */
  onConnect: ((conn: FakeConn, server: FakeServer) => boolean | undefined) | undefined;
  private nextMessageId = 1_000_000n;
  private readonly seqs = new Map<string, bigint>();
  private readonly wss: WebSocketServer;
  private readonly opts: Required<Omit<FakeServerOptions, "authenticate" | "welcomeEncoding">> & {
    authenticate: (token: string) => string | undefined;
    welcomeEncoding: "json" | "binary" | undefined;
  };

  private constructor(wss: WebSocketServer, options: FakeServerOptions) {
    this.wss = wss;
    this.opts = {
      authenticate: options.authenticate ?? ((t) => (t.startsWith("token-") ? t.slice(6) : undefined)),
      heartbeatIntervalMs: options.heartbeatIntervalMs ?? 0,
      syncPageSize: options.syncPageSize ?? 100,
      bodyCharsMax: options.bodyCharsMax ?? 100_000,
      frameBytesMax: options.frameBytesMax ?? 0,
      welcomeEncoding: options.welcomeEncoding,
      features: options.features ?? ["first_attempt", "member_pages"],
    };
    wss.on("connection", (ws, req) => this.onConnection(ws, req));
  }

  static async start(options: FakeServerOptions = {}): Promise<FakeServer> {
    let server: FakeServer | undefined;
    const wss = new WebSocketServer({
      host: "127.0.0.1",
      port: 0,
      path: "/ws",
      // Header auth is checked before the handshake, like the real gateway: a bad token gets HTTP 401.
      verifyClient: (info: { req: IncomingMessage }, done: (ok: boolean, code?: number) => void) => {
        const header = info.req.headers.authorization;
        if (header === undefined) return done(true);
        const token = header.replace(/^Bearer /, "");
        (server?.headerTokens ?? []).push(token);
        done(server?.opts.authenticate(token) !== undefined, 401);
      },
    });
    await new Promise<void>((resolve) => wss.once("listening", () => resolve()));
    server = new FakeServer(wss, options);
    return server;
  }

  /** Tokens presented in Authorization headers, in order (including refused ones). */
  readonly headerTokens: string[] = [];

  get url(): string {
    const addr = this.wss.address();
    if (typeof addr === "string" || addr === null) throw new Error("no address");
    return `ws://127.0.0.1:${addr.port}/ws`;
  }

  /** Frames of one kind, in arrival order. */
  framesOf<K extends NonNullable<ClientFrame["kind"]["case"]>>(
    kind: K,
  ): Array<{ conn: FakeConn; binary: boolean; id: number; value: FrameValue<K> }> {
    return this.frames
      .filter((f) => f.frame.kind.case === kind)
      .map((f) => ({
        conn: f.conn,
        binary: f.binary,
        id: f.frame.id,
        value: f.frame.kind.value as unknown as FrameValue<K>,
      }));
  }

  /** Live (authenticated, open) connections. */
  openConns(): FakeConn[] {
    return this.conns.filter((c) => !c.closed && c.userId !== undefined);
  }

  /**
   * Stores a message in the inbox of `members` and pushes it to their live connections; in a pull
   * group (`pull`), in no inbox, and pushed with cursor 0.
   */
  addMessage(
    conversationId: string,
    sender: string,
    body: string,
    members: string[],
    clientMsgId = "",
  ): bigint {
    return this.append(conversationId, sender, body, members, clientMsgId).seq;
  }

  private append(
    conversationId: string,
    sender: string,
    body: string,
    members: string[],
    clientMsgId: string,
  ): Message {
    const seq = (this.seqs.get(conversationId) ?? 0n) + 1n;
    this.seqs.set(conversationId, seq);
    const messageId = String(this.nextMessageId++);
    const message = create(MessageSchema, {
      conversationId,
      seq,
      messageId,
      sender,
      clientMsgId,
      body,
      createdAtMs: BigInt(Date.now()),
    });
    const log = this.log.get(conversationId) ?? [];
    this.log.set(conversationId, log);
    log.push(message);
    if (this.pull.has(conversationId)) {
      const event = create(MessageEventSchema, { message, cursor: 0n });
      for (const c of this.openConns())
        if (members.includes(c.userId ?? "") && c.live)
          this.push(c, { kind: { case: "message", value: event } });
      return message;
    }
    for (const user of new Set(members)) {
      const box = this.inbox.get(user) ?? [];
      this.inbox.set(user, box);
      const event = create(MessageEventSchema, {
        message: {
          conversationId,
          seq,
          messageId,
          sender,
          clientMsgId,
          body,
          createdAtMs: BigInt(Date.now()),
        },
        cursor: BigInt(box.length + 1),
      });
      box.push(event);
      for (const c of this.openConns())
        if (c.userId === user && c.live) this.push(c, { kind: { case: "message", value: event } });
    }
    return message;
  }

  /** The members of a conversation: a group's, or the two users a direct conversation's id names. */
  membersOf(conversationId: string): string[] {
    const dm = /^dm:([^~]+)~([^~]+)$/.exec(conversationId);
    return dm ? [dm[1]!, dm[2]!] : (this.groups.get(conversationId) ?? []);
  }

  push(conn: FakeConn, frame: ServerFrameInit): void {
    if (conn.closed) return;
    const msg = create(ServerFrameSchema, frame);
    conn.ws.send(conn.binary ? toBinary(ServerFrameSchema, msg) : toJsonString(ServerFrameSchema, msg));
  }

  reply(conn: FakeConn, to: ClientFrame, kind: ServerKindInit): void {
    this.push(conn, { replyTo: to.id, kind });
  }

  error(conn: FakeConn, to: ClientFrame, code: Code, reason: string, retryAfterMs = 0): void {
    this.reply(conn, to, {
      case: "error",
      value: { code, reason, message: reason.toLowerCase(), retryAfterMs },
    });
  }

  /** Polls until `predicate` holds (tests wait on state, never on fixed sleeps). */
  async waitFor(predicate: () => boolean, what: string, timeoutMs = 4_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (!predicate()) {
      if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 2));
    }
  }

  async close(): Promise<void> {
    for (const c of this.conns) c.ws.terminate();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
  }

  private onConnection(ws: WebSocket, req: IncomingMessage): void {
    const conn: FakeConn = {
      index: this.conns.length,
      ws,
      token: undefined,
      userId: undefined,
      binary:
        this.opts.welcomeEncoding !== undefined
          ? this.opts.welcomeEncoding === "binary"
          : ws.protocol === "switchboard.v1.proto",
      live: false,
      closed: false,
      closeCode: undefined,
      welcomeBinary: undefined,
    };
    this.conns.push(conn);
    ws.on("close", (code) => {
      conn.closed = true;
      conn.closeCode = code;
    });
    ws.on("message", (data, isBinary) => this.onMessage(conn, data as Buffer, isBinary));
    if (this.onConnect?.(conn, this)) return;
    const header = req.headers.authorization;
    if (header !== undefined) {
      conn.token = header.replace(/^Bearer /, "");
      conn.userId = this.opts.authenticate(conn.token);
      this.welcome(conn);
    }
  }

  private welcome(conn: FakeConn): void {
    conn.welcomeBinary = conn.binary;
    const box = this.inbox.get(conn.userId ?? "") ?? [];
    this.push(conn, {
      kind: {
        case: "welcome",
        value: {
          userId: conn.userId ?? "",
          sessionId: `s${conn.index}`,
          heartbeatIntervalMs: this.opts.heartbeatIntervalMs,
          limits: {
            bodyCharsMax: this.opts.bodyCharsMax,
            frameBytesMax: this.opts.frameBytesMax,
            sendsPerSecond: 100,
            groupMembersMax: 1000,
          },
          serverTimeMs: BigInt(Date.now()),
          headCursor: BigInt(box.length),
          features: this.opts.features,
          dataSet: this.dataSet,
        },
      },
    });
  }

  private onMessage(conn: FakeConn, data: Buffer, isBinary: boolean): void {
    conn.binary = isBinary;
    const frame = isBinary
      ? fromBinary(ClientFrameSchema, new Uint8Array(data))
      : fromJsonString(ClientFrameSchema, data.toString("utf8"));
    this.frames.push({ conn, binary: isBinary, frame });
    if (this.hook?.(conn, frame, this)) return;
    this.handle(conn, frame);
  }

  private handle(conn: FakeConn, frame: ClientFrame): void {
    const k = frame.kind;
    if (conn.userId === undefined) {
      if (k.case !== "auth") return void conn.ws.close(3502, "auth first");
      conn.token = k.value.token;
      conn.userId = this.opts.authenticate(k.value.token);
      if (conn.userId === undefined) return void conn.ws.close(3500, "invalid token");
      this.welcome(conn);
      return;
    }
    const user = conn.userId;
    switch (k.case) {
      case "sync": {
        const box = this.inbox.get(user) ?? [];
        const from = Number(k.value.cursor);
        if (from > box.length) return this.error(conn, frame, Code.INVALID_ARGUMENT, "INVALID_CURSOR");
        const size = Math.min(k.value.limit || this.opts.syncPageSize, this.opts.syncPageSize);
        const page = box.slice(from, from + size);
        const hasMore = from + page.length < box.length;
        this.reply(conn, frame, {
          case: "sync",
          value: { messages: page, cursor: BigInt(from + page.length), hasMore },
        });
        if (!hasMore) conn.live = true;
        return;
      }
      case "send": {
        if ([...k.value.body].length > this.opts.bodyCharsMax)
          return this.error(conn, frame, Code.INVALID_ARGUMENT, "BODY_TOO_LARGE");
        const target = k.value.target;
        let conversationId: string;
        let members: string[];
        if (target.case === "toUser") {
          const pair = [user, target.value].sort();
          conversationId = `dm:${pair[0]}~${pair[1]}`;
          members = pair;
        } else {
          conversationId = target.value ?? "";
          members = this.membersOf(conversationId);
          if (!members.includes(user)) return this.error(conn, frame, Code.PERMISSION_DENIED, "NOT_MEMBER");
        }
        // The key is (conversation, sender, clientMsgId), checked after membership (docs/protocol.md §3).
        const prior = this.acks.get(ackKey(conversationId, user, k.value.clientMsgId));
        if (prior) {
          this.reply(conn, frame, { case: "ack", value: { ...prior, duplicate: true } });
          return;
        }
        const ack = this.store(user, conversationId, k.value.clientMsgId, k.value.body, members);
        this.reply(conn, frame, { case: "ack", value: ack });
        return;
      }
      case "createGroup": {
        const id = `g:${this.groups.size + 1}`;
        const members = [...new Set([user, ...k.value.members])].sort();
        this.groups.set(id, members);
        this.reply(conn, frame, {
          case: "conversation",
          value: {
            conversation: {
              id,
              kind: ConversationKind.GROUP,
              name: k.value.name,
              owner: user,
              memberCount: members.length,
              open: k.value.open,
              createdAtMs: BigInt(Date.now()),
            },
          },
        });
        return;
      }
      case "listConversations": {
        const ids = [...new Set([...this.groups.keys(), ...this.log.keys()])].filter((id) =>
          this.membersOf(id).includes(user),
        );
        this.reply(conn, frame, {
          case: "conversations",
          value: {
            conversations: ids.map((id) => ({
              id,
              kind: id.startsWith("g:") ? ConversationKind.GROUP : ConversationKind.DIRECT,
              memberCount: this.membersOf(id).length,
              lastSeq: this.seqs.get(id) ?? 0n,
              delivery: this.pull.has(id) ? DeliveryModel.PULL : DeliveryModel.PUSH,
            })),
          },
        });
        return;
      }
      case "history": {
        const { conversationId, beforeSeq, afterSeq } = k.value;
        if (!this.membersOf(conversationId).includes(user))
          return this.error(conn, frame, Code.PERMISSION_DENIED, "NOT_MEMBER");
        const limit = k.value.limit || 100;
        const below = (this.log.get(conversationId) ?? []).filter(
          (m) => m.seq > afterSeq && (beforeSeq === 0n || m.seq < beforeSeq),
        );
        const messages = afterSeq > 0n ? below.slice(0, limit) : below.slice(-limit);
        this.reply(conn, frame, {
          case: "history",
          value: { conversationId, messages, hasMore: below.length > messages.length },
        });
        return;
      }
      case "receipt": {
        const { conversationId, seq } = k.value;
        if (!this.membersOf(conversationId).includes(user))
          return this.error(conn, frame, Code.PERMISSION_DENIED, "NOT_MEMBER");
        if (seq === 0n || seq > (this.seqs.get(conversationId) ?? 0n))
          return this.error(conn, frame, Code.INVALID_ARGUMENT, "SEQ_OUT_OF_RANGE");
        this.reply(conn, frame, { case: "ok", value: {} });
        return;
      }
      case "listMembers":
        this.reply(conn, frame, {
          case: "members",
          value: {
            conversationId: k.value.conversationId,
            members: this.groups.get(k.value.conversationId) ?? [],
          },
        });
        return;
      case "heartbeat":
        this.reply(conn, frame, { case: "heartbeat", value: { serverTimeMs: BigInt(Date.now()) } });
        return;
      case "subscribePresence":
        this.reply(conn, frame, {
          case: "presenceSnapshot",
          value: {
            statuses: k.value.userIds.map((userId) => ({ userId, online: true, lastActiveAtMs: 1n })),
          },
        });
        return;
      case "typing":
      case "unsubscribePresence":
      case "leaveGroup":
        this.reply(conn, frame, { case: "ok", value: {} });
        return;
      default:
        this.error(conn, frame, Code.UNIMPLEMENTED, "UNIMPLEMENTED");
    }
  }

  /** Durably stores a send (as the real server does before acking) and returns its ack. */
  store(user: string, conversationId: string, clientMsgId: string, body: string, members: string[]): SendAck {
    const stored = this.append(conversationId, user, body, members, clientMsgId);
    const ack = create(SendAckSchema, {
      conversationId,
      messageId: stored.messageId,
      seq: stored.seq,
      clientMsgId,
      createdAtMs: stored.createdAtMs,
      duplicate: false,
    });
    this.acks.set(ackKey(conversationId, user, clientMsgId), ack);
    return ack;
  }
}

/** The idempotency key of a send (docs/protocol.md §3). */
function ackKey(conversationId: string, sender: string, clientMsgId: string): string {
  return `${conversationId}\u0000${sender}\u0000${clientMsgId}`;
}
