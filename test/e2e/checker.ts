/**
 * An independent history checker over everything sent, acknowledged, stored and shown: written from
 * the guarantees (docs/design.md §3), not from the server's code. It returns every violation it finds
 * (an empty list means the run kept every promise), so a failing test says all that went wrong at once.
 */

export interface SentRecord {
  conversationId: string;
  sender: string;
  body: string;
  /** Present once the send was acknowledged. */
  ack?: { messageId: string; seq: number };
}

export interface StoredRecord {
  conversationId: string;
  seq: number;
  messageId: string;
  body: string;
  sender: string;
}

export interface ShownRecord {
  conversationId: string;
  seq: number;
  messageId: string;
  body: string;
}

export interface DeviceRecord {
  name: string;
  userId: string;
  /** What the SDK emitted to the app, in order. */
  shown: ShownRecord[];
}

export interface CheckInput {
  sent: SentRecord[];
  /** The full history of every conversation that was sent to, read at the end. */
  stored: Map<string, StoredRecord[]>;
  /** Members of every conversation. */
  members: Map<string, Set<string>>;
  devices: DeviceRecord[];
}

export interface CheckSummary {
  violations: string[];
  messagesAcked: number;
  messagesStored: number;
  deliveriesChecked: number;
}

/** At most this many violations are listed per kind (a broken run would list thousands). */
const LISTED_MAX = 20;

export function checkHistory(input: CheckInput): CheckSummary {
  const violations: string[] = [];
  const counts = new Map<string, number>();
  const violation = (kind: string, text: string) => {
    const n = (counts.get(kind) ?? 0) + 1;
    counts.set(kind, n);
    if (n <= LISTED_MAX) violations.push(`${kind}: ${text}`);
  };
  const sentBodies = new Set(input.sent.map((s) => s.body));
  let acked = 0;
  let stored = 0;

  // 1. Stored: every conversation's seqs are 1..N without gap or repeat; nothing we did not send.
  for (const [conversationId, rows] of input.stored) {
    stored += rows.length;
    rows.forEach((row, i) => {
      if (row.seq !== i + 1)
        violation("seq gap", `${conversationId} has seq ${row.seq} at position ${i + 1}`);
      if (!sentBodies.has(row.body)) violation("invented", `${conversationId} seq ${row.seq}: ${row.body}`);
    });
    const ids = new Set(rows.map((r) => r.messageId));
    if (ids.size !== rows.length)
      violation("stored twice", `${conversationId}: ${rows.length - ids.size} repeats`);
  }

  // 2. Acked: stored once, at its seq, with its id.
  for (const s of input.sent) {
    if (!s.ack) continue;
    acked++;
    const rows = input.stored.get(s.conversationId) ?? [];
    const at = rows[s.ack.seq - 1];
    if (!at || at.messageId !== s.ack.messageId || at.body !== s.body)
      violation("acked but not stored", `${s.conversationId} seq ${s.ack.seq} (${s.body})`);
    const copies = rows.filter((r) => r.body === s.body).length;
    if (copies > 1) violation("stored twice", `${s.body} ${copies} times`);
  }

  // 3. Shown: every device shows every message of its conversations once, in seq order, and nothing else.
  let deliveries = 0;
  for (const d of input.devices) {
    const byConversation = new Map<string, ShownRecord[]>();
    for (const m of d.shown) {
      const list = byConversation.get(m.conversationId) ?? [];
      list.push(m);
      byConversation.set(m.conversationId, list);
    }
    for (const conversationId of byConversation.keys()) {
      if (!input.members.get(conversationId)?.has(d.userId))
        violation("foreign", `${d.name} was shown ${conversationId}, which ${d.userId} is not in`);
    }
    for (const [conversationId, rows] of input.stored) {
      if (!input.members.get(conversationId)?.has(d.userId)) continue;
      const shown = byConversation.get(conversationId) ?? [];
      deliveries += shown.length;
      const seqs = shown.map((m) => m.seq);
      for (let i = 1; i < seqs.length; i++)
        if (seqs[i]! <= seqs[i - 1]!)
          violation(
            seqs[i] === seqs[i - 1] ? "shown twice" : "out of order",
            `${d.name} ${conversationId}: seq ${seqs[i]} after ${seqs[i - 1]}`,
          );
      const missing = rows.filter((r) => !shown.some((m) => m.messageId === r.messageId));
      if (missing.length > 0)
        violation(
          "not shown",
          `${d.name} ${conversationId}: ${missing.length} of ${rows.length} (first seq ${missing[0]!.seq})`,
        );
      for (const m of shown) {
        const row = rows[m.seq - 1];
        if (!row || row.messageId !== m.messageId || row.body !== m.body)
          violation("shown differs from stored", `${d.name} ${conversationId} seq ${m.seq}`);
      }
    }
  }
  for (const [kind, n] of counts) if (n > LISTED_MAX) violations.push(`${kind}: … ${n - LISTED_MAX} more`);
  return { violations, messagesAcked: acked, messagesStored: stored, deliveriesChecked: deliveries };
}
