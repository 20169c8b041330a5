/**
 * What the message path is writing, by key, until the turn commit that writes it settles: a repeat
 * of an append still in flight waits for it instead of writing again.
 *
 * One Map per turn commit, dropped whole when the commit settles, instead of one long-lived Map with
 * a delete per key: V8 allocates the new table of a resized Map in the generation the Map lives in,
 * so the long-lived Map's growing and shrinking (a few entries in, a few out, every turn) made
 * old-generation garbage, collected only by the next major GC. A turn's Map is young and dies young.
 */
export class PendingWrites<V> {
  private readonly groups: Array<{ commit: Promise<unknown>; byKey: Map<string, V> }> = [];

  get(key: string): V | undefined {
    for (const group of this.groups) {
      const value = group.byKey.get(key);
      if (value !== undefined) return value;
    }
    return undefined;
  }

  /** Keeps `value` under `key` until `commit` settles (either way). */
  set(commit: Promise<unknown>, key: string, value: V): void {
    let group = this.groups.at(-1);
    if (group?.commit !== commit) {
      const added = { commit, byKey: new Map<string, V>() };
      this.groups.push(added);
      const drop = () => void this.groups.splice(this.groups.indexOf(added), 1);
      commit.then(drop, drop);
      group = added;
    }
    group.byKey.set(key, value);
  }

  /** Keys kept now (for tests). */
  get size(): number {
    let n = 0;
    for (const group of this.groups) n += group.byKey.size;
    return n;
  }

  /** Resolves once every commit kept so far has settled. */
  async settled(): Promise<void> {
    await Promise.allSettled(this.groups.map((g) => g.commit));
  }
}
