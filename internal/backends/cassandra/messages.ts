/**
 * MessageStore over `messages_by_conversation` (partition (conversation_id, bucket), clustering seq DESC)
 * and `buckets_by_conversation` (which buckets exist).
 *
 * write(): the batch writer. Rows are grouped by partition, cut at BATCH_ROWS_MAX rows / BATCH_BYTES_MAX
 * bytes so a mutation stays far below the commit log's limit, and written through the session's turn
 * writes (turn-writes.ts): each cut is one mutation, applied atomically per replica; cuts of many
 * partitions asked for in the same turn share requests; at most `inFlightMax` writes are outstanding
 * per store. Every row is immutable and every statement idempotent, so the driver may retry it and a
 * caller may re-write a batch after a crash.
 * A bucket's marker is written (and awaited) before its first rows, so a reader that finds the marker
 * may see an empty bucket for a moment, but never rows without a marker.
 *
 * Rows are upserts without a read. The sequencer writes them with its ownership epoch as write
 * timestamp (`fence`): a (conversation, seq) that a fenced-out former owner wrote late, with another
 * message, loses to its successor's row; history and lastSeq stop at the conversation's assigned head
 * (kept by the sequencer), so such a row above the head is never shown either (ADR 0002).
 *
 * No holes. The head is written at the same time as the rows, so a reader may see a head whose rows
 * have not all landed. A conversation's rows land in seq order: its buckets one after another, and a
 * bucket's cuts too (each after the one below it succeeded; a batch's writes only after the previous
 * batch's). A reader still never trusts that alone (a failed cut, a fenced-out owner's late rows):
 * history returns only gap-free runs of seqs. A page after afterSeq is the run from afterSeq + 1 up to
 * the first seq missing; a page below an explicit beforeSeq (at or below the head) is the run from
 * beforeSeq - 1 down to the first seq missing; the newest page is gap-free down to the row below it
 * (read to tell hasMore), and rows above a seq found missing there are left for later: the page is
 * taken below the hole (a hole deeper down is not looked for: the rows land in order, and a client
 * paging back from the page uses explicit bounds, which stop at it). A page that stops at a missing
 * seq says hasMore. A row at or below the head is missing only while
 * its batch is being written or retried (the sequencer re-writes a row that never landed when it
 * re-processes the batch: ADR 0002); one missing for good (data lost by Cassandra) would hold readers
 * below it, which is seen, rather than let them step over a message.
 */
import type { HistoryPage, HistoryQuery, MessageStore, StoredMessage } from "../types.js";
import { SEQ_BUCKET_SIZE, seqBucket } from "./schema.js";
import {
  chunks,
  groupBy,
  Limiter,
  type Row,
  type Session,
  type Statement,
  toLong,
  toNumber,
  toText,
} from "./session.js";
import { routingKey } from "./turn-writes.js";

const BATCH_ROWS_MAX = 50;
const BATCH_BYTES_MAX = 256 * 1024;
/** How many bucket markers this process remembers as written (then it forgets them all and re-writes). */
const KNOWN_BUCKETS_MAX = 100_000;
const GET_MANY_IN_MAX = 100;
const NO_UPPER_BOUND = Number.MAX_SAFE_INTEGER;

export interface MessageStoreOptions {
  /** Outstanding requests per store (write batches, getMany reads). Default 64. */
  inFlightMax?: number;
}

export class CassandraMessageStore implements MessageStore {
  private readonly limiter: Limiter;
  private readonly knownBuckets = new Set<string>();
  private readonly q: ReturnType<typeof statements>;

  constructor(
    private readonly s: Session,
    options: MessageStoreOptions = {},
  ) {
    this.limiter = new Limiter(options.inFlightMax ?? 64);
    this.q = statements(s);
  }

  async write(messages: StoredMessage[], options: { fence?: bigint } = {}): Promise<void> {
    if (messages.length === 0) return;
    const at = options.fence === undefined ? undefined : toLong(options.fence);
    const row = (m: StoredMessage): Statement => {
      const params = [
        m.conversationId,
        seqBucket(m.seq),
        m.seq,
        m.messageId,
        m.sender,
        m.body,
        new Date(m.createdAtMs),
        m.clientMsgId,
      ];
      return at === undefined
        ? { query: this.q.insertMessage, params }
        : { query: this.q.insertFencedMessage, params: [...params, at] };
    };
    // Per conversation, older buckets first (their markers first of all), so that a reader walking
    // up the buckets never finds a row above one that is still missing; conversations in parallel,
    // so their steps share requests (turn-writes.ts: each cut of a bucket's rows is one unit).
    const byConversation = groupBy(messages, (m) => m.conversationId);
    const written: string[] = [];
    await Promise.all(
      [...byConversation.values()].map(async (rows) => {
        const byBucket = [...groupBy(rows, (m) => String(seqBucket(m.seq))).values()].sort(
          (a, b) => a[0]!.seq - b[0]!.seq,
        );
        for (const unsorted of byBucket) {
          const bucketRows = [...unsorted].sort((a, b) => a.seq - b.seq);
          const first = bucketRows[0]!;
          const key = `${first.conversationId}\u0000${seqBucket(first.seq)}`;
          if (!this.knownBuckets.has(key)) {
            await this.limiter.run(() =>
              this.s.turnWrites.write("buckets_by_conversation: insert marker", [
                {
                  key: routingKey(first.conversationId),
                  statements: [
                    { query: this.q.insertBucket, params: [first.conversationId, seqBucket(first.seq)] },
                  ],
                },
              ]),
            );
            written.push(key);
          }
          // The cuts one after another, lower seqs first: what has landed is always a prefix.
          for (const batch of cut(bucketRows))
            await this.limiter.run(() =>
              this.s.turnWrites.write("messages_by_conversation: write", [
                {
                  key: routingKey(first.conversationId, seqBucket(first.seq)),
                  statements: batch.map(row),
                },
              ]),
            );
        }
      }),
    );
    if (this.knownBuckets.size + written.length > KNOWN_BUCKETS_MAX) this.knownBuckets.clear();
    for (const key of written) this.knownBuckets.add(key);
  }

  /**
   * The conversation's assigned head, when a sequencer keeps one (undefined for rows written
   * without). Rows above it are a fenced-out former owner's late writes that its successor has not
   * overwritten yet: readers never show them.
   */
  private async assignedHead(conversationId: string): Promise<number | undefined> {
    const result = await this.s.execute("conversation_sequencer: read head", this.q.head, [conversationId], {
      idempotent: true,
    });
    const value = result.first()?.get("last_seq");
    return value === null || value === undefined ? undefined : toNumber(value, "last_seq");
  }

  /** The newest bucket at or below `bucket` that has a marker, or undefined. */
  private async newestBucket(conversationId: string, atMost: number): Promise<number | undefined> {
    if (atMost < 0) return undefined;
    const result = await this.s.execute(
      "buckets_by_conversation: newest bucket",
      this.q.newestBucket,
      [conversationId, atMost],
      { idempotent: true },
    );
    const row = result.first();
    return row ? toNumber(row.get("bucket"), "bucket") : undefined;
  }

  async history(conversationId: string, query: HistoryQuery): Promise<HistoryPage> {
    const limit = Math.max(0, Math.floor(query.limit));
    const after = query.afterSeq && query.afterSeq > 0 ? query.afterSeq : 0;
    const head = await this.assignedHead(conversationId);
    const asked = query.beforeSeq && query.beforeSeq > 0 ? query.beforeSeq : NO_UPPER_BOUND;
    const before = head === undefined ? asked : Math.min(asked, head + 1);
    const want = limit + 1; // one more than asked tells whether there is more
    if (before - after <= 1) return { messages: [], hasMore: false };

    const top = await this.newestBucket(conversationId, seqBucket(before - 1));
    if (top === undefined) return { messages: [], hasMore: false };
    const bottom = seqBucket(after + 1);

    if (after > 0) {
      // Oldest first above afterSeq: walk the buckets upwards, up to the first seq missing.
      const out: StoredMessage[] = [];
      let gap = false;
      for (let b = bottom; b <= top && out.length < want && !gap; b++) {
        const rows = await this.readBucket("forward", conversationId, b, after, before, want - out.length);
        for (const row of rows) {
          const m = decode(conversationId, row);
          if (m.seq !== after + 1 + out.length) {
            gap = true; // not written yet: the page stops before the hole
            break;
          }
          out.push(m);
        }
      }
      return { messages: out.slice(0, limit), hasMore: gap || out.length > limit };
    }
    // Newest first below beforeSeq: walk the buckets downwards, then return the page oldest first.
    // Below an explicit bound every seq is assigned: the page starts right below it.
    const fromBound = head !== undefined && asked <= head;
    let run: StoredMessage[] = [];
    let gap = false;
    let upper = before;
    let b = top;
    reading: while (b >= bottom && run.length < want) {
      const ask = Math.min(want - run.length, SEQ_BUCKET_SIZE);
      const rows = await this.readBucket("backward", conversationId, b, after, upper, ask);
      for (const row of rows) {
        const m = decode(conversationId, row);
        const expected = run.length > 0 ? run.at(-1)!.seq - 1 : fromBound ? before - 1 : m.seq;
        if (m.seq !== expected) {
          gap = true;
          if (fromBound) break reading; // the page ends above the hole
          run = []; // rows above a hole are not history yet: the page is taken below it
        }
        run.push(m);
      }
      // A full read may leave rows of this bucket below it (a run dropped above a hole needs them).
      if (rows.length < ask) b--;
      else upper = rows.length > 0 ? decode(conversationId, rows.at(-1)!).seq : upper;
    }
    // The rows ran out above seq after + 1 (or none was found below an assigned head): the run sits
    // on a hole.
    const lowest = run.length > 0 ? run.at(-1)!.seq : before;
    if (run.length < want && lowest !== after + 1 && (run.length > 0 || head !== undefined)) {
      gap = true;
      if (!fromBound) run = [];
    }
    return { messages: run.slice(0, limit).reverse(), hasMore: gap || run.length > limit };
  }

  private async readBucket(
    direction: "forward" | "backward",
    conversationId: string,
    bucket: number,
    after: number,
    before: number,
    limit: number,
  ): Promise<Row[]> {
    const result = await this.s.execute(
      `messages_by_conversation: history ${direction}`,
      direction === "forward" ? this.q.pageForward : this.q.pageBackward,
      [conversationId, bucket, after, before, Math.min(limit, SEQ_BUCKET_SIZE)],
      { idempotent: true, fetchSize: SEQ_BUCKET_SIZE + 1 },
    );
    return result.rows;
  }

  async lastSeq(conversationId: string): Promise<number> {
    const head = await this.assignedHead(conversationId);
    if (head !== undefined) return head;
    const top = await this.newestBucket(conversationId, seqBucket(NO_UPPER_BOUND));
    if (top === undefined) return 0;
    // The newest marker's bucket may still be empty (markers are written first): look below it.
    for (let b = top; b >= 0; b--) {
      const result = await this.s.execute(
        "messages_by_conversation: last seq",
        this.q.lastSeq,
        [conversationId, b],
        { idempotent: true },
      );
      const row = result.first();
      if (row) return toNumber(row.get("seq"), "seq");
    }
    return 0;
  }

  async getMany(keys: Array<{ conversationId: string; seq: number }>): Promise<StoredMessage[]> {
    if (keys.length === 0) return [];
    const key = (conversationId: string, seq: number) => `${conversationId}\u0000${seq}`;
    const byPartition = groupBy(keys, (k) => `${k.conversationId}\u0000${seqBucket(k.seq)}`);
    const reads: Array<{ conversationId: string; bucket: number; seqs: number[] }> = [];
    for (const group of byPartition.values()) {
      const { conversationId, seq } = group[0]!;
      const seqs = [...new Set(group.map((k) => k.seq))];
      for (const part of chunks(seqs, GET_MANY_IN_MAX))
        reads.push({ conversationId, bucket: seqBucket(seq), seqs: part });
    }
    const found = new Map<string, StoredMessage>();
    await this.limiter.map(reads, async (r) => {
      const result = await this.s.execute(
        "messages_by_conversation: get many",
        this.q.getMany,
        [r.conversationId, r.bucket, r.seqs],
        { idempotent: true, fetchSize: GET_MANY_IN_MAX + 1 },
      );
      for (const row of result.rows) {
        const m = decode(r.conversationId, row);
        found.set(key(m.conversationId, m.seq), m);
      }
    });
    const out: StoredMessage[] = [];
    for (const k of keys) {
      const m = found.get(key(k.conversationId, k.seq));
      if (m) out.push(m);
    }
    return out;
  }

  async close(): Promise<void> {}
}

/** Rows of one partition cut into batches of at most BATCH_ROWS_MAX rows / BATCH_BYTES_MAX bytes. */
function cut(rows: StoredMessage[]): StoredMessage[][] {
  const batches: StoredMessage[][] = [];
  let batch: StoredMessage[] = [];
  let bytes = 0;
  for (const m of rows) {
    const size = Buffer.byteLength(m.body) + 256;
    if (batch.length > 0 && (batch.length >= BATCH_ROWS_MAX || bytes + size > BATCH_BYTES_MAX)) {
      batches.push(batch);
      batch = [];
      bytes = 0;
    }
    batch.push(m);
    bytes += size;
  }
  if (batch.length > 0) batches.push(batch);
  return batches;
}

const COLUMNS = "seq, message_id, sender, body, created_at, client_msg_id";

function statements(s: Session) {
  const messages = s.table("messages_by_conversation");
  const buckets = s.table("buckets_by_conversation");
  const sequencer = s.table("conversation_sequencer");
  return {
    head: `SELECT last_seq FROM ${sequencer} WHERE conversation_id = ? LIMIT 1`,
    insertBucket: `INSERT INTO ${buckets} (conversation_id, bucket) VALUES (?, ?)`,
    newestBucket: `SELECT bucket FROM ${buckets} WHERE conversation_id = ? AND bucket <= ? LIMIT 1`,
    insertMessage:
      `INSERT INTO ${messages} (conversation_id, bucket, seq, message_id, sender, body, created_at, ` +
      "client_msg_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    insertFencedMessage:
      `INSERT INTO ${messages} (conversation_id, bucket, seq, message_id, sender, body, created_at, ` +
      "client_msg_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
    pageForward:
      `SELECT ${COLUMNS} FROM ${messages} WHERE conversation_id = ? AND bucket = ? ` +
      "AND seq > ? AND seq < ? ORDER BY seq ASC LIMIT ?",
    pageBackward:
      `SELECT ${COLUMNS} FROM ${messages} WHERE conversation_id = ? AND bucket = ? ` +
      "AND seq > ? AND seq < ? ORDER BY seq DESC LIMIT ?",
    lastSeq: `SELECT seq FROM ${messages} WHERE conversation_id = ? AND bucket = ? LIMIT 1`,
    getMany: `SELECT ${COLUMNS} FROM ${messages} WHERE conversation_id = ? AND bucket = ? AND seq IN ?`,
  };
}

function decode(conversationId: string, row: Row): StoredMessage {
  return {
    conversationId,
    seq: toNumber(row.get("seq"), "messages_by_conversation.seq"),
    messageId: toText(row.get("message_id"), "messages_by_conversation.message_id"),
    sender: toText(row.get("sender"), "messages_by_conversation.sender"),
    clientMsgId: toText(row.get("client_msg_id"), "messages_by_conversation.client_msg_id"),
    body: toText(row.get("body"), "messages_by_conversation.body"),
    createdAtMs: toNumber(row.get("created_at"), "messages_by_conversation.created_at"),
  };
}
