/**
 * Sends delivered and read receipts, coalesced: a burst of messages (a sync page, a fast sender)
 * becomes one receipt per conversation carrying the highest seq, since watermarks only rise. A
 * receipt that could not be sent (the connection was down) is kept and sent again by
 * `resendFailed()` once the client is back.
 */
type Kind = "delivered" | "read";
interface Receipt {
  kind: Kind;
  conversationId: string;
  seq: number;
}

export class ReceiptSender {
  private readonly due = new Map<string, Receipt>();
  private readonly failed = new Map<string, Receipt>();
  private readonly sent = new Map<string, number>();
  private flushTimer: ReturnType<typeof setTimeout> | undefined;
  /** Counts forget()s: the outcome of a receipt sent before the last one concerns data gone. */
  private generation = 0;

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

  /**
   * Forgets every receipt sent, due or failed: the server's data was restored from a backup, so its
   * watermarks may be lower than what was sent, and seqs at or below them are new messages.
   */
  forget(): void {
    this.generation++;
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    this.due.clear();
    this.failed.clear();
    this.sent.clear();
  }

  /** Sends again what failed, e.g. after a reconnect. */
  resendFailed(): void {
    const failed = [...this.failed.values()];
    this.failed.clear();
    for (const r of failed) this.mark(r.kind, r.conversationId, r.seq);
  }

  private flush(): void {
    this.flushTimer = undefined;
    const generation = this.generation;
    for (const [key, r] of this.due) {
      const before = this.sent.get(key) ?? 0;
      this.sent.set(key, Math.max(before, r.seq));
      this.send(r.kind, r.conversationId, r.seq).catch(() => {
        if (generation !== this.generation) return; // of data forgotten since: not to send again
        if (this.sent.get(key) === r.seq) this.sent.set(key, before);
        if (r.seq > (this.failed.get(key)?.seq ?? 0)) this.failed.set(key, r);
      });
    }
    this.due.clear();
  }
}
