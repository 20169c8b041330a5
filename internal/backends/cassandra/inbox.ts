/**
 * InboxStore over `inbox_heads` (partition user_id; static head; clustering (conversation_id, seq) ->
 * cursor, message_id) and `inbox_by_user` (partition (user_id, bucket); clustering cursor).
 *
 * Cursor assignment is fenced exactly like the sequencer (ADR 0002): per user, one conditional batch on
 * the user's `inbox_heads` partition sets head = h + k IF head = h and inserts one row per new
 * (conversation, seq) IF NOT EXISTS. If another appender moved the head or recorded one of the entries
 * first, nothing is applied and the round is retried with a fresh read (bounded; then UNAVAILABLE).
 * Only after the batch applied are the `inbox_by_user` rows written (older bucket first, one unlogged
 * single-partition batch per bucket). Those rows are immutable, so every append re-writes the rows of
 * the entries it returns, including ones recorded earlier: a retry after a crash between the two steps
 * repairs the stream, and an append never resolves before its entries are readable.
 *
 * Within one process, concurrent appends for the same user are queued and merged into one round (one
 * Paxos round for many entries instead of a retry storm); across processes the CAS decides.
 *
 * read() returns a gap-free run of cursors only, and none above the user's head: if an entry's row is
 * not written yet (its appender is between the two steps) the page stops before it, so a device's
 * cursor never skips an entry.
 *
 * The distributed platform writes inboxes through the owner path below instead (ADR 0002: no Paxos
 * round per user per batch); `append` stays for callers outside the message path and is the contract.
 *
 * The owner path writes the head as an INSERT of a row at (conversation '', seq 0), which sorts before
 * every index row and never expires: a head read (`LIMIT 1`, which reads the partition's first row
 * with the static cells) stops there instead of passing every expired index row (tombstones until
 * compaction after gc_grace_seconds; past 100,000 the node refuses the read). Look-ups name their
 * conversation and never see it.
 */

import cassandra from "cassandra-driver";
import { invariantViolated } from "../../lib/errors.js";
import { type InboxEntry, type InboxStore, inboxEntry } from "../types.js";
import { INBOX_BUCKET_SIZE, inboxBucket } from "./schema.js";
import {
  backoff,
  chunks,
  contended,
  groupBy,
  isUnavailable,
  Limiter,
  optionalNumber,
  type Session,
  type Statement,
  toLong,
  toNumber,
  toText,
} from "./session.js";
import { routingKey, type Unit } from "./turn-writes.js";

type Draft = Omit<InboxEntry, "cursor">;
const UNSET = cassandra.types.unset;
/** A user's inbox head as its owner keeps it: the last cursor, and the offset of the last record applied. */
export interface OwnedHead {
  head: number;
  appliedOffset: number;
}

/** Entries one conditional batch records at most (a round with more takes several, in order). */
const CAS_ENTRIES_MAX = 250;
/** Entries of queued appends merged into one round at most (a single larger append is not split). */
const ROUND_ENTRIES_MAX = 1000;
const CAS_ATTEMPTS_MAX = 32;
const IN_MAX = 100;

const entryKey = (conversationId: string, seq: number) => `${conversationId}\u0000${seq}`;

interface Request {
  entries: Draft[];
  resolve: (cursors: Map<string, number>) => void;
  reject: (err: unknown) => void;
}

export interface InboxStoreOptions {
  /** Users whose rounds run at the same time, per store. Default 32. */
  concurrentUsersMax?: number;
}

export class CassandraInboxStore implements InboxStore {
  private readonly q: ReturnType<typeof statements>;
  private readonly lanes = new Map<string, Request[]>();
  private readonly limiter: Limiter;
  private readonly ownerLimiter = new Limiter(16);
  /** Conditional batches that did not apply (lost a race) or whose outcome was unknown (timeout). */
  readonly stats = { casApplied: 0, casConflicts: 0, casUnknown: 0 };

  constructor(
    private readonly s: Session,
    options: InboxStoreOptions = {},
  ) {
    this.q = statements(s);
    this.limiter = new Limiter(options.concurrentUsersMax ?? 32);
  }

  async append(entries: Draft[]): Promise<InboxEntry[]> {
    if (entries.length === 0) return [];
    const byUser = groupBy(entries, (e) => e.userId);
    const cursors = new Map<string, Map<string, number>>();
    await Promise.all(
      [...byUser].map(async ([user, own]) => {
        cursors.set(user, await this.submit(user, own));
      }),
    );
    return entries.map((e) => {
      const cursor = cursors.get(e.userId)?.get(entryKey(e.conversationId, e.seq));
      if (cursor === undefined)
        throw invariantViolated(`no cursor for ${e.userId}/${e.conversationId}/${e.seq}`);
      return inboxEntry(e, cursor);
    });
  }

  /** Queues a user's entries; the user's lane merges everything queued into its next round. */
  private submit(user: string, entries: Draft[]): Promise<Map<string, number>> {
    return new Promise((resolve, reject) => {
      const queue = this.lanes.get(user);
      if (queue) {
        queue.push({ entries, resolve, reject });
        return;
      }
      this.lanes.set(user, [{ entries, resolve, reject }]);
      void this.drain(user);
    });
  }

  private async drain(user: string): Promise<void> {
    // Let the rest of the current tick queue its appends first: they join this round.
    await Promise.resolve();
    const queue = this.lanes.get(user)!;
    while (queue.length > 0) {
      const taken: Request[] = [];
      let count = 0;
      while (
        queue.length > 0 &&
        (taken.length === 0 || count + queue[0]!.entries.length <= ROUND_ENTRIES_MAX)
      ) {
        const request = queue.shift()!;
        taken.push(request);
        count += request.entries.length;
      }
      try {
        const cursors = await this.limiter.run(() =>
          this.round(
            user,
            taken.flatMap((r) => r.entries),
          ),
        );
        for (const r of taken) r.resolve(cursors);
      } catch (err) {
        for (const r of taken) r.reject(err);
      }
    }
    this.lanes.delete(user);
  }

  /** Records the entries (in order, duplicates once) and writes their stream rows; key -> cursor. */
  private async round(user: string, entries: Draft[]): Promise<Map<string, number>> {
    const distinct = new Map<string, Draft>();
    for (const e of entries) {
      const key = entryKey(e.conversationId, e.seq);
      if (!distinct.has(key)) distinct.set(key, e);
    }
    const cursors = new Map<string, number>();
    for (const chunk of chunks([...distinct.values()], CAS_ENTRIES_MAX)) {
      const recorded = await this.record(user, chunk);
      await this.writeStream(user, recorded);
      for (const r of recorded) cursors.set(entryKey(r.conversationId, r.seq), r.cursor);
    }
    return cursors;
  }

  /** The CAS loop: gives the chunk's new entries the next cursors; returns every entry with its cursor. */
  private async record(user: string, chunk: Draft[]): Promise<InboxEntry[]> {
    let lastError: unknown;
    for (let attempt = 1; attempt <= CAS_ATTEMPTS_MAX; attempt++) {
      const [head, existing] = await Promise.all([this.readHead(user), this.lookup(user, chunk)]);
      const out: InboxEntry[] = [];
      const fresh: InboxEntry[] = [];
      let next = head;
      for (const e of chunk) {
        const found = existing.get(entryKey(e.conversationId, e.seq));
        if (found) {
          out.push(inboxEntry(e, found.cursor, found.messageId));
          continue;
        }
        const entry = inboxEntry(e, ++next);
        fresh.push(entry);
        out.push(entry);
      }
      if (fresh.length === 0) return out;
      const fence =
        head === 0
          ? { query: this.q.casHeadFromNothing, params: [next, user] }
          : { query: this.q.casHead, params: [next, user, head] };
      try {
        const result = await this.s.batch(
          "inbox_heads: assign cursors (conditional batch)",
          [
            fence,
            ...fresh.map((e) => ({
              query: this.q.insertIndex,
              params: [user, e.conversationId, e.seq, e.cursor, e.messageId],
            })),
          ],
          { idempotent: false, logged: true },
        );
        if (result.wasApplied()) {
          this.stats.casApplied++;
          return out;
        }
        this.stats.casConflicts++;
      } catch (err) {
        // Outcome unknown: the next attempt's lookup finds the entries if the batch applied after all.
        if (!isUnavailable(err)) throw err;
        this.stats.casUnknown++;
        lastError = err;
      }
      await backoff(attempt);
    }
    throw contended(`inbox_heads: assign cursors for ${user}`, CAS_ATTEMPTS_MAX, lastError);
  }

  private async readHead(user: string): Promise<number> {
    const result = await this.s.execute("inbox_heads: read head", this.q.head, [user], { idempotent: true });
    return optionalNumber(result.first()?.get("head"), "inbox_heads.head") ?? 0;
  }

  private async lookup(
    user: string,
    chunk: Draft[],
  ): Promise<Map<string, { cursor: number; messageId: string }>> {
    const found = new Map<string, { cursor: number; messageId: string }>();
    const reads: Array<{ conversationId: string; seqs: number[] }> = [];
    for (const [conversationId, group] of groupBy(chunk, (e) => e.conversationId)) {
      for (const seqs of chunks(
        group.map((e) => e.seq),
        IN_MAX,
      ))
        reads.push({ conversationId, seqs });
    }
    await Promise.all(
      reads.map(async ({ conversationId, seqs }) => {
        const result = await this.s.execute(
          "inbox_heads: look up entries",
          this.q.lookup,
          [user, conversationId, seqs],
          { idempotent: true, fetchSize: IN_MAX + 1 },
        );
        for (const row of result.rows) {
          found.set(entryKey(conversationId, toNumber(row.get("seq"), "inbox_heads.seq")), {
            cursor: toNumber(row.get("cursor"), "inbox_heads.cursor"),
            messageId: toText(row.get("message_id"), "inbox_heads.message_id"),
          });
        }
      }),
    );
    return found;
  }

  /** Writes the stream rows, older bucket first; each bucket's rows are one single-partition batch. */
  private async writeStream(user: string, entries: InboxEntry[]): Promise<void> {
    const byBucket = [...groupBy(entries, (e) => String(inboxBucket(e.cursor))).values()].sort(
      (a, b) => a[0]!.cursor - b[0]!.cursor,
    );
    for (const rows of byBucket) {
      const statements: Statement[] = rows.map((e) => ({
        query: this.q.insertStream,
        params: [user, inboxBucket(e.cursor), e.cursor, e.conversationId, e.seq, e.messageId],
      }));
      const what = "inbox_by_user: write entries";
      if (statements.length === 1)
        await this.s.execute(what, statements[0]!.query, statements[0]!.params, { idempotent: true });
      else await this.s.batch(what, statements, { idempotent: true, logged: false });
    }
  }

  // -------------------------------------------------------------------------------------------
  // The owner path (ADR 0002): the owner of a user's inbox partition assigns the cursors in memory and
  // writes plainly, with its epoch as the write timestamp: the stream rows, and the user's head with
  // the Kafka offset of the last record applied, the head and offset before the batch, and one index
  // row per entry (which expires after `ttlSeconds`; it answers re-deliveries of a message, which are
  // rare and recent). They go out together, in no order: a head may be stored without some of its
  // batch's rows when a write fails part-way, so a head read back is believed only once every row of
  // its batch is found (`ownedHeads`); otherwise the owner starts from the head before that batch and
  // writes the batch again, under a newer epoch (the same cursors for the same records: they follow
  // from the head and the records, in partition order).

  /**
   * Head and last applied record offset per user (0 and -1 when none), as far as its stream rows are
   * stored: one request per 100 users, then one per user whose last batch had entries. `log`: the
   * log (inbox topic) the offsets are asked of; offsets stored for another one (a keyspace restored
   * beside fresh topics) are no positions in it and read as none, the heads as they are.
   */
  async ownedHeads(users: string[], log?: string, unnamedLog = log): Promise<Map<string, OwnedHead>> {
    const ids = [...new Set(users)];
    const out = new Map<string, OwnedHead>(ids.map((u) => [u, { head: 0, appliedOffset: -1 }]));
    const before = new Map<string, OwnedHead>();
    await this.ownerLimiter.map(chunks(ids, IN_MAX), async (part) => {
      const result = await this.s.execute("inbox_heads: read owned heads", this.q.ownedHeads, [part], {
        idempotent: true,
        fetchSize: IN_MAX + 1,
      });
      for (const row of result.rows) {
        const user = toText(row.get("user_id"), "inbox_heads.user_id");
        // Unnamed: written by a version before logs were named, in the log the keyspace served
        // first (firstLog).
        const storedLog = (row.get("applied_log") as string | null | undefined) ?? unnamedLog;
        const ofLog = log === undefined || storedLog === log;
        const offset = (column: string) =>
          ofLog ? optionalNumber(row.get(column), `inbox_heads.${column}`) : -1;
        out.set(user, {
          head: optionalNumber(row.get("head"), "inbox_heads.head") ?? 0,
          appliedOffset: offset("applied_offset") ?? -1,
        });
        const prevHead = optionalNumber(row.get("prev_head"), "inbox_heads.prev_head");
        // Written with this head (a version before wrote heads alone, after their rows, and leaves
        // an older one standing here): the one this head's batch began from.
        const sameWrite = String(row.get("head_written")) === String(row.get("prev_written"));
        if (prevHead !== undefined && sameWrite)
          before.set(user, {
            head: prevHead,
            appliedOffset: offset("prev_applied_offset") ?? -1,
          });
      }
    });
    // A head without its batch's rows (a write that failed part-way, its owner gone or retrying): the
    // head before that batch, whose rows were all stored before the batch began. (A head written
    // before heads named the one before them was only ever written after its rows.)
    const withEntries = [...out].filter(([user, h]) => before.has(user) && h.head > before.get(user)!.head);
    // Every row of the batch is read (a gap-free run, at the session's consistency level), not only
    // its ends: replicas that disagree on any of them are repaired by the read, where a row found on
    // one replica alone would otherwise be believed while its neighbours stay there alone.
    await this.ownerLimiter.map(withEntries, async ([user, h]) => {
      const prev = before.get(user)!;
      const stored = await this.read(user, prev.head, h.head - prev.head);
      if (stored.length !== h.head - prev.head) out.set(user, prev);
    });
    return out;
  }

  /**
   * The cursors of these (user, conversation, seq) that have one (keys `${user}\0${conv}\0${seq}`). An
   * index row is written with its head, which may stand without its batch's rows: the owner believes
   * one only at or below the head it works from.
   */
  async recorded(keys: Array<Omit<InboxEntry, "cursor" | "messageId">>): Promise<Map<string, number>> {
    const found = new Map<string, number>();
    const reads = [...groupBy(keys, (k) => `${k.userId}\u0000${k.conversationId}`).values()].flatMap(
      (group) =>
        chunks([...new Set(group.map((k) => k.seq))], IN_MAX).map((seqs) => ({
          userId: group[0]!.userId,
          conversationId: group[0]!.conversationId,
          seqs,
        })),
    );
    await this.ownerLimiter.map(reads, async (r) => {
      const result = await this.s.execute(
        "inbox_heads: look up entries",
        this.q.lookup,
        [r.userId, r.conversationId, r.seqs],
        {
          idempotent: true,
          fetchSize: IN_MAX + 1,
        },
      );
      for (const row of result.rows)
        found.set(
          `${r.userId}\u0000${r.conversationId}\u0000${toNumber(row.get("seq"), "inbox_heads.seq")}`,
          toNumber(row.get("cursor"), "inbox_heads.cursor"),
        );
    });
    return found;
  }

  /**
   * The inbox topic this keyspace served first: `log` if none is recorded yet (then recorded, once for
   * good: a conditional insert). Heads written before they named their log are of that topic.
   */
  async firstLog(log: string): Promise<string> {
    const result = await this.s.execute("inbox_logs: first inbox topic (LWT)", this.q.firstLog, [log], {
      idempotent: false,
    });
    if (result.wasApplied()) return log;
    return toText(result.first()?.get("topic"), "inbox_logs.topic");
  }

  /**
   * The owner's writes of a batch, in one round trip: every user's stream rows and its head unit (head,
   * applied offset, the two before the batch, index rows) share unlogged requests (turn-writes.ts), in
   * no order between them (see above). `inOneRoundTrip` false (an owner of a version before, which
   * trusts every stored head, may read them: InboxOwner.writesInOneRoundTrip): the rows first, then the
   * heads. `log`: the log (inbox topic) the applied offsets are positions in (ownedHeads).
   */
  async writeOwned(
    entries: InboxEntry[],
    heads: Map<string, OwnedHead>,
    before: Map<string, OwnedHead>,
    epoch: bigint,
    ttlSeconds: number,
    inOneRoundTrip = true,
    log?: string,
  ): Promise<void> {
    const at = toLong(epoch);
    const ttl = Math.max(1, Math.floor(ttlSeconds));
    const byUser = groupBy(entries, (e) => e.userId);
    const rows: Unit[] = [];
    const headUnits: Unit[] = [];
    for (const [user, h] of heads) {
      const own = byUser.get(user) ?? [];
      rows.push(...this.rowUnits(own, at));
      headUnits.push(this.headUnit(user, h, before.get(user) ?? h, own, at, ttl, log));
    }
    if (inOneRoundTrip) {
      await this.s.turnWrites.write("inbox: write owned entries and heads", [...rows, ...headUnits]);
      return;
    }
    await this.s.turnWrites.write("inbox_by_user: write owned entries", rows);
    await this.s.turnWrites.write("inbox_heads: write owned heads", headUnits);
  }

  /** A user's stream rows, one unit per bucket partition. */
  private rowUnits(entries: InboxEntry[], at: ReturnType<typeof toLong>): Unit[] {
    return [...groupBy(entries, (e) => String(inboxBucket(e.cursor))).values()].map(
      (group): Unit => ({
        key: routingKey(group[0]!.userId, inboxBucket(group[0]!.cursor)),
        statements: group.map((e) => ({
          query: this.q.insertOwnedStream,
          params: [e.userId, inboxBucket(e.cursor), e.cursor, e.conversationId, e.seq, e.messageId, at],
        })),
      }),
    );
  }

  /** A user's head, applied offset and the two before the batch, and its index rows: one partition. */
  private headUnit(
    user: string,
    h: OwnedHead,
    before: OwnedHead,
    entries: InboxEntry[],
    at: ReturnType<typeof toLong>,
    ttl: number,
    log: string | undefined,
  ): Unit {
    return {
      key: routingKey(user),
      statements: [
        {
          query: this.q.setOwnedHead,
          // Unset, not null, without a log: a null would write a tombstone into every head.
          params: [user, h.head, h.appliedOffset, before.head, before.appliedOffset, log ?? UNSET, at],
        },
        ...entries.map((e) => ({
          query: this.q.insertOwnedIndex,
          params: [user, e.conversationId, e.seq, e.cursor, e.messageId, ttl, at],
        })),
      ],
    };
  }

  async read(userId: string, after: number, limit: number): Promise<InboxEntry[]> {
    const out: InboxEntry[] = [];
    if (limit <= 0) return out;
    let from = Math.max(0, Math.floor(after));
    // Nothing above the head: a fenced-out former owner's late rows there are not (yet) the inbox.
    const head = await this.readHead(userId);
    for (let bucket = inboxBucket(from + 1); out.length < limit && from < head; bucket++) {
      const result = await this.s.execute(
        "inbox_by_user: read",
        this.q.read,
        [userId, bucket, from, Math.min(limit - out.length, INBOX_BUCKET_SIZE)],
        { idempotent: true, fetchSize: INBOX_BUCKET_SIZE + 1 },
      );
      for (const row of result.rows) {
        const cursor = toNumber(row.get("cursor"), "inbox_by_user.cursor");
        if (cursor !== from + 1 || cursor > head) return out; // not written yet: stop before the hole
        out.push({
          userId,
          cursor,
          conversationId: toText(row.get("conversation_id"), "inbox_by_user.conversation_id"),
          seq: toNumber(row.get("seq"), "inbox_by_user.seq"),
          messageId: toText(row.get("message_id"), "inbox_by_user.message_id"),
        });
        from = cursor;
      }
      // The bucket ended early: that is the end of the stream.
      if (from !== (bucket + 1) * INBOX_BUCKET_SIZE) return out;
    }
    return out;
  }

  async head(userId: string): Promise<number> {
    // The last readable cursor: the assigned head, unless its row is still being written (never a
    // row above the head: a fenced-out former owner's late write).
    const assigned = await this.readHead(userId);
    for (let bucket = inboxBucket(assigned); bucket >= 0; bucket--) {
      const result = await this.s.execute(
        "inbox_by_user: last cursor",
        this.q.last,
        [userId, bucket, assigned],
        {
          idempotent: true,
        },
      );
      const row = result.first();
      if (row) return toNumber(row.get("cursor"), "inbox_by_user.cursor");
    }
    return 0;
  }

  async close(): Promise<void> {}
}

function statements(s: Session) {
  const heads = s.table("inbox_heads");
  const stream = s.table("inbox_by_user");
  return {
    head: `SELECT head FROM ${heads} WHERE user_id = ? LIMIT 1`,
    lookup: `SELECT seq, cursor, message_id FROM ${heads} WHERE user_id = ? AND conversation_id = ? AND seq IN ?`,
    casHead: `UPDATE ${heads} SET head = ? WHERE user_id = ? IF head = ?`,
    casHeadFromNothing: `UPDATE ${heads} SET head = ? WHERE user_id = ? IF head = null`,
    insertIndex:
      `INSERT INTO ${heads} (user_id, conversation_id, seq, cursor, message_id) ` +
      "VALUES (?, ?, ?, ?, ?) IF NOT EXISTS",
    insertStream:
      `INSERT INTO ${stream} (user_id, bucket, cursor, conversation_id, seq, message_id) ` +
      "VALUES (?, ?, ?, ?, ?, ?)",
    read:
      `SELECT cursor, conversation_id, seq, message_id FROM ${stream} ` +
      "WHERE user_id = ? AND bucket = ? AND cursor > ? LIMIT ?",
    last: `SELECT cursor FROM ${stream} WHERE user_id = ? AND bucket = ? AND cursor <= ? ORDER BY cursor DESC LIMIT 1`,
    firstLog: `INSERT INTO ${s.table("inbox_logs")} (id, topic) VALUES ('inbox', ?) IF NOT EXISTS`,
    ownedHeads:
      "SELECT user_id, head, applied_offset, prev_head, prev_applied_offset, applied_log, " +
      `WRITETIME(head) AS head_written, WRITETIME(prev_head) AS prev_written FROM ${heads} ` +
      "WHERE user_id IN ? PER PARTITION LIMIT 1",
    insertOwnedStream:
      `INSERT INTO ${stream} (user_id, bucket, cursor, conversation_id, seq, message_id) ` +
      "VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
    // The head, and the row every head read stops at (sorts before every index row).
    setOwnedHead:
      `INSERT INTO ${heads} (user_id, conversation_id, seq, head, applied_offset, prev_head, prev_applied_offset, applied_log) ` +
      "VALUES (?, '', 0, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
    insertOwnedIndex:
      `INSERT INTO ${heads} (user_id, conversation_id, seq, cursor, message_id) VALUES (?, ?, ?, ?, ?) ` +
      "USING TTL ? AND TIMESTAMP ?",
  };
}
