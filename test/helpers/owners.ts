/**
 * For tests that run the partition owners (sequencer, inbox owner) by hand against the real Kafka and
 * Cassandra of test/infra: the topics and schema a platform would provision, and the Cassandra stores.
 */
import { type CassandraStores, openCassandraStores } from "../../internal/backends/cassandra/index.js";
import { openDistributedBackends } from "../../internal/backends/distributed/index.js";
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
