/**
 * Every message emitted once and in order. After each welcome the inbox is synced from the cursor
 * until has_more=false; live messages arriving meanwhile are held back and delivered after the last
 * page, so nothing is skipped or reordered at the seam. A bounded LRU of message ids drops repeats
 * (the server may repeat, inside a sync, messages it delivered live before the sync). Messages of
 * pull conversations are in no inbox: the PullFollower emits them by seq, through the same dedupe.
 */
import type { MessageEvent as PbMessageEvent } from "../../gen/switchboard/client/v1/client_pb.js";
import type { HistoryQuery } from "./client.js";
import type { Conn, Connection } from "./connection.js";
import { Code, LocalReason, localError, SwitchboardClientError } from "./errors.js";
import { LruSet } from "./lru.js";
import { PullFollower } from "./pull-follower.js";
import type { RequestTracker } from "./requests.js";
import {
  type ChatMessage,
  type Conversation,
  type HistoryPage,
  type IncomingMessage,
  type SyncedInfo,
  toChatMessage,
  toConversation,
} from "./types.js";

/** History page size of a pull conversation's catch-up, and the conversations listed for it. */
const PULL_PAGE = 200;
const PULL_CONVERSATIONS_LISTED = 1_000;

/** A server error as it is; anything else as a local UNEXPECTED_REPLY with `what` as its message. */
function asClientError(cause: unknown, what: string): SwitchboardClientError {
  if (cause instanceof SwitchboardClientError) return cause;
  return localError(Code.INTERNAL, LocalReason.UNEXPECTED_REPLY, `${what}: ${String(cause)}`, cause);
}

export interface InboxSyncOptions {
  /** Inbox position this device already processed. */
  cursor: number;
  /** How many message ids the dedupe remembers (and pull conversations the follower does). */
  dedupeCapacity: number;
  /** The newest seq processed per pull conversation in an earlier session. */
  pullPositions: Record<string, number> | undefined;
  /** Page size asked for when syncing (0 = the server's default). */
  syncLimit: number;
  requestTimeoutMs: number;
  requests: RequestTracker;
  connection: Pick<Connection, "current" | "isCurrent" | "abandon" | "endOutage" | "state">;
  /** A history page, waiting for a connection if there is none (fetches a pull conversation's gap). */
  history(query: HistoryQuery): Promise<HistoryPage>;
  emitMessage(message: IncomingMessage): void;
  emitSynced(info: SyncedInfo): void;
  emitError(err: SwitchboardClientError): void;
}

export class InboxSync {
  private _cursor: number;
  private readonly seen: LruSet<string>;
  private readonly pull: PullFollower;
  /** The connection whose sync is running, and the live messages held back until its last page. */
  private running: { conn: Conn; held: PbMessageEvent[] } | undefined;

  constructor(private readonly o: InboxSyncOptions) {
    this._cursor = o.cursor;
    if (!Number.isSafeInteger(this._cursor) || this._cursor < 0)
      throw new RangeError("cursor must be a non-negative integer");
    this.seen = new LruSet(o.dedupeCapacity);
    this.pull = new PullFollower({
      fetch: (conversationId, afterSeq) => o.history({ conversationId, afterSeq, limit: PULL_PAGE }),
      emit: (message, source) => this.emitMessage(message, 0, source),
      capacity: o.dedupeCapacity,
      ...(o.pullPositions ? { initial: o.pullPositions } : {}),
      active: () => o.connection.state !== "closed",
    });
  }

  /** The highest inbox position processed. */
  get cursor(): number {
    return this._cursor;
  }

  /** The newest seq processed per pull conversation. */
  get pullPositions(): Record<string, number> {
    return this.pull.positions();
  }

  /** The app listed its conversations: the pull ones among them are followed from now on. */
  learn(conversations: Conversation[]): void {
    this.pull.learn(conversations);
  }

  /** A `conversation` event said this group is on pull (see PullFollower.follow). */
  follow(conversationId: string): void {
    this.pull.follow(conversationId);
  }

  /** A live message on `conn`: held back while `conn` syncs, delivered at once otherwise. */
  live(conn: Conn, event: PbMessageEvent): void {
    const running = this.running;
    if (running?.conn === conn) running.held.push(event);
    else this.deliver(event, "live");
  }

  /**
   * Catch-up after (re)connect: pages from the cursor until has_more=false. The server holds live
   * messages back meanwhile; any that arrive anyway are buffered and delivered after the last page
   * (dedupe drops the ones the sync already returned), so order and the no-gap seam are kept.
   */
  async sync(conn: Conn): Promise<void> {
    const running = { conn, held: [] as PbMessageEvent[] };
    this.running = running;
    const isCurrent = () => this.o.connection.isCurrent(conn);
    let delivered = 0;
    try {
      let restarted = false;
      for (;;) {
        const from = this._cursor;
        const page = await this.o.requests
          .request(
            conn,
            { case: "sync", value: { cursor: BigInt(from), limit: this.o.syncLimit } },
            "sync",
            this.o.requestTimeoutMs,
          )
          .catch((cause: unknown) => {
            // A cursor past the inbox's head belongs to another data set (docs/protocol.md §3):
            // sync from 0, once; the messages already seen are dropped by id.
            if (restarted || !isInvalidCursor(cause) || !isCurrent()) throw cause;
            return undefined;
          });
        if (page === undefined) {
          restarted = true;
          this._cursor = 0;
          continue;
        }
        if (!isCurrent()) return;
        for (const event of page.messages) {
          if (!isCurrent()) return; // a listener closed the client mid-page
          if (this.deliver(event, "sync")) delivered++;
        }
        this.advanceCursor(Number(page.cursor));
        if (!page.hasMore) break;
        if (this._cursor <= from) throw new Error(`sync made no progress at cursor ${from}`);
      }
    } catch (cause) {
      if (!isCurrent()) return; // the connection went away; the next one resyncs
      this.o.emitError(
        cause instanceof SwitchboardClientError
          ? cause
          : localError(Code.INTERNAL, LocalReason.UNEXPECTED_REPLY, `sync failed: ${String(cause)}`, cause),
      );
      this.o.connection.abandon(conn, "sync failed");
      return;
    } finally {
      // Whether it completed or its connection went away, nothing is held back for `conn` any more.
      if (this.running === running) this.running = undefined;
    }
    for (const event of running.held.splice(0)) {
      if (!isCurrent()) return;
      this.deliver(event, "live");
    }
    this.o.connection.endOutage(); // a full round trip worked: the next outage starts again from the short backoff
    this.o.emitSynced({ cursor: this._cursor, delivered });
    if (this.pull.following) void this.catchUpPull(conn);
  }

  /** After a sync: what the followed pull conversations hold past what this device processed. */
  private async catchUpPull(conn: Conn): Promise<void> {
    try {
      const res = await this.o.requests.request(
        conn,
        { case: "listConversations", value: { limit: PULL_CONVERSATIONS_LISTED } },
        "conversations",
        this.o.requestTimeoutMs,
      );
      await this.pull.catchUp(res.conversations.map(toConversation));
    } catch (cause) {
      // The connection went away (the next one catches up again) or the server refused.
      if (this.o.connection.isCurrent(conn)) this.o.emitError(asClientError(cause, "pull catch-up failed"));
    }
  }

  /** Emits a message unless already seen, then records its cursor as processed. */
  private deliver(event: PbMessageEvent, source: "sync" | "live"): boolean {
    const cursor = Number(event.cursor);
    const m = event.message;
    if (!m) return false;
    const message: ChatMessage = toChatMessage(m);
    if (cursor === 0) {
      // A pull conversation's message: emitted in seq order by the follower (it may fetch a gap).
      this.pull.live(message).catch((cause: unknown) => {
        if (this.o.connection.current)
          this.o.emitError(asClientError(cause, "fetching a pull conversation's gap failed"));
      });
      return false;
    }
    const emitted = this.emitMessage(message, cursor, source);
    this.pull.note(message);
    this.advanceCursor(cursor);
    return emitted;
  }

  private emitMessage(message: ChatMessage, cursor: number, source: "sync" | "live"): boolean {
    // An empty id would make every later id-less message a "duplicate"; never dedupe on it.
    if (message.messageId !== "" && !this.seen.add(message.messageId)) return false;
    this.o.emitMessage({ message, cursor, source });
    return true;
  }

  private advanceCursor(cursor: number): void {
    if (cursor > this._cursor) this._cursor = cursor;
  }
}

function isInvalidCursor(err: unknown): boolean {
  return err instanceof SwitchboardClientError && err.reason === "INVALID_CURSOR";
}
