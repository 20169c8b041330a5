/**
 * A set that remembers at most `capacity` keys, forgetting the least recently added/touched first.
 * Map iteration order is insertion order, so the first key is always the oldest.
 */
export class LruSet<K> {
  private readonly map = new Map<K, true>();

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1)
      throw new RangeError("capacity must be a positive integer");
  }

  get size(): number {
    return this.map.size;
  }

  has(key: K): boolean {
    return this.map.has(key);
  }

  /** Adds `key` (or refreshes it); returns false when it was already present. */
  add(key: K): boolean {
    const present = this.map.delete(key);
    this.map.set(key, true);
    if (this.map.size > this.capacity) {
      const oldest = this.map.keys().next();
      if (!oldest.done) this.map.delete(oldest.value);
    }
    return !present;
  }

  clear(): void {
    this.map.clear();
  }
}
