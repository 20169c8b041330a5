/**
 * The replicas of recently used partitions, so that a routing key is hashed once rather than on every
 * request. The driver's Murmur3 emulates 64-bit arithmetic with a fresh object per step: at 1,000
 * msgs/s it was 7 % of everything the process allocated, for keys (users, conversations, buckets)
 * that repeat all the time.
 *
 * A stale answer costs efficiency, never correctness: the driver still sends to a live node (it
 * skips replicas that are down, and any coordinator forwards a write to the replicas), and merged
 * turn writes only lose their grouping. The cache is nevertheless forgotten when a node joins or
 * leaves, and every `maxAgeMs`, which bounds how long a change of replication goes unseen.
 */
import type { Client } from "cassandra-driver";

/** The driver answers null while it has no token map yet (its typings omit it). */
type Hosts = ReturnType<Client["getReplicas"]> | null;

export interface ReplicaCacheOptions {
  /** Partitions remembered at most (then the cache starts over). */
  maxKeys: number;
  /** The cache starts over at least this often. */
  maxAgeMs: number;
  now?: () => number;
}

export class ReplicaCache {
  private readonly known = new Map<string, Hosts>();
  private since: number;
  private client: Client | undefined;
  private readonly now: () => number;

  constructor(private readonly options: ReplicaCacheOptions) {
    this.now = options.now ?? Date.now;
    this.since = this.now();
  }

  /** Attaches the client whose token map answers; a node that joins or leaves clears the cache. */
  attach(client: Client): void {
    this.client = client;
    client.on("hostAdd", () => this.clear());
    client.on("hostRemove", () => this.clear());
  }

  /** What `client.getReplicas` answers; null before the driver knows the ring or the keyspace. */
  replicas(keyspace: string, routingKey: Buffer): Hosts {
    const client = this.client;
    if (!client) return null;
    const now = this.now();
    if (now - this.since >= this.options.maxAgeMs || this.known.size >= this.options.maxKeys) this.clear();
    const id = `${keyspace}\u0000${routingKey.toString("latin1")}`;
    const cached = this.known.get(id);
    if (cached) return cached;
    const hosts = client.getReplicas(keyspace, routingKey);
    // Not remembered until the driver can answer: the ring arrives after connecting.
    if (hosts && hosts.length > 0) this.known.set(id, hosts);
    return hosts;
  }

  get size(): number {
    return this.known.size;
  }

  private clear(): void {
    this.known.clear();
    this.since = this.now();
  }
}
