/**
 * Retention of the embedded message path's bookkeeping, in the background (docs/protocol.md §2.3,
 * idempotency; ADR 0003). The message rows and the inboxes are the users' history and are kept; what
 * is removed is what only serves a window:
 *
 * - **Dedupe keys** (conversation, sender, client_msg_id → seq) once their message is older than the
 *   dedupe window: the same window as the distributed backend's (`kafka.dedupeWindowHours`, 168 hours
 *   by default). A resend after it is a new message, on both backends.
 * - **Log entries** (position → message) once every consumer group has passed them *and* their
 *   dedupe key is gone (the log, read in order, is how retention finds the keys to remove: it keeps
 *   about one window of entries). The last committed entry always stays: the next position is taken
 *   from it at start, and stored positions must never be reissued.
 * - **Inbox index entries** (conversation, seq, user → cursor, which make the router's re-handling
 *   idempotent) with their message's log entry: nothing handles that message again. The distributed
 *   backend's index expires after the dedupe window too.
 *
 * Nothing here runs on a message's path. A pass reads the log from where the previous one stopped, at
 * most `entriesPerPass` entries (and removes at most `removalsPerPass` keys) in one transaction; the
 * next pass comes at once while there is more, else after `intervalMs`. Measured (tmpfs, 40,000
 * messages): 17 µs of CPU per message with one or two recipients (11 on the event loop, the rest on
 * LMDB's writer thread), about 3 µs more per further recipient; an idle pass 6 µs. It is spent one
 * window after the message, at the pace the messages came.
 *
 * A consumer group that is never consumed again (a server API subscription nobody resumes) keeps
 * every log entry after its position, as Kafka would not (it expires by time): the entries are small
 * (a position and a message key), but they grow with the messages until the group is consumed.
 */
import type { Database, RootDatabase } from "lmdb";
import type { StoredMessage } from "../types.js";
import type { EmbeddedInbox } from "./inbox.js";
import type { EmbeddedLog } from "./log.js";
import { type Guard, KEY_END, type Key } from "./store.js";

/** The dedupe window: as the distributed backend's default (kafka.dedupeWindowHours, 168 hours). */
export const DEDUPE_WINDOW_MS = 168 * 3_600_000;
const RETENTION_INTERVAL_MS = 1_000;
/**
 * A pass holds the event loop for its reads (about 11 µs per entry with two recipients, measured on
 * tmpfs): 500 entries are about 5 ms. Passes with more due follow each other after their commit, so
 * retention keeps up with 500 entries per commit (tens of thousands of messages a second).
 */
const ENTRIES_PER_PASS = 500;
const REMOVALS_PER_PASS = 2_000;

export interface RetentionOptions {
  dedupeWindowMs?: number;
  intervalMs?: number;
  entriesPerPass?: number;
  removalsPerPass?: number;
  now?: () => number;
  /** A pass that failed (a read error, a damaged row): reported, and passes go on. */
  onError?: (err: unknown) => void;
}

export interface RetentionDbs {
  messages: Database<StoredMessage, Key>;
  dedupe: Database<number, Key>;
  entries: Database<[string, number], Key>;
  inboxIndex: Database<number, Key>;
}

/** What one pass removed. */
export interface RetentionPass {
  dedupeKeys: number;
  logEntries: number;
  inboxIndexEntries: number;
  /** More is due at once (a pass stopped at its bounds). */
  more: boolean;
}

export class Retention {
  /** Entries up to here have had their dedupe key removed (in memory: a restart walks them again). */
  private dedupedUpTo = 0;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<RetentionPass> | undefined;
  private stopped = false;
  private readonly windowMs: number;
  private readonly intervalMs: number;
  private readonly entriesPerPass: number;
  private readonly removalsPerPass: number;
  private readonly now: () => number;
  private readonly onError: (err: unknown) => void;

  constructor(
    private readonly root: RootDatabase,
    private readonly dbs: RetentionDbs,
    private readonly log: EmbeddedLog,
    private readonly inbox: EmbeddedInbox,
    private readonly guard: Guard,
    options: RetentionOptions = {},
    /** The log's last committed position when the inbox's legacy index was found (inbox.ts). */
    private readonly legacyIndexUntil = 0,
  ) {
    this.windowMs = options.dedupeWindowMs ?? DEDUPE_WINDOW_MS;
    this.intervalMs = options.intervalMs ?? RETENTION_INTERVAL_MS;
    this.entriesPerPass = options.entriesPerPass ?? ENTRIES_PER_PASS;
    this.removalsPerPass = options.removalsPerPass ?? REMOVALS_PER_PASS;
    this.now = options.now ?? Date.now;
    this.onError = options.onError ?? (() => undefined);
  }

  /** Runs passes in the background until stop. */
  start(): void {
    this.schedule(this.intervalMs);
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.pass().then(
        (done) => this.schedule(done.more ? 0 : this.intervalMs),
        (err: unknown) => {
          // A failed commit also poisoned the backend (guard, onFatal); a read error is reported and
          // the next pass tries again, so retention never stops in silence.
          this.onError(err);
          this.schedule(this.intervalMs);
        },
      );
    }, delayMs);
    this.timer.unref();
  }

  /** One pass (the background's, or a test's); passes never overlap. */
  pass(): Promise<RetentionPass> {
    this.running ??= this.run().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async run(): Promise<RetentionPass> {
    const { messages, dedupe, entries, inboxIndex } = this.dbs;
    const done: RetentionPass = { dedupeKeys: 0, logEntries: 0, inboxIndexEntries: 0, more: false };
    const consumed = this.log.consumedUpTo();
    if (this.inbox.readsLegacyIndex && consumed !== undefined && consumed >= this.legacyIndexUntil)
      await this.inbox.dropLegacyIndex();
    const removals: Array<[Database<unknown, Key>, Key]> = [];
    const remove = (db: Database<unknown, Key>, key: Key) => removals.push([db, key]);

    // Dedupe keys of messages older than the window, in log order, from where the last pass stopped.
    const cutoff = this.now() - this.windowMs;
    let read = 0;
    for (const { key, value } of entries.getRange({ start: this.dedupedUpTo + 1 })) {
      if (read >= this.entriesPerPass || removals.length >= this.removalsPerPass) {
        done.more = true;
        break;
      }
      read++;
      const message = messages.get(value);
      if (message) {
        if (message.createdAtMs > cutoff) break;
        const dedupeKey: Key = [message.conversationId, message.sender, message.clientMsgId];
        // A later message may have taken the key since (after an earlier pass removed it): keep its.
        if (dedupe.get(dedupeKey) === message.seq) {
          remove(dedupe, dedupeKey);
          done.dedupeKeys++;
        }
      }
      this.dedupedUpTo = key as number;
    }

    // Log entries (and their messages' inbox index entries) that every consumer has passed, whose
    // dedupe key is gone; never the last committed one.
    const upTo = Math.min(consumed ?? 0, this.dedupedUpTo, this.log.lastCommitted() - 1);
    read = 0;
    for (const { key, value } of entries.getRange({ end: upTo + 1 })) {
      if (read >= this.entriesPerPass || removals.length >= this.removalsPerPass) {
        done.more = true;
        break;
      }
      read++;
      const [conversationId, seq] = value;
      let whole = true;
      for (const indexKey of inboxIndex.getKeys({
        start: [conversationId, seq],
        end: [conversationId, seq, KEY_END],
      })) {
        if (removals.length >= this.removalsPerPass) {
          whole = false; // the rest of this message's entries next pass, then its log entry
          break;
        }
        remove(inboxIndex, indexKey as Key);
        done.inboxIndexEntries++;
      }
      if (!whole) {
        done.more = true;
        break;
      }
      remove(entries, key as Key);
      done.logEntries++;
    }

    if (removals.length > 0)
      await this.guard(() =>
        this.root.batch(() => {
          for (const [db, key] of removals) void db.remove(key);
        }),
      );
    return done;
  }

  /** Stops the passes; resolves once the one running (if any) is done. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running?.catch(() => undefined);
  }
}
