/**
 * How the owning consumers (sequencer, inbox owner) read their partitions: every partition of a fetch
 * at once, because kafkajs fetches from a broker again only when every batch of its last fetch is done,
 * so partitions handled in waves add up their waits. One partition's batches still run one after
 * another (that is the order the owners rely on).
 */
export const PARTITIONS_CONSUMED_CONCURRENTLY = 64;
