/**
 * ReceiptStore over `receipts` (partition (conversation_id, user_id); clustering kind -> seq).
 *
 * A watermark is mutable, so it is only ever changed by a lightweight transaction: "UPDATE ... SET seq = s
 * IF seq < s" (the first one: "INSERT ... IF NOT EXISTS"). Of concurrent raises to the same value exactly
 * one applies; a raise to a lower value never overwrites a higher one, whatever the arrival order.
 */
import type { ReceiptKindName, ReceiptStore } from "../types.js";
import { backoff, contended, optionalNumber, type Session } from "./session.js";

const CAS_ATTEMPTS_MAX = 16;

export class CassandraReceiptStore implements ReceiptStore {
  private readonly q: ReturnType<typeof statements>;

  constructor(private readonly s: Session) {
    this.q = statements(s);
  }

  async raise(conversationId: string, userId: string, kind: ReceiptKindName, seq: number): Promise<boolean> {
    // A plain read first: a watermark only rises, so one already at or above `seq` settles it cheaply.
    if ((await this.get(conversationId, userId, kind)) >= seq) return false;
    for (let attempt = 1; attempt <= CAS_ATTEMPTS_MAX; attempt++) {
      // A timeout here leaves the outcome unknown; this call cannot tell whether it or a concurrent one
      // raised the watermark, so the error goes to the caller, whose retry then returns false.
      const raised = await this.s.execute(
        "receipts: raise watermark (LWT)",
        this.q.raise,
        [seq, conversationId, userId, kind, seq],
        { idempotent: false },
      );
      if (raised.wasApplied()) return true;
      // Not applied: either the watermark is at or above seq, or there is no row yet.
      if (optionalNumber(raised.first()?.get("seq"), "receipts.seq") !== undefined) return false;
      const inserted = await this.s.execute(
        "receipts: first watermark (LWT)",
        this.q.insert,
        [conversationId, userId, kind, seq],
        { idempotent: false },
      );
      if (inserted.wasApplied()) return true;
      // Someone else inserted first: go round again, the UPDATE decides.
      await backoff(attempt);
    }
    throw contended("receipts: raise watermark", CAS_ATTEMPTS_MAX, undefined);
  }

  async get(conversationId: string, userId: string, kind: ReceiptKindName): Promise<number> {
    const result = await this.s.execute(
      "receipts: read watermark",
      this.q.get,
      [conversationId, userId, kind],
      {
        idempotent: true,
      },
    );
    return optionalNumber(result.first()?.get("seq"), "receipts.seq") ?? 0;
  }

  async close(): Promise<void> {}
}

function statements(s: Session) {
  const t = s.table("receipts");
  return {
    get: `SELECT seq FROM ${t} WHERE conversation_id = ? AND user_id = ? AND kind = ?`,
    raise: `UPDATE ${t} SET seq = ? WHERE conversation_id = ? AND user_id = ? AND kind = ? IF seq < ?`,
    insert: `INSERT INTO ${t} (conversation_id, user_id, kind, seq) VALUES (?, ?, ?, ?) IF NOT EXISTS`,
  };
}
