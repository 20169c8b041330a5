/**
 * For tests that run the partition owners (sequencer, inbox owner) by hand against the real Kafka and
 * Cassandra of test/infra: the topics and schema a platform would provision, and the Cassandra stores.
 */
import { type CassandraStores, openCassandraStores } from "../../internal/backends/cassandra/index.js";
import { openDistributedBackends } from "../../internal/backends/distributed/index.js";
import type { OwnershipStore } from "../../internal/backends/types.js";
import { createLogger } from "../../internal/lib/log.js";

export interface OwnersInfra {
  /** KAFKA_BROKERS and CASSANDRA_CONTACT_POINTS, as ensureServer gives them. */
  env: Record<string, string>;
  keyspace: string;
}

/** Creates the topics under `prefix` and the keyspace's schema, without running any owner. */
export async function provisionForOwners(
  infra: OwnersInfra,
  o: { prefix: string; partitions: number; test: string },
): Promise<void> {
  const setup = await openDistributedBackends({
    brokers: infra.env.KAFKA_BROKERS!.split(","),
    clientId: `${o.test}-setup`,
    topicPrefix: o.prefix,
    partitions: o.partitions,
    replicationFactor: 1,
    retentionHours: 1,
    appendTimeoutMs: 10_000,
    cassandra: cassandraOptions(infra),
    log: createLogger({ test: o.test }),
    sequencer: false,
  });
  await setup.close();
}

export function openOwnersStores(infra: OwnersInfra): Promise<CassandraStores> {
  return openCassandraStores(cassandraOptions(infra));
}

function cassandraOptions(infra: OwnersInfra) {
  return {
    contactPoints: infra.env.CASSANDRA_CONTACT_POINTS!.split(","),
    localDataCenter: "datacenter1",
    keyspace: infra.keyspace,
  };
}

/**
 * Ownership stores over `ownership`, one per named owner, that record the epochs each claimed into
 * `claims` (the fencing tests compare a zombie's epochs with its successor's).
 */
export function recordingOwnership(
  ownership: OwnershipStore,
  claims: Map<string, bigint[]>,
): (who: string) => OwnershipStore {
  return (who) => ({
    claim: async (stream, partition, owner) => {
      const epoch = await ownership.claim(stream, partition, owner);
      claims.set(who, [...(claims.get(who) ?? []), epoch]);
      return epoch;
    },
    current: (stream, partition) => ownership.current(stream, partition),
    close: async () => {},
  });
}

/** A test hook that, once armed, holds every owner step that calls it until released: a paused owner. */
export class Hold {
  private armed = false;
  /** Steps held so far. */
  held = 0;
  private open!: () => void;
  private readonly opened = new Promise<void>((resolve) => {
    this.open = resolve;
  });

  /** The hook to pass as the owner's `beforeWrite` (or `beforeHandOver`). */
  readonly hook = async (): Promise<void> => {
    if (!this.armed) return;
    this.held++;
    await this.opened;
  };

  arm(): void {
    this.armed = true;
  }

  /** Waits until a step is held (at most `timeoutMs`); the caller then asserts `held`. */
  async untilHeld(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.held === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  }

  release(): void {
    this.open();
  }
}
