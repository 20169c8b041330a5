/**
 * SequencerStore over `conversation_sequencer` (partition conversation_id; static last_seq; clustering
 * dedupe_key -> seq, message_id): the fenced per-conversation seq counter of ADR 0002.
 *
 * assign() is one conditional batch on one partition of one table, so Paxos applies it atomically:
 *   UPDATE ... SET last_seq = n + k WHERE conversation_id = ? IF last_seq = n      (n = 0: IF last_seq = null)
 *   INSERT ... (conversation_id, dedupe_key, seq, message_id) VALUES (...) IF NOT EXISTS   (one per entry)
 * It applies only if every condition holds: a stale head or any existing dedupe key fails the whole batch.
 * A conditional batch is exempt from the batch size limits (one mutation), but a Paxos round carries all
 * of it: keep batches to a polled batch of one conversation (hundreds of entries, not tens of thousands).
 *
 * When the driver reports a timeout the outcome is unknown (the Paxos round may still complete): assign
 * throws UNAVAILABLE and the caller re-reads head() and lookup()s its keys; an applied batch shows up as
 * its dedupe rows, so nothing is assigned twice.
 */
import { assert } from "../../lib/errors.js";
import type { SequencedRef, SequencerStore } from "../types.js";
import { chunks, optionalNumber, type Session, toNumber, toText } from "./session.js";

const LOOKUP_IN_MAX = 100;

export class CassandraSequencerStore implements SequencerStore {
  private readonly q: ReturnType<typeof statements>;

  constructor(private readonly s: Session) {
    this.q = statements(s);
  }

  async head(conversationId: string): Promise<number> {
    const result = await this.s.execute("conversation_sequencer: read head", this.q.head, [conversationId], {
      idempotent: true,
    });
    return optionalNumber(result.first()?.get("last_seq"), "conversation_sequencer.last_seq") ?? 0;
  }

  async lookup(conversationId: string, dedupeKeys: string[]): Promise<Map<string, SequencedRef>> {
    const out = new Map<string, SequencedRef>();
    const keys = [...new Set(dedupeKeys)];
    await Promise.all(
      chunks(keys, LOOKUP_IN_MAX).map(async (part) => {
        const result = await this.s.execute(
          "conversation_sequencer: lookup dedupe keys",
          this.q.lookup,
          [conversationId, part],
          { idempotent: true, fetchSize: LOOKUP_IN_MAX + 1 },
        );
        for (const row of result.rows) {
          out.set(toText(row.get("dedupe_key"), "conversation_sequencer.dedupe_key"), {
            seq: toNumber(row.get("seq"), "conversation_sequencer.seq"),
            messageId: toText(row.get("message_id"), "conversation_sequencer.message_id"),
          });
        }
      }),
    );
    return out;
  }

  async assign(
    conversationId: string,
    expectedHead: number,
    entries: Array<{ dedupeKey: string; seq: number; messageId: string }>,
  ): Promise<boolean> {
    assert(Number.isSafeInteger(expectedHead) && expectedHead >= 0, `expected head ${expectedHead}`);
    const keys = new Set<string>();
    entries.forEach((e, i) => {
      assert(e.seq === expectedHead + i + 1, `entry ${i} has seq ${e.seq}, expected ${expectedHead + i + 1}`);
      assert(!keys.has(e.dedupeKey), `dedupe key ${JSON.stringify(e.dedupeKey)} appears twice`);
      keys.add(e.dedupeKey);
    });
    const newHead = expectedHead + entries.length;
    const fence =
      expectedHead === 0
        ? { query: this.q.casHeadFromNothing, params: [newHead, conversationId] }
        : { query: this.q.casHead, params: [newHead, conversationId, expectedHead] };
    const result = await this.s.batch(
      "conversation_sequencer: assign (conditional batch)",
      [
        fence,
        ...entries.map((e) => ({
          query: this.q.insertDedupe,
          params: [conversationId, e.dedupeKey, e.seq, e.messageId],
        })),
      ],
      // Not idempotent: if a retry ran after the first attempt applied, it would report "not applied".
      { idempotent: false, logged: true },
    );
    return result.wasApplied();
  }

  async close(): Promise<void> {}
}

function statements(s: Session) {
  const t = s.table("conversation_sequencer");
  return {
    head: `SELECT last_seq FROM ${t} WHERE conversation_id = ? LIMIT 1`,
    lookup: `SELECT dedupe_key, seq, message_id FROM ${t} WHERE conversation_id = ? AND dedupe_key IN ?`,
    casHead: `UPDATE ${t} SET last_seq = ? WHERE conversation_id = ? IF last_seq = ?`,
    casHeadFromNothing: `UPDATE ${t} SET last_seq = ? WHERE conversation_id = ? IF last_seq = null`,
    insertDedupe: `INSERT INTO ${t} (conversation_id, dedupe_key, seq, message_id) VALUES (?, ?, ?, ?) IF NOT EXISTS`,
  };
}
