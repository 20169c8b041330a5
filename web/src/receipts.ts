/**
 * Sends delivered and read receipts, coalesced: a burst of messages (a sync page, a fast sender)
 * becomes one receipt per conversation carrying the highest seq, since watermarks only rise.
 */
type Kind = "delivered" | "read";

export class ReceiptSender {
  private readonly due = new Map<string, { kind: Kind; conversationId: string; seq: number }>();
  private readonly sent = new Map<string, number>();
  private flushTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly send: (kind: Kind, conversationId: string, seq: number) => Promise<void>,
    private readonly delayMs = 150,
  ) {}

  mark(kind: Kind, conversationId: string, seq: number): void {
    const key = `${kind} ${conversationId}`;
    if (seq <= (this.sent.get(key) ?? 0) || seq <= (this.due.get(key)?.seq ?? 0)) return;
    this.due.set(key, { kind, conversationId, seq });
    this.flushTimer ??= setTimeout(() => this.flush(), this.delayMs);
  }

  private flush(): void {
    this.flushTimer = undefined;
    for (const [key, r] of this.due) {
      this.sent.set(key, Math.max(this.sent.get(key) ?? 0, r.seq));
      // A receipt lost to a dropped connection is sent again with the next message's.
      this.send(r.kind, r.conversationId, r.seq).catch(() => this.sent.delete(key));
    }
    this.due.clear();
  }
}
