import { Limiter } from "../lib/limiter.js";

/**
 * Sends per key (a user), each key's at most `slotsMax` in flight, forgotten when idle (so the map
 * holds only keys with sends in flight or waiting).
 */
export class KeyedSendSlots {
  private readonly byKey = new Map<string, { slots: Limiter; users: number }>();

  constructor(private readonly slotsMax: number) {}

  async run<T>(key: string, send: () => Promise<T>): Promise<T> {
    let entry = this.byKey.get(key);
    if (!entry) {
      entry = { slots: new Limiter(this.slotsMax), users: 0 };
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
