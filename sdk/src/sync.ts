/**
 * Every message emitted once and in order. After each welcome the inbox is synced from the cursor
 * until has_more=false; live messages arriving meanwhile are held back and delivered after the last
 * page, so nothing is skipped or reordered at the seam. A bounded LRU of message ids drops repeats
 * (the server may repeat, inside a sync, messages it delivered live before the sync). Messages of
 * pull conversations are in no inbox: the PullFollower emits them by seq, through the same dedupe.
 *
 * Where the device is, the cursor and the pull positions, moves before a message is emitted and is
 * handed to the app as a checkpoint after the message listeners returned, so a checkpoint persisted
 * then never covers a message that was not handled, and never goes back (a pull message has no
 * inbox position: it leaves the cursor as it is).
 */
import type { MessageEvent as PbMessageEvent } from "../../gen/switchboard/client/v1/client_pb.js";
import { type BackoffOptions, backoffDelay } from "./backoff.js";
import type { HistoryQuery } from "./client.js";
import type { Conn, Connection } from "./connection.js";
import { Code, isRetryable, LocalReason, localError, SwitchboardClientError } from "./errors.js";
import { LruSet } from "./lru.js";
import { PullFollower } from "./pull-follower.js";
import type { RequestTracker } from "./requests.js";
import {
  type ChatMessage,
  type Checkpoint,
  type Conversation,
  type HistoryPage,
  type IncomingMessage,
  type SyncedInfo,
  toChatMessage,
  toConversation,
} from "./types.js";

type Timer = ReturnType<typeof setTimeout>;

/** History page size of a pull conversation's catch-up, and the conversations listed for it. */
const PULL_PAGE = 200;
const PULL_CONVERSATIONS_LISTED = 1_000;

/** The page the server sends for `limit` 0 (docs/protocol.md §2.2, `sync`). */
const SYNC_PAGE_SERVER_DEFAULT = 100;
/** The smallest page asked for after sync pages timed out (each timeout halves it). */
export const SYNC_PAGE_MIN = 10;
/** Pages in a row answered in time before a page made smaller by a timeout doubles again. */
export const SYNC_PAGES_BEFORE_GROWING = 4;

/** A server error as it is; anything else as a local UNEXPECTED_REPLY with `what` as its message. */
function asClientError(cause: unknown, what: string): SwitchboardClientError {
  if (cause instanceof SwitchboardClientError) return cause;
  return localError(Code.INTERNAL, LocalReason.UNEXPECTED_REPLY, `${what}: ${String(cause)}`, cause);
}

/** A pull fetch that failed for a reason that can pass (a timeout, a lost connection, a busy server). */
function retryableFetchError(err: unknown): boolean {
  return !(err instanceof SwitchboardClientError) || isRetryable(err);
}

export interface InboxSyncOptions {
  /** Inbox position this device already processed. */
  cursor: number;
  /** How many message ids the dedupe remembers (and pull conversations the follower does). */
  dedupeCapacity: number;
  /** The newest seq processed per pull conversation in an earlier session. */
  pullPositions: Record<string, number> | undefined;
  /** The server's data set the positions belong to (Checkpoint.dataSet), if known. */
  dataSet: string | undefined;
  /** The server's data set is another than the positions': they were dropped. */
  emitDataSetChanged(change: { previous: string; current: string }): void;
  /** Page size asked for when syncing (0 = the server's default). */
  syncLimit: number;
  requestTimeoutMs: number;
  /** Delays of the retries of a failed catch-up listing (the reconnect backoff). */
  backoff: BackoffOptions;
  random: () => number;
  requests: RequestTracker;
  connection: Pick<Connection, "current" | "isCurrent" | "abandon" | "endOutage" | "state">;
  /** A history page, waiting for a connection if there is none (fetches a pull conversation's gap). */
  history(query: HistoryQuery): Promise<HistoryPage>;
  emitMessage(message: IncomingMessage): void;
  emitSynced(info: SyncedInfo): void;
  emitError(err: SwitchboardClientError): void;
  /** Where the device is now; called after the listeners of the messages it covers returned. */
  emitCheckpoint(checkpoint: Checkpoint): void;
}

export class InboxSync {
  private _cursor: number;
  private dataSet: string | undefined;
  private readonly seen: LruSet<string>;
  private pull: PullFollower;
  /** The connection whose sync is running, and the live messages held back until its last page. */
  private running: { conn: Conn; held: PbMessageEvent[] } | undefined;
  /** The sync page size after pages timed out (halved each time); undefined: `syncLimit`. */
  private pageLimit: number | undefined;
  /** Sync pages answered in time since the page was last made smaller or grew. */
  private pagesInTime = 0;
  /** A checkpoint is due (emitted once the current run of synchronous work is over). */
  private checkpointDue = false;
  /** The retry of a failed catch-up listing. */
  private retryTimer: Timer | undefined;

  constructor(private readonly o: InboxSyncOptions) {
    this._cursor = o.cursor;
    if (!Number.isSafeInteger(this._cursor) || this._cursor < 0)
      throw new RangeError("cursor must be a non-negative integer");
    this.dataSet = o.dataSet;
    this.seen = new LruSet(o.dedupeCapacity);
    this.pull = this.newPullFollower(o.pullPositions);
  }

  private newPullFollower(initial: Record<string, number> | undefined): PullFollower {
    const o = this.o;
    return new PullFollower({
      fetch: (conversationId, afterSeq) => o.history({ conversationId, afterSeq, limit: PULL_PAGE }),
      emit: (message, source) => this.emitMessage(message, this._cursor, source, "pull"),
      capacity: o.dedupeCapacity,
      ...(initial ? { initial } : {}),
      active: () => o.connection.state !== "closed",
      retryable: retryableFetchError,
      failed: (cause, conversationId) =>
        this.reportPullFailure(cause, `fetching pull conversation ${conversationId} failed`),
      changed: () => this.changed(),
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

  /** Where the device is: what to persist, and pass back as the `checkpoint` option. */
  get checkpoint(): Checkpoint {
    return {
      cursor: this._cursor,
      pullPositions: this.pull.positions(),
      ...(this.dataSet ? { dataSet: this.dataSet } : {}),
    };
  }

  /**
   * A welcome named the server's data set (before the sync it starts). Another than the one the
   * positions belong to: the server's data was replaced (restored from a backup), and its cursors and
   * seqs past the copy's may be handed out again, so the positions would skip messages. They are
   * dropped: the inbox syncs from 0 and the pull conversations are followed anew from the next
   * listing. The app drops what it stored of messages on the event, so every message comes again,
   * those emitted before included: the ids seen are forgotten.
   */
  welcomed(dataSet: string): void {
    if (dataSet === "" || dataSet === this.dataSet) return;
    const previous = this.dataSet;
    this.dataSet = dataSet;
    // First named (a checkpoint of an older client or server): the next checkpoint carries it.
    if (previous === undefined) return;
    this._cursor = 0;
    this.seen.clear();
    this.pull.stop();
    this.pull = this.newPullFollower(undefined);
    this.o.emitDataSetChanged({ previous, current: dataSet });
    this.changed();
  }

  /** The sync page size asked for now (0: the server's default). */
  get syncPageLimit(): number {
    return this.pageLimit ?? this.o.syncLimit;
  }

  /** The app listed its conversations: the pull ones among them are followed from now on. */
  learn(conversations: Conversation[]): void {
    this.pull.learn(conversations);
  }

  /** A `conversation` event said this group is on pull (see PullFollower.follow). */
  follow(conversationId: string): void {
    this.pull.follow(conversationId);
  }

  /** The client stopped (close() or a terminal close): no retry is left waiting on a timer. */
  stop(): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.pull.stop();
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
   * (dedupe drops the ones the sync already returned), so order and the no-gap seam are kept. A page
   * that times out (a slow link: a page is up to 1 MiB) ends the connection, and the next sync asks
   * for pages half as large (down to SYNC_PAGE_MIN), growing back after pages come in time.
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
            { case: "sync", value: { cursor: BigInt(from), limit: this.syncPageLimit } },
            "sync",
            this.o.requestTimeoutMs,
          )
          .catch((cause: unknown) => {
            if (cause instanceof SwitchboardClientError && cause.reason === LocalReason.TIMEOUT)
              this.shrinkSyncPage();
            // A cursor past the inbox's head belongs to another data set (docs/protocol.md §3):
            // sync from 0, once; the messages already seen are dropped by id.
            if (restarted || !isInvalidCursor(cause) || !isCurrent()) throw cause;
            return undefined;
          });
        if (page === undefined) {
          restarted = true;
          this._cursor = 0;
          this.changed();
          continue;
        }
        if (!isCurrent()) return;
        this.syncPageInTime();
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
    if (this.pull.following) void this.catchUpPull(conn, 0);
  }

  /** A sync page timed out: the next ones are half as large (down to SYNC_PAGE_MIN). */
  private shrinkSyncPage(): void {
    const configured = this.o.syncLimit || SYNC_PAGE_SERVER_DEFAULT;
    const current = this.pageLimit ?? configured;
    this.pageLimit = Math.max(Math.min(SYNC_PAGE_MIN, configured), Math.floor(current / 2));
    this.pagesInTime = 0;
  }

  /** A sync page came in time: after SYNC_PAGES_BEFORE_GROWING of them a smaller page doubles. */
  private syncPageInTime(): void {
    if (this.pageLimit === undefined || ++this.pagesInTime < SYNC_PAGES_BEFORE_GROWING) return;
    this.pagesInTime = 0;
    const doubled = this.pageLimit * 2;
    this.pageLimit = doubled >= (this.o.syncLimit || SYNC_PAGE_SERVER_DEFAULT) ? undefined : doubled;
  }

  /**
   * After a sync: what the followed pull conversations hold past what this device processed. A
   * listing that fails is asked again with backoff while the connection lasts (the next connection
   * catches up anyway); a conversation whose fetch fails is fetched again by the follower.
   */
  private async catchUpPull(conn: Conn, attempt: number): Promise<void> {
    let listed: Conversation[];
    try {
      const res = await this.o.requests.request(
        conn,
        { case: "listConversations", value: { limit: PULL_CONVERSATIONS_LISTED } },
        "conversations",
        this.o.requestTimeoutMs,
      );
      listed = res.conversations.map(toConversation);
    } catch (cause) {
      // The connection went away: the next one catches up again.
      if (!this.o.connection.isCurrent(conn)) return;
      const err = asClientError(cause, "pull catch-up failed");
      this.o.emitError(err);
      if (!isRetryable(err)) return;
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(
        () => {
          this.retryTimer = undefined;
          if (this.o.connection.isCurrent(conn)) void this.catchUpPull(conn, attempt + 1);
        },
        Math.max(err.retryAfterMs, backoffDelay(attempt, this.o.backoff, this.o.random)),
      );
      return;
    }
    await this.pull.catchUp(listed);
  }

  /** A pull fetch failed: told while connected (offline, the retry or the next catch-up fetches it). */
  private reportPullFailure(cause: unknown, what: string): void {
    if (this.o.connection.state === "open") this.o.emitError(asClientError(cause, what));
  }

  /** Emits a message unless already seen, after recording its cursor as processed. */
  private deliver(event: PbMessageEvent, source: "sync" | "live"): boolean {
    const cursor = Number(event.cursor);
    const m = event.message;
    if (!m) return false;
    const message: ChatMessage = toChatMessage(m);
    if (cursor === 0) {
      // A pull conversation's message: emitted in seq order by the follower (it may fetch a gap).
      this.pull.live(message).catch((cause: unknown) => {
        this.reportPullFailure(cause, "fetching a pull conversation's gap failed");
      });
      return false;
    }
    // The position moves first, so the checkpoint a listener reads (client.checkpoint) includes it.
    this.advanceCursor(cursor);
    this.pull.note(message);
    return this.emitMessage(message, cursor, source, "push");
  }

  private emitMessage(
    message: ChatMessage,
    cursor: number,
    source: "sync" | "live",
    delivery: "push" | "pull",
  ): boolean {
    // An empty id would make every later id-less message a "duplicate"; never dedupe on it.
    if (message.messageId !== "" && !this.seen.add(message.messageId)) return false;
    this.o.emitMessage({ message, cursor, source, delivery });
    return true;
  }

  private advanceCursor(cursor: number): void {
    if (cursor > this._cursor) {
      this._cursor = cursor;
      this.changed();
    }
  }

  /**
   * The checkpoint moved: the app hears of it once the synchronous work under way is done (the
   * listeners of the message that moved it have returned; a page of messages, one checkpoint).
   */
  private changed(): void {
    if (this.checkpointDue) return;
    this.checkpointDue = true;
    queueMicrotask(() => {
      this.checkpointDue = false;
      this.o.emitCheckpoint(this.checkpoint);
    });
  }
}

function isInvalidCursor(err: unknown): boolean {
  return err instanceof SwitchboardClientError && err.reason === "INVALID_CURSOR";
}
