/**
 * Forgets the entry of `entries` inserted first (Maps and Sets iterate in insertion order); nothing
 * when it is empty. A bounded memory calls it once it is over its bound: with each use re-inserting
 * its key (delete, then set), the entry it drops is the least recently used.
 */
export function dropOldest<K>(entries: { keys(): Iterator<K>; delete(key: K): boolean }): void {
  const oldest = entries.keys().next();
  if (!oldest.done) entries.delete(oldest.value);
}
