/**
 * The configuration tree mapped onto the storage backends: which backend, its endpoints and the
 * credentials (Kafka TLS/SASL, Cassandra user and TLS) that in Kubernetes come from the ChatCluster's
 * Secrets. Each role says which parts it uses, so a process opens only what it needs.
 */
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import type { ConnectionOptions } from "node:tls";
import type { KafkaConfig } from "kafkajs";
// Types only: each backend's code (kafkajs and cassandra-driver, or lmdb) is imported when a process
// opens that backend, so a process loads only the drivers it uses (a faster start and restart).
import type { DistributedBackends, DistributedOptions } from "../backends/distributed/index.js";
import type { Backends } from "../backends/types.js";
import { cassandraTls } from "../lib/cassandra-tls.js";
import type { Config } from "../lib/config.js";
import type { Logger } from "../lib/log.js";
import type { Metrics } from "../lib/metrics.js";

/** What a process does with the distributed backend. */
export interface BackendUse {
  /** Run a sequencer in this process. */
  sequencer: boolean;
  /** Append messages (follow the replies topic for acks sequenced elsewhere). */
  appends: boolean;
  /** Create topics and migrate the schema (all-in-one); otherwise verify that they exist. */
  provision: boolean;
  /** The process's role: with `httpPort`, names its consumer-group member file (kafka.memberFile). */
  role: string;
  /** The HTTP port this process listens on (bound, not as configured: 0 would name every process alike). */
  httpPort?: number;
}

function readPem(path: string, setting: string): string {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new Error(`${setting}: cannot read ${path}: ${(err as Error).message}`);
  }
  // Else the TLS handshake fails on every attempt, which looks like a broker that is down.
  if (!text.includes("-----BEGIN ")) throw new Error(`${setting}: ${path} holds no PEM block (-----BEGIN …)`);
  return text;
}

function tlsOptions(ca: string, cert: string, key: string, prefix: string): ConnectionOptions {
  return {
    ...(ca ? { ca: [readPem(ca, `${prefix}.tlsCaFile`)] } : {}),
    ...(cert ? { cert: readPem(cert, `${prefix}.tlsCertFile`) } : {}),
    ...(key ? { key: readPem(key, `${prefix}.tlsKeyFile`) } : {}),
  };
}

function kafkaSasl(k: Config["kafka"]): KafkaConfig["sasl"] | undefined {
  if (k.saslMechanism === "none") return undefined;
  if (!k.saslUsername) throw new Error(`kafka.saslMechanism ${k.saslMechanism} needs kafka.saslUsername`);
  const creds = { username: k.saslUsername, password: k.saslPassword };
  return k.saslMechanism === "plain"
    ? { mechanism: "plain", ...creds }
    : k.saslMechanism === "scram-sha-256"
      ? { mechanism: "scram-sha-256", ...creds }
      : { mechanism: "scram-sha-512", ...creds };
}

/**
 * The member file's name in the data dir when kafka.memberFile is empty. Processes of one role on one
 * host may share a data dir (test/infra/cluster runs two routers on one): each must keep its own file,
 * or the last to join overwrites the other's ids and a restarted process, finding ids of a live one
 * it must not reuse, joins as a new member and waits out its dead self's 10 s session. The HTTP port
 * tells them apart (no two processes listen on one) and stays the same when the process restarts.
 */
export function defaultMemberFile(role: string, httpPort: number | undefined): string {
  return httpPort === undefined ? `kafka-members-${role}.json` : `kafka-members-${role}-${httpPort}.json`;
}

/** The distributed backend's options from the configuration tree; throws naming a setting that cannot work. */
export function distributedOptions(config: Config, log: Logger, use: BackendUse): DistributedOptions {
  const k = config.kafka;
  const c = config.cassandra;
  if (k.brokers.length === 0) throw new Error("kafka.brokers (SWITCHBOARD_KAFKA_BROKERS) is empty");
  if (c.contactPoints.length === 0)
    throw new Error("cassandra.contactPoints (SWITCHBOARD_CASSANDRA_CONTACT_POINTS) is empty");
  const sasl = kafkaSasl(k);
  return {
    brokers: k.brokers,
    clientId: `switchboard-${hostname()}-${process.pid}`,
    topicPrefix: k.topicPrefix,
    partitions: k.partitions,
    replicationFactor: k.replicationFactor,
    retentionHours: k.retentionHours,
    appendTimeoutMs: k.appendTimeoutMs,
    bodyCharsMax: config.gateway.bodyCharsMax,
    dedupeWindowSeconds: k.dedupeWindowHours * 3600,
    publishSequenced: k.publishSequenced,
    memberFile: k.memberFile || join(config.dataDir, defaultMemberFile(use.role, use.httpPort)),
    ...(k.tls ? { ssl: tlsOptions(k.tlsCaFile, k.tlsCertFile, k.tlsKeyFile, "kafka") } : {}),
    ...(sasl ? { sasl } : {}),
    cassandra: {
      contactPoints: c.contactPoints,
      localDataCenter: c.datacenter,
      keyspace: c.keyspace,
      replication: { class: "SimpleStrategy", replication_factor: c.replicationFactor },
      consistency: { level: c.consistency, serial: c.serialConsistency },
      ...(c.username ? { credentials: { username: c.username, password: c.password } } : {}),
      ...(c.tls
        ? { ssl: cassandraTls(c.tlsCaFile ? [readPem(c.tlsCaFile, "cassandra.tlsCaFile")] : undefined) }
        : {}),
    },
    log,
    sequencer: use.sequencer,
    appends: use.appends,
    provision: use.provision,
    // Role all issues ids itself: keep its worker's mark (the split id role has no storage).
    ...(use.role === "all" ? { idWorker: config.id.workerId } : {}),
  };
}

/**
 * Checks the distributed backend's configuration (brokers and contact points, SASL, the PEM files)
 * without connecting: a role calls it before its retry loop, which would otherwise retry a
 * configuration error for ever as if the storage were down.
 */
export function checkDistributedConfig(config: Config, log: Logger): void {
  distributedOptions(config, log, { sequencer: false, appends: false, provision: false, role: "check" });
}

/**
 * Opens the distributed backend and exports its request counters on `metrics`
 * (switchboard_cassandra_requests_total, switchboard_kafka_produce*_total).
 */
export async function openDistributed(
  config: Config,
  log: Logger,
  metrics: Metrics,
  use: BackendUse,
): Promise<DistributedBackends> {
  const { openDistributedBackends } = await import("../backends/distributed/index.js");
  const backends = await openDistributedBackends(distributedOptions(config, log, use));
  metrics.countStorageRequests(backends.requests);
  return backends;
}

/** The configured backend: embedded (one LMDB file; role all only) or distributed. */
export async function openBackends(
  config: Config,
  log: Logger,
  metrics: Metrics,
  use: BackendUse,
  onFatal: (err: unknown) => void,
): Promise<Backends> {
  if (config.backend === "distributed") return openDistributed(config, log, metrics, use);
  const { EmbeddedBackends } = await import("../backends/embedded/index.js");
  const backends = new EmbeddedBackends({
    dataDir: config.dataDir,
    dedupeWindowMs: config.kafka.dedupeWindowHours * 3_600_000, // the same window on both backends
    onFatal,
    onConsumerError: (group, err) => log.error("consumer failed; retrying the batch", { group, err }),
    // A router failing for 2 s: the change counts for what it had not routed yet (docs/protocol.md §3).
    onRouterLagged: (conversationId, waitedMs) =>
      log.warn("membership changed while the router lagged", { conversationId, waitedMs }),
    diskReserveBytes: config.dataDirFreeBytesMin,
    onDiskFull: (full, availableBytes, reserveBytes) =>
      full
        ? log.error(
            "the data dir's disk is nearly full: new messages are refused (STORAGE_FULL) until space is freed",
            { dataDir: config.dataDir, availableBytes, dataDirFreeBytesMin: reserveBytes },
          )
        : log.info("the data dir's disk has room again: new messages are taken", {
            dataDir: config.dataDir,
            availableBytes,
          }),
    onDiskSpaceError: (err) =>
      log.warn("could not measure the data dir's free space; the last state holds", {
        dataDir: config.dataDir,
        err,
      }),
  });
  if (config.dataDirFreeBytesMin > 0) metrics.watchDiskSpace(config.dataDir, backends.diskSpace);
  return backends;
}
