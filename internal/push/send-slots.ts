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
