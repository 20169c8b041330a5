/**
 * The embedded inbox: each user's entries by gap-free cursor, assigned in memory by the only writer.
 *
 * The entries are the user's durable history and are kept (they grow with every message a user
 * receives, as the messages do; the one LMDB file is what a backup copies). The index that makes
 * re-handling idempotent (user, conversation, seq → cursor) is needed only while the router may
 * handle a message again, so retention (retention.ts) removes a message's index entries with its log
 * entry. It is keyed by message (conversation, seq, user) for that: since 2026-12-05; the index of
 * earlier versions (`inbox_index`, keyed by user) is still read until the consumers have passed what
 * was in the log when it was opened, then dropped.
 */
import type { Database } from "lmdb";
import type { InboxEntry, InboxStore } from "../types.js";
import { inboxEntry } from "../types.js";
import { SettledCounters } from "./counters.js";
import { PendingWrites } from "./pending-writes.js";
import { type Guard, type Key, SEQ_MAX } from "./store.js";
import type { TurnCommits } from "./turn-commits.js";

/** Users whose inbox head is kept in memory (about twice this at most: counters.ts). */
export const INBOX_HEADS_KEPT_MAX = 50_000;

export class EmbeddedInbox implements InboxStore {
  private readonly heads: SettledCounters;
  private readonly pending = new PendingWrites<{ cursor: number; written: Promise<unknown> }>();
  /** The index of earlier versions, keyed [user, conversation, seq], while it may still be needed. */
  private legacy: Database<number, Key> | undefined;

  constructor(
    private readonly entries: Database<Omit<InboxEntry, "userId" | "cursor">, Key>,
    /** [conversation, seq, user] → cursor. */
    private readonly index: Database<number, Key>,
    private readonly turns: TurnCommits,
    private readonly guard: Guard,
    headsKeptMax = INBOX_HEADS_KEPT_MAX,
  ) {
    this.heads = new SettledCounters(headsKeptMax, () => turns.settled());
  }

  /** Reads `legacy` too (entries written by earlier versions) until dropLegacyIndex. */
  useLegacyIndex(legacy: Database<number, Key>): void {
    this.legacy = legacy;
  }

  /** Stops reading the earlier versions' index and drops it (retention, once nothing needs it). */
  async dropLegacyIndex(): Promise<void> {
    const legacy = this.legacy;
    if (!legacy) return;
    this.legacy = undefined;
    await this.guard(() => legacy.drop());
  }

  get readsLegacyIndex(): boolean {
    return this.legacy !== undefined;
  }

  /** Users whose head is in memory now (for tests). */
  get headsKept(): number {
    return this.heads.size;
  }

  private headOf(userId: string): number {
    let head = this.heads.get(userId);
    if (head === undefined) {
      head = 0;
      for (const key of this.entries.getKeys({
        start: [userId, SEQ_MAX],
        end: [userId, 0],
        reverse: true,
        limit: 1,
      })) {
        head = (key as [string, number])[1];
      }
      this.heads.set(userId, head);
    }
    return head;
  }

  async append(entries: Array<Omit<InboxEntry, "cursor">>): Promise<InboxEntry[]> {
    const out: InboxEntry[] = [];
    const fresh: InboxEntry[] = [];
    /** The idKey of each fresh entry, for the entries in flight. */
    const freshKeys: string[] = [];
    const waitFor = new Set<Promise<unknown>>();
    const inThisCall = new Map<string, number>();
    for (const e of entries) {
      const idKey = `${e.userId}\u0000${e.conversationId}\u0000${e.seq}`;
      const repeated = inThisCall.get(idKey);
      if (repeated !== undefined) {
        out.push(inboxEntry(e, repeated));
        continue;
      }
      const inFlight = this.pending.get(idKey);
      if (inFlight) {
        // Another append is writing this entry: resolve only once it is durable too.
        waitFor.add(inFlight.written);
        out.push(inboxEntry(e, inFlight.cursor));
        continue;
      }
      const existing =
        this.index.get([e.conversationId, e.seq, e.userId]) ??
        this.legacy?.get([e.userId, e.conversationId, e.seq]);
      if (existing !== undefined) {
        out.push(inboxEntry(e, existing));
        continue;
      }
      const cursor = this.headOf(e.userId) + 1;
      this.heads.set(e.userId, cursor);
      const entry = inboxEntry(e, cursor);
      inThisCall.set(idKey, cursor);
      fresh.push(entry);
      freshKeys.push(idKey);
      out.push(entry);
    }
    if (fresh.length > 0) {
      const commit = this.turns.write((w) => {
        for (const e of fresh) {
          w.put(this.entries, [e.userId, e.cursor], {
            conversationId: e.conversationId,
            seq: e.seq,
            messageId: e.messageId,
          });
          w.put(this.index, [e.conversationId, e.seq, e.userId], e.cursor);
        }
      });
      const written = this.guard(() => commit);
      for (let i = 0; i < fresh.length; i++) {
        this.pending.set(commit, freshKeys[i]!, { cursor: fresh[i]!.cursor, written });
      }
      waitFor.add(written);
    }
    await Promise.all(waitFor);
    return out;
  }

  async appendedFor(conversationId: string, seq: number): Promise<string[]> {
    const users: string[] = [];
    for (const key of this.index.getKeys({ start: [conversationId, seq], end: [conversationId, seq + 1] }))
      users.push((key as [string, number, string])[2]);
    return users;
  }

  async read(userId: string, after: number, limit: number): Promise<InboxEntry[]> {
    const out: InboxEntry[] = [];
    for (const { key, value } of this.entries.getRange({
      start: [userId, after + 1],
      end: [userId, SEQ_MAX],
      limit,
    })) {
      out.push({ userId, cursor: (key as [string, number])[1], ...value });
    }
    return out;
  }

  async head(userId: string): Promise<number> {
    // Only committed entries count: the in-memory head may be ahead while a batch is in flight.
    for (const key of this.entries.getKeys({
      start: [userId, SEQ_MAX],
      end: [userId, 0],
      reverse: true,
      limit: 1,
    })) {
      return (key as [string, number])[1];
    }
    return 0;
  }

  async close(): Promise<void> {}
}
