/**
 * The backend contract against Kafka + Cassandra (real servers from test/infra). One keyspace per
 * run (migrations are slow schema changes), topics and consumer groups per test (namespace prefix).
 */

import { Kafka, logLevel } from "kafkajs";
import { openDistributedBackends } from "../../internal/backends/distributed/index.js";
import { topicNames } from "../../internal/backends/kafka/topics.js";
import { createLogger } from "../../internal/lib/log.js";
import { ensureServer } from "../infra/servers.js";
import { describeBackendContract } from "./backends.contract.js";

const keyspace = `contract_${Date.now().toString(36)}`;
let servers: Promise<{ brokers: string[]; contactPoints: string[]; datacenter: string }> | undefined;

function infra() {
  servers ??= (async () => {
    const kafka = await ensureServer("kafka");
    const cassandra = await ensureServer("cassandra");
    return {
      brokers: kafka.KAFKA_BROKERS!.split(","),
      contactPoints: cassandra.CASSANDRA_CONTACT_POINTS!.split(","),
      datacenter: cassandra.CASSANDRA_DATACENTER ?? "datacenter1",
    };
  })();
  return servers;
}

describeBackendContract(
  "distributed",
  async ({ namespace }) => {
    const s = await infra();
    const open = () =>
      openDistributedBackends({
        brokers: s.brokers,
        clientId: `contract-${namespace}`,
        topicPrefix: `${namespace}.`,
        partitions: 3,
        replicationFactor: 1,
        retentionHours: 1,
        appendTimeoutMs: 20_000,
        // The contract's consumers read the sequenced log, which Kafka has only when it is published.
        publishSequenced: true,
        cassandra: { contactPoints: s.contactPoints, localDataCenter: s.datacenter, keyspace },
        log: createLogger({ test: "contract" }),
      });
    return {
      backends: await open(),
      reopen: open,
      // Delete this test's topics: a broker restart later in the run recovers every partition it has.
      dispose: async () => {
        const admin = new Kafka({
          clientId: `contract-${namespace}-cleanup`,
          brokers: s.brokers,
          logLevel: logLevel.NOTHING,
        }).admin();
        await admin.connect();
        try {
          const names = Object.values(topicNames(`${namespace}.`));
          await admin.deleteTopics({ topics: names });
        } finally {
          await admin.disconnect();
        }
      },
    };
  },
  { eventuallyMs: 30_000 },
);
