/**
 * The embedded message log: appends with per-conversation seqs and client_msg_id dedupe, and its
 * consumers (positions stored lazily, messages handed over before their commit).
 */
import type { Database } from "lmdb";
import { dropOldest } from "../../lib/drop-oldest.js";
import { assert, type SwitchboardError } from "../../lib/errors.js";
import { activeCarrier, type TraceCarrier, tracing } from "../../lib/tracing.js";
import type {
  AppendResult,
  BatchHandler,
  Closeable,
  ConsumeOptions,
  LoggedMessage,
  MessageDraft,
  MessageLog,
  StoredMessage,
} from "../types.js";
import { sequenced } from "../types.js";
import { SettledCounters } from "./counters.js";
import { PendingWrites } from "./pending-writes.js";
import { type Guard, type Key, SEQ_MAX } from "./store.js";
import type { TurnCommits } from "./turn-commits.js";

const CONSUME_BATCH_MAX = 512;
/**
 * Body characters (UTF-16 code units) after which a batch read from the log ends, with the message
 * that crossed it: a read decodes every message synchronously, and 512 of the largest bodies (about
 * 200 MB) held the process for seconds when a server-API stream caught up.
 */
const CONSUME_BATCH_CHARS_MAX = 1024 * 1024;
/**
 * A consumer stores its position at most this long after handling a batch, or sooner with the next
 * message handed to it before its commit (then in that message's transaction): a position need not
 * cost a commit of its own. A crash re-handles what was handled since (at-least-once, idempotent).
 */
const OFFSET_STORE_DELAY_MS = 100;
/** Trace contexts kept for the router at most (embedded log, tracing on). */
const TRACES_KEPT_MAX = 10_000;
/** Conversations whose last seq is kept in memory (about twice this at most: counters.ts). */
export const LAST_SEQS_KEPT_MAX = 50_000;
/** How long a consumer waits before it reads or handles a failed batch again. */
const RETRY_PAUSE_MS = 500;

export interface EmbeddedLogOptions {
  /** Conversations whose last seq is kept in memory (LAST_SEQS_KEPT_MAX unless given). */
  lastSeqsKeptMax?: number;
  /**
   * Why a new message cannot be taken now, if it cannot (the disk nearly full: disk-space.ts). Asked
   * after the dedupe lookups, so a resend of a stored message is still answered, and before a seq is
   * assigned, so a refusal leaves no counter ahead of the disk.
   */
  refusal?: () => SwitchboardError | undefined;
}

/** Log entries point at (conversation, seq); the messages table holds the rows. */
export class EmbeddedLog implements MessageLog {
  private readonly lastSeq: SettledCounters;
  private readonly pending = new PendingWrites<Promise<AppendResult>>();
  /** Trace contexts of appended messages, by message id, until the router reads them (keepTrace). */
  private readonly traces = new Map<string, TraceCarrier>();
  private head: number;
  /** The last position when this process opened the log: a consumer may have handled up to it before. */
  private readonly headAtOpen: number;
  private readonly wakers = new Set<() => void>();
  /** Consumers idle at the end of the log that take a message before its commit (beforeCommit). */
  private readonly takers = new Set<(position: number, message: LoggedMessage) => void>();
  private readonly consumers = new Set<Closeable>();
  private readonly refusal: () => SwitchboardError | undefined;
  /** The stored position of each open consumer (or where it started, before it stored one). */
  private readonly positions = new Map<Closeable, () => number>();
  /** The handled position of each open consumer that addresses messages to members (addressesMembers). */
  private readonly addressing = new Map<Closeable, () => number>();
  /** Callers of `untilAddressed`, each waiting for the addressing consumers to handle up to `position`. */
  private addressWaiters: Array<{ position: number; done: () => void }> = [];

  constructor(
    private readonly messages: Database<StoredMessage, Key>,
    private readonly dedupe: Database<number, Key>,
    private readonly entries: Database<[string, number], Key>,
    private readonly offsets: Database<number, Key>,
    private readonly turns: TurnCommits,
    private readonly guard: Guard,
    private readonly isClosed: () => boolean,
    private readonly onConsumerError: (group: string, err: unknown) => void,
    options: EmbeddedLogOptions = {},
  ) {
    this.head = this.lastCommitted();
    this.headAtOpen = this.head;
    this.lastSeq = new SettledCounters(options.lastSeqsKeptMax ?? LAST_SEQS_KEPT_MAX, () => turns.settled());
    this.refusal = options.refusal ?? (() => undefined);
  }

  /** The last position committed (the in-memory head may be ahead while appends are in flight). */
  lastCommitted(): number {
    for (const key of this.entries.getKeys({ reverse: true, limit: 1 })) return key as number;
    return 0;
  }

  /**
   * The lowest position some consumer may still have to read after (retention): the least stored
   * position of every group, and where each open consumer started before it stored one. Undefined
   * while there is no consumer group at all.
   */
  consumedUpTo(): number | undefined {
    let low: number | undefined;
    for (const { value } of this.offsets.getRange()) if (low === undefined || value < low) low = value;
    for (const position of this.positions.values()) {
      const at = position();
      if (low === undefined || at < low) low = at;
    }
    return low;
  }

  /**
   * Resolves once every consumer that addresses messages to members (ConsumeOptions.addressesMembers:
   * the router) has handled every message appended before the call, so a membership change stored
   * next counts for no message sent before it (ADR 0012). At most `timeoutMs` (false then): a
   * consumer that keeps failing must not stop membership changes.
   */
  untilAddressed(timeoutMs: number): Promise<boolean> {
    const position = this.head;
    if (this.addressedUpTo() >= position) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.addressWaiters = this.addressWaiters.filter((w) => w !== waiter);
        resolve(false);
      }, timeoutMs);
      const waiter = {
        position,
        done: () => {
          clearTimeout(timer);
          resolve(true);
        },
      };
      this.addressWaiters.push(waiter);
    });
  }

  private addressedUpTo(): number {
    let low = Number.POSITIVE_INFINITY;
    for (const handled of this.addressing.values()) low = Math.min(low, handled());
    return low;
  }

  private wakeAddressWaiters(): void {
    if (this.addressWaiters.length === 0) return;
    const upTo = this.addressedUpTo();
    const due = this.addressWaiters.filter((w) => w.position <= upTo);
    if (due.length === 0) return;
    this.addressWaiters = this.addressWaiters.filter((w) => w.position > upTo);
    for (const w of due) w.done();
  }

  /** Conversations whose last seq is in memory now (for tests). */
  get lastSeqsKept(): number {
    return this.lastSeq.size;
  }

  private seqOf(conversationId: string): number {
    let seq = this.lastSeq.get(conversationId);
    if (seq === undefined) {
      seq = 0;
      for (const key of this.messages.getKeys({
        start: [conversationId, SEQ_MAX],
        end: [conversationId, 0],
        reverse: true,
        limit: 1,
      })) {
        seq = (key as [string, number])[1];
      }
      this.lastSeq.set(conversationId, seq);
    }
    return seq;
  }

  // No use for AppendHints: the dedupe lookup here is a read of a local B-tree, not a network round trip.
  append(draft: MessageDraft): Promise<AppendResult> {
    const dedupeKey: Key = [draft.conversationId, draft.sender, draft.clientMsgId];
    const pendingKey = JSON.stringify(dedupeKey);
    const inFlight = this.pending.get(pendingKey);
    if (inFlight) return inFlight.then((r) => ({ message: r.message, duplicate: true }));
    const existingSeq = this.dedupe.get(dedupeKey);
    if (existingSeq !== undefined) {
      const original = this.messages.get([draft.conversationId, existingSeq]);
      assert(original, `dedupe entry without message ${draft.conversationId}/${existingSeq}`);
      return Promise.resolve({ message: original, duplicate: true });
    }
    const refusal = this.refusal();
    if (refusal) return Promise.reject(refusal);
    if (tracing.on) this.keepTrace(draft.messageId);
    const seq = this.seqOf(draft.conversationId) + 1;
    this.lastSeq.set(draft.conversationId, seq);
    const position = ++this.head;
    const message = sequenced(draft, seq);
    const commit = this.turns.write((w) => {
      w.put(this.messages, [draft.conversationId, seq], message);
      w.put(this.dedupe, dedupeKey, seq);
      w.put(this.entries, position, [draft.conversationId, seq]);
    });
    const write = this.guard(() => commit).then((): AppendResult => {
      for (const wake of this.wakers) wake();
      return { message, duplicate: false };
    });
    this.pending.set(commit, pendingKey, write);
    if (this.takers.size > 0) {
      const trace = this.traces.get(message.messageId);
      const committed = write.then(() => undefined);
      committed.catch(() => undefined); // the append's own promise reports a failed commit
      const handed = logged(message, trace, committed);
      for (const take of this.takers) take(position, handed);
    }
    return write;
  }

  /** The same dedupe read as `append`'s (an append in flight counts once committed), and its message. */
  async appended(
    conversationId: string,
    sender: string,
    clientMsgId: string,
  ): Promise<StoredMessage | undefined> {
    const dedupeKey: Key = [conversationId, sender, clientMsgId];
    const inFlight = this.pending.get(JSON.stringify(dedupeKey));
    if (inFlight) return (await inFlight).message;
    const seq = this.dedupe.get(dedupeKey);
    if (seq === undefined) return undefined;
    const original = this.messages.get([conversationId, seq]);
    assert(original, `dedupe entry without message ${conversationId}/${seq}`);
    return original;
  }

  /**
   * Keeps the sender's trace context for the router (in memory only, bounded: a trace is worth
   * nothing after a restart, and a message the router never reads must not pin its entry).
   */
  private keepTrace(messageId: string): void {
    const carrier = activeCarrier();
    if (!carrier) return;
    this.traces.set(messageId, carrier);
    if (this.traces.size > TRACES_KEPT_MAX) dropOldest(this.traces);
  }

  async consume(group: string, handler: BatchHandler, options: ConsumeOptions = {}): Promise<Closeable> {
    if (options.startAt === "latest" && this.offsets.get(group) === undefined) {
      // Fixed now, durably: a reopened consumer of the new group starts here too, not at a later end.
      let end = 0;
      for (const key of this.entries.getKeys({ reverse: true, limit: 1 })) end = key as number;
      await this.guard(() => this.offsets.put(group, end));
    }
    let stopped = false;
    let wake: (() => void) | undefined;
    const waker = () => wake?.();
    this.wakers.add(waker);
    let offset = this.offsets.get(group) ?? 0;
    let stored = offset;
    /** The last position whose store committed (retention keeps everything after it). */
    let committedAt = offset;
    let storeTimer: NodeJS.Timeout | undefined;
    const storeOffset = (): Promise<unknown> | undefined => {
      clearTimeout(storeTimer);
      storeTimer = undefined;
      if (offset === stored) return undefined;
      const at = offset;
      stored = at;
      // In the transaction of the messages it covers or a later one; a crash before this lands only
      // means re-handling (idempotent).
      const write = this.guard(() => this.turns.write((w) => w.put(this.offsets, group, at)));
      write.then(
        () => {
          if (at > committedAt) committedAt = at;
        },
        () => undefined,
      );
      return write;
    };
    /** Messages handed over before their commit (beforeCommit), next in the log after `offset`. */
    let handed: LoggedMessage[] = [];
    /** The last position in a batch being handled or in `handed`. */
    let taken = offset;
    const take = (position: number, message: LoggedMessage) => {
      if (position !== taken + 1 || handed.length >= CONSUME_BATCH_MAX) return; // read from the log later
      handed.push(message);
      taken = position;
      storeOffset(); // in the transaction of this message (or the next one)
      wake?.();
    };
    if (options.beforeCommit) this.takers.add(take);
    const loop = (async () => {
      while (!stopped && !this.isClosed()) {
        let batch: LoggedMessage[] = [];
        let last = offset;
        if (handed.length > 0) {
          batch = handed;
          handed = [];
          last = offset + batch.length;
        } else {
          try {
            last = this.read(offset, batch, options.markMayRepeat);
          } catch (err) {
            // A read of the log or of a message failed (an invariant, a damaged row): like a failed
            // handler, report it and read the same batch again after a pause. Never stop silently.
            this.onConsumerError(group, err);
            await new Promise((r) => setTimeout(r, RETRY_PAUSE_MS));
            continue;
          }
          taken = last;
        }
        if (batch.length === 0) {
          // Appends wake us after their commit (or, for beforeCommit, as they are queued); re-check
          // first so a wake-up between read and wait is not lost.
          await new Promise<void>((resolve) => {
            wake = resolve;
            // offset + 1 is the next entry: retention removes none after a position of any consumer.
            if (stopped || handed.length > 0 || this.entries.doesExist(offset + 1)) resolve();
          });
          wake = undefined;
          continue;
        }
        try {
          await handler(batch);
        } catch (err) {
          // What was handed over meanwhile is read from the log again, after this batch.
          handed = [];
          taken = offset;
          // A consumer being closed fails its batch in flight on purpose: stop, offset unmoved.
          if (stopped) break;
          // At-least-once: keep the offset and retry the same batch after a pause.
          this.onConsumerError(group, err);
          await new Promise((r) => setTimeout(r, RETRY_PAUSE_MS));
          continue;
        }
        offset = last;
        if (options.addressesMembers) this.wakeAddressWaiters();
        storeTimer ??= setTimeout(storeOffset, OFFSET_STORE_DELAY_MS);
      }
    })();
    const consumer: Closeable = {
      close: async () => {
        stopped = true;
        wake?.();
        this.wakers.delete(waker);
        this.takers.delete(take);
        this.forgetConsumer(consumer);
        await loop;
        // A failed write has already poisoned the backend (guard, onFatal): closing still completes.
        await storeOffset()?.catch(() => undefined);
      },
    };
    this.consumers.add(consumer);
    this.positions.set(consumer, () => committedAt);
    if (options.addressesMembers) this.addressing.set(consumer, () => offset);
    // The loop catches what it runs into; anything else is a bug, reported rather than swallowed.
    loop.catch((err: unknown) => {
      this.forgetConsumer(consumer);
      this.onConsumerError(group, err);
    });
    return consumer;
  }

  /** A consumer closed or stopped: retention and membership changes no longer wait for it. */
  private forgetConsumer(consumer: Closeable): void {
    this.consumers.delete(consumer);
    this.positions.delete(consumer);
    this.addressing.delete(consumer);
    this.wakeAddressWaiters();
  }

  /**
   * Reads the batch after `offset` into `batch` (CONSUME_BATCH_MAX messages, CONSUME_BATCH_CHARS_MAX
   * body characters); returns its last position (`offset` if none).
   */
  private read(offset: number, batch: LoggedMessage[], markMayRepeat = false): number {
    let last = offset;
    let chars = 0;
    for (const { key, value } of this.entries.getRange({ start: offset + 1, limit: CONSUME_BATCH_MAX })) {
      const message = this.messages.get(value);
      assert(message, `log entry ${String(key)} points at a missing message`);
      const trace = this.traces.get(message.messageId);
      const out = trace ? logged(message, trace) : message;
      if (markMayRepeat && (key as number) <= this.headAtOpen) batch.push({ ...out, mayRepeat: true });
      else batch.push(out);
      last = key as number;
      chars += message.body.length;
      if (chars >= CONSUME_BATCH_CHARS_MAX) break;
    }
    return last;
  }

  async close(): Promise<void> {
    await Promise.all([...this.consumers].map((c) => c.close()));
    await this.pending.settled();
  }
}

/** A message as the log hands it to a consumer, built as a literal (see `sequenced`). */
export function logged(
  m: StoredMessage,
  trace: TraceCarrier | undefined,
  committed?: Promise<void>,
): LoggedMessage {
  const out: LoggedMessage = sequenced(m, m.seq);
  if (trace) out.trace = trace;
  if (committed) out.committed = committed;
  return out;
}
