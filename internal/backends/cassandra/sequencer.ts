/**
 * SequencerStore over `conversation_sequencer` (partition conversation_id; static last_seq; clustering
 * dedupe_key -> seq, message_id): the per-conversation seq state of ADR 0002.
 *
 * Nothing here is conditional. The owner of a drafts partition (fenced by OwnershipStore) is the only
 * writer of its conversations' rows, and it writes them with its epoch as the write timestamp, so a
 * former owner's late writes lose last-write-wins to its successor's, cell by cell, whatever order
 * they arrive in. A conversation's head and its batch's dedupe rows are one partition, hence one
 * mutation, applied atomically per replica: a reader sees both or neither.
 *
 * Batching: heads and lookups read many conversations per request (IN on the partition key; the
 * lookup's IN on the clustering key too, so a request asks conversations x keys and the rows that
 * do not exist cost the node a bloom-filter check each; the product is kept small). `record` writes
 * through the session's turn writes: the rows of many conversations, of every partition batch that
 * records in the same turn, in few requests, one mutation per conversation.
 *
 * Retention: dedupe rows carry a TTL (the dedupe window): a resend after it is a new message. The
 * head is one static cell per conversation and does not grow.
 *
 * Reading the head reads the partition's first row too (Cassandra returns static cells with a row),
 * and expired dedupe rows stay as tombstones until compaction after gc_grace_seconds: a read of a
 * busy sender's conversation whose keys all expired would pass every one of them (past 100,000 the
 * node refuses the read; SELECT DISTINCT reads the same way). So the head is written as an INSERT of
 * a row with the empty dedupe key, which sorts first and never expires: a head read stops at it.
 * Lookups ask for named keys and never see it.
 */
import type { SequencedRef, SequencerRecord, SequencerStore } from "../types.js";
import { chunks, Limiter, type Session, toLong, toNumber, toText } from "./session.js";
import { routingKey, type Unit } from "./turn-writes.js";

/**
 * The dedupe key of the row written with every head: empty, so it is the partition's first row and a
 * head read (`LIMIT 1`) passes no expired dedupe row (their tombstones) to find a row (see above).
 */
export const HEAD_ROW_KEY = "";
/** Conversations x keys one lookup request asks for at most. */
const LOOKUP_PRODUCT_MAX = 512;
const HEADS_IN_MAX = 100;
const IN_FLIGHT_MAX = 16;

type Refs = Map<string, Map<string, SequencedRef>>;

export class CassandraSequencerStore implements SequencerStore {
  private readonly q: ReturnType<typeof statements>;
  private readonly limiter = new Limiter(IN_FLIGHT_MAX);
  /** The keys asked so far this turn, and the answer they will share. */
  private gathered: { keys: Map<string, string[]>; answer: Promise<Refs> } | undefined;

  constructor(private readonly s: Session) {
    this.q = statements(s);
  }

  async heads(conversationIds: string[]): Promise<Map<string, number>> {
    const ids = [...new Set(conversationIds)];
    const out = new Map<string, number>(ids.map((id) => [id, 0]));
    await this.limiter.map(chunks(ids, HEADS_IN_MAX), async (part) => {
      const result = await this.s.execute("conversation_sequencer: read heads", this.q.heads, [part], {
        idempotent: true,
        fetchSize: HEADS_IN_MAX + 1,
      });
      for (const row of result.rows) {
        const head = row.get("last_seq");
        if (head !== null && head !== undefined)
          out.set(
            toText(row.get("conversation_id"), "conversation_sequencer.conversation_id"),
            toNumber(head, "conversation_sequencer.last_seq"),
          );
      }
    });
    return out;
  }

  async lookup(keys: Map<string, string[]>): Promise<Refs> {
    let gathered = this.gathered;
    if (!gathered) {
      const all = new Map<string, string[]>();
      const answer = new Promise<Refs>((resolve, reject) =>
        setImmediate(() => {
          this.gathered = undefined;
          this.lookupNow(all).then(resolve, reject);
        }),
      );
      gathered = { keys: all, answer };
      this.gathered = gathered;
    }
    for (const [conversationId, list] of keys)
      gathered.keys.set(conversationId, [...(gathered.keys.get(conversationId) ?? []), ...list]);
    const all = await gathered.answer;
    const out: Refs = new Map();
    for (const [conversationId, list] of keys) {
      const refs = all.get(conversationId);
      if (!refs) continue;
      const mine = new Map([...refs].filter(([key]) => list.includes(key)));
      if (mine.size > 0) out.set(conversationId, mine);
    }
    return out;
  }

  private async lookupNow(keys: Map<string, string[]>): Promise<Refs> {
    const out: Refs = new Map();
    const requests: Array<{ conversations: string[]; keys: string[] }> = [];
    // Conversations with their distinct keys, packed so that conversations x keys stays small.
    let current: { conversations: string[]; keys: Set<string> } | undefined;
    for (const [conversationId, list] of keys) {
      const own = [...new Set(list)];
      for (const part of chunks(own, LOOKUP_PRODUCT_MAX)) {
        if (current) {
          const union = new Set([...current.keys, ...part]);
          if ((current.conversations.length + 1) * union.size <= LOOKUP_PRODUCT_MAX) {
            current.conversations.push(conversationId);
            current.keys = union;
            continue;
          }
          requests.push({ conversations: current.conversations, keys: [...current.keys] });
        }
        current = { conversations: [conversationId], keys: new Set(part) };
      }
    }
    if (current) requests.push({ conversations: current.conversations, keys: [...current.keys] });
    await this.limiter.map(requests, async (r) => {
      const result = await this.s.execute(
        "conversation_sequencer: look up dedupe keys",
        this.q.lookup,
        [r.conversations, r.keys],
        { idempotent: true, fetchSize: LOOKUP_PRODUCT_MAX + 1 },
      );
      for (const row of result.rows) {
        const conversationId = toText(row.get("conversation_id"), "conversation_sequencer.conversation_id");
        const key = toText(row.get("dedupe_key"), "conversation_sequencer.dedupe_key");
        // The cartesian product may match a key of another conversation: keep only asked pairs.
        if (!keys.get(conversationId)?.includes(key)) continue;
        let refs = out.get(conversationId);
        if (!refs) {
          refs = new Map();
          out.set(conversationId, refs);
        }
        refs.set(key, {
          seq: toNumber(row.get("seq"), "conversation_sequencer.seq"),
          messageId: toText(row.get("message_id"), "conversation_sequencer.message_id"),
        });
      }
    });
    return out;
  }

  async record(records: SequencerRecord[], epoch: bigint, dedupeWindowSeconds: number): Promise<void> {
    const ttl = Math.max(1, Math.floor(dedupeWindowSeconds));
    const at = toLong(epoch);
    // A conversation's statements are one unit (one partition, one mutation); the turn's writes share
    // requests (turn-writes.ts).
    const units: Unit[] = records.map((r) => ({
      key: routingKey(r.conversationId),
      statements: [
        { query: this.q.setHead, params: [r.conversationId, toLong(BigInt(r.head)), at] },
        ...r.assigned.map((e) => ({
          query: this.q.insertDedupe,
          params: [r.conversationId, e.dedupeKey, toLong(BigInt(e.seq)), e.messageId, ttl, at],
        })),
      ],
    }));
    await this.s.turnWrites.write("conversation_sequencer: record heads and dedupe rows", units);
  }

  async close(): Promise<void> {}
}

function statements(s: Session) {
  const t = s.table("conversation_sequencer");
  return {
    heads: `SELECT conversation_id, last_seq FROM ${t} WHERE conversation_id IN ? PER PARTITION LIMIT 1`,
    lookup:
      `SELECT conversation_id, dedupe_key, seq, message_id FROM ${t} ` +
      "WHERE conversation_id IN ? AND dedupe_key IN ?",
    // The head, and the row every head read stops at (HEAD_ROW_KEY sorts before every dedupe key).
    setHead:
      `INSERT INTO ${t} (conversation_id, dedupe_key, last_seq) VALUES (?, '${HEAD_ROW_KEY}', ?) ` +
      "USING TIMESTAMP ?",
    insertDedupe:
      `INSERT INTO ${t} (conversation_id, dedupe_key, seq, message_id) VALUES (?, ?, ?, ?) ` +
      "USING TTL ? AND TIMESTAMP ?",
  };
}
