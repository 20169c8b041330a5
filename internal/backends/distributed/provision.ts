/**
 * Provisioning of the distributed backend's shared state, without opening the backend: the Kafka
 * topics and the Cassandra keyspace with its migrations. Both steps are idempotent (existing topics are
 * left as they are; applied migrations are skipped after their checksum is checked), so the operator
 * runs this on every change of a ChatCluster's storage settings and a crash midway is harmless.
 *
 * This module is the one part of internal/backends the operator may import (ADR 0004): it takes plain
 * settings and returns what it did, and knows nothing of the services.
 */
import cassandra from "cassandra-driver";
import { Kafka, type KafkaConfig, logLevel } from "kafkajs";
import { kafkajsLogCreator } from "../../lib/kafkajs-log.js";
import { fixKafkajsRequestQueue } from "../../lib/kafkajs-request-queue.js";
import type { Logger } from "../../lib/log.js";
import { inSpan, SpanKind } from "../../lib/tracing.js";
import { migrate, type Replication, SCHEMA_VERSION } from "../cassandra/schema.js";
import { checkKeyspaceName, storageError } from "../cassandra/session.js";
import { ensureTopics, topicNames } from "../kafka/topics.js";

export interface ProvisionOptions {
  kafka: {
    brokers: string[];
    topicPrefix: string;
    partitions: number;
    replicationFactor: number;
    retentionHours: number;
    ssl?: KafkaConfig["ssl"];
    sasl?: KafkaConfig["sasl"];
  };
  cassandra: {
    contactPoints: string[];
    localDataCenter: string;
    keyspace: string;
    replication: Replication;
    credentials?: { username: string; password: string };
    /** TLS to the nodes (cassandra.tls), as the platform's own sessions connect. */
    ssl?: import("node:tls").ConnectionOptions;
  };
  clientId: string;
  log: Logger;
}

export interface ProvisionResult {
  topics: string[];
  schemaVersion: number;
  migrationsApplied: number[];
}

/** The Cassandra schema version provisionDistributed brings a keyspace to. */
export { SCHEMA_VERSION };

export async function provisionDistributed(o: ProvisionOptions): Promise<ProvisionResult> {
  // Client spans of whoever provisions (a traced reconcile of the operator).
  const [topics, schema] = await Promise.all([
    inSpan(
      "create Kafka topics",
      {
        kind: SpanKind.CLIENT,
        attributes: { "messaging.system": "kafka", "switchboard.topic_prefix": o.kafka.topicPrefix },
      },
      () => provisionTopics(o),
    ),
    inSpan(
      "migrate Cassandra schema",
      {
        kind: SpanKind.CLIENT,
        attributes: { "db.system.name": "cassandra", "db.namespace": o.cassandra.keyspace },
      },
      () => provisionSchema(o),
    ),
  ]);
  return { topics, schemaVersion: schema.version, migrationsApplied: schema.applied };
}

async function provisionTopics(o: ProvisionOptions): Promise<string[]> {
  const log = o.log.child({ step: "kafka-topics" });
  fixKafkajsRequestQueue();
  const kafka = new Kafka({
    clientId: o.clientId,
    brokers: o.kafka.brokers,
    logLevel: logLevel.ERROR,
    logCreator: kafkajsLogCreator(log),
    // Bounded: the caller (a reconcile) retries with backoff; a long retry here only hides the error.
    retry: { retries: 3, initialRetryTime: 200, maxRetryTime: 2_000 },
    connectionTimeout: 5_000,
    ...(o.kafka.ssl === undefined ? {} : { ssl: o.kafka.ssl }),
    ...(o.kafka.sasl === undefined ? {} : { sasl: o.kafka.sasl }),
  });
  const admin = kafka.admin();
  try {
    await admin.connect();
    await ensureTopics(admin, {
      prefix: o.kafka.topicPrefix,
      partitions: o.kafka.partitions,
      replicationFactor: o.kafka.replicationFactor,
      retentionHours: o.kafka.retentionHours,
    });
  } catch (err) {
    throw new Error(`create Kafka topics on ${o.kafka.brokers.join(",")}: ${describe(err)}`, { cause: err });
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
  return Object.values(topicNames(o.kafka.topicPrefix));
}

async function provisionSchema(o: ProvisionOptions): Promise<{ version: number; applied: number[] }> {
  checkKeyspaceName(o.cassandra.keyspace);
  const client = new cassandra.Client({
    contactPoints: o.cassandra.contactPoints,
    localDataCenter: o.cassandra.localDataCenter,
    socketOptions: { connectTimeout: 5_000, readTimeout: 30_000 },
    protocolOptions: { maxSchemaAgreementWaitSeconds: 30 },
    ...(o.cassandra.credentials === undefined ? {} : { credentials: o.cassandra.credentials }),
    ...(o.cassandra.ssl === undefined ? {} : { sslOptions: o.cassandra.ssl }),
  });
  try {
    await client.connect();
  } catch (err) {
    await client.shutdown().catch(() => undefined);
    throw storageError(
      `connect to ${o.cassandra.contactPoints.join(",")} (dc ${o.cassandra.localDataCenter})`,
      err,
    );
  }
  try {
    return await migrate(client, { keyspace: o.cassandra.keyspace, replication: o.cassandra.replication });
  } finally {
    await client.shutdown().catch(() => undefined);
  }
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
