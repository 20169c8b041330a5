/**
 * Which of `shards` owns a user: FNV-1a over the UTF-16 code units, modulo the count. Stable across
 * processes and versions, cheap, well spread. Presence shards and the inbox partitions of the
 * distributed backend both place users with it.
 */
export function shardOf(userId: string, shards: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < userId.length; i++) {
    h ^= userId.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) % shards;
}
