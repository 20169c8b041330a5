/**
 * At most `slotsMax` requests in flight to one provider: a burst of thousands of notifications must
 * not open thousands of sockets (or HTTP/2 streams beyond the server's limit), nor trip a provider's
 * per-sender quota at once. Waiters are served in order; their number is bounded by the push
 * service's pendingMax.
 */
export class SendSlots {
  private inUse = 0;
  private readonly waiters: Array<() => void> = [];

  constructor(private readonly slotsMax: number) {}

  async run<T>(send: () => Promise<T>): Promise<T> {
    if (this.inUse >= this.slotsMax) await new Promise<void>((resolve) => this.waiters.push(resolve));
    else this.inUse++;
    try {
      return await send();
    } finally {
      // Hand the slot straight to the next waiter (inUse unchanged), or free it.
      const next = this.waiters.shift();
      if (next) next();
      else this.inUse--;
    }
  }
}

/**
 * SendSlots per key, each at most `slotsMax` in flight, forgotten when idle (so the map holds only
 * keys with sends in flight or waiting).
 */
export class KeyedSendSlots {
  private readonly byKey = new Map<string, { slots: SendSlots; users: number }>();

  constructor(private readonly slotsMax: number) {}

  async run<T>(key: string, send: () => Promise<T>): Promise<T> {
    let entry = this.byKey.get(key);
    if (!entry) {
      entry = { slots: new SendSlots(this.slotsMax), users: 0 };
      this.byKey.set(key, entry);
    }
    entry.users++;
    try {
      return await entry.slots.run(send);
    } finally {
      if (--entry.users === 0) this.byKey.delete(key);
    }
  }

  /** Keys with sends in flight or waiting. */
  get size(): number {
    return this.byKey.size;
  }
}
