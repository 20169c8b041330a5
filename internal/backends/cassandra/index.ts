/**
 * The Cassandra half of the distributed backend: opens one driver Client, applies the schema migrations
 * and hands out the stores (docs/design.md §4 and §6). The stores share the client and have no state
 * of their own worth closing: `close()` on the returned object shuts the client down; the stores'
 * own close() does nothing, so closing one of them does not break the others.
 *
 * Consistency: LOCAL_QUORUM for reads and writes and LOCAL_SERIAL for the Paxos phase of lightweight
 * transactions, unless configured otherwise. Every failure reaches callers as a SwitchboardError naming
 * the table and operation: UNAVAILABLE with reason STORAGE_UNAVAILABLE when the node (or enough replicas)
 * is down, overloaded or timed out, so callers can retry; INTERNAL / STORAGE_ERROR otherwise.
 */

import type { Client } from "cassandra-driver";
import cassandra from "cassandra-driver";
import type { Closeable } from "../types.js";
import { CassandraDeviceStore } from "./devices.js";
import { type IdHighWaterStore, openIdHighWater } from "./id-high-water.js";
import { CassandraInboxStore } from "./inbox.js";
import { CassandraMembershipStore } from "./membership.js";
import { CassandraMessageStore } from "./messages.js";
import { CassandraOwnershipStore } from "./ownership.js";
import { CassandraPresenceStore } from "./presence.js";
import { CassandraPushDeadLetters } from "./push-dead-letters.js";
import { CassandraReceiptStore } from "./receipts.js";
import { migrate, type Replication, verifySchema } from "./schema.js";
import { CassandraSequencerStore } from "./sequencer.js";
import {
  type ConsistencyOptions,
  checkKeyspaceName,
  type RequestCounts,
  type RequestTimer,
  Session,
  storageError,
} from "./session.js";
import { CassandraSettingsStore } from "./settings.js";

export type { IdHighWaterStore } from "./id-high-water.js";
export { INBOX_BUCKET_SIZE, migrate, type Replication, SEQ_BUCKET_SIZE } from "./schema.js";
export type {
  ConsistencyName,
  ConsistencyOptions,
  RequestCounts,
  RequestKind,
  RequestTimer,
  SerialConsistencyName,
} from "./session.js";
export {
  CassandraDeviceStore,
  CassandraInboxStore,
  CassandraMembershipStore,
  CassandraMessageStore,
  CassandraOwnershipStore,
  CassandraPresenceStore,
  CassandraReceiptStore,
  CassandraSequencerStore,
};

/** Reconnection to a node that went down: 200 ms, 400 ms, 800 ms, 1.6 s, then every 2 s (±15 % jitter). */
const RECONNECT_BASE_DELAY_MS = 200;
const RECONNECT_MAX_DELAY_MS = 2_000;

export interface CassandraOptions {
  /** "host" or "host:port" (default port 9042). */
  contactPoints: string[];
  /** The datacenter whose nodes coordinate requests (and whose replicas LOCAL_* levels count). */
  localDataCenter: string;
  keyspace: string;
  /** Used only when the keyspace is created. Default SimpleStrategy, one replica: tests and dev only. */
  replication?: Replication;
  consistency?: ConsistencyOptions;
  /** Outstanding requests of MessageStore.write / getMany per store. Default 64. */
  inFlightMax?: number;
  /** Client-side timeout per request, ms. Default 30,000 (the server's own timeouts are shorter). */
  requestTimeoutMs?: number;
  /** PasswordAuthenticator credentials. */
  credentials?: { username: string; password: string };
  /** TLS to the nodes (node:tls options; `{}` for the system's CAs). */
  ssl?: import("node:tls").ConnectionOptions;
  /**
   * Create the keyspace and apply pending migrations (default). Off: only check that the schema is
   * at this build's version and fail with NOT_PROVISIONED otherwise (the operator provisions).
   */
  provision?: boolean;
}

export interface CassandraStores extends Closeable {
  readonly keyspace: string;
  readonly client: Client;
  readonly messages: CassandraMessageStore;
  readonly membership: CassandraMembershipStore;
  readonly inbox: CassandraInboxStore;
  readonly receipts: CassandraReceiptStore;
  readonly presence: CassandraPresenceStore;
  readonly devices: CassandraDeviceStore;
  readonly settings: CassandraSettingsStore;
  readonly pushDeadLetters: CassandraPushDeadLetters;
  readonly sequencer: CassandraSequencerStore;
  readonly ownership: CassandraOwnershipStore;
  /** Id worker `workerId`'s high-water mark, read once (id-high-water.ts). */
  idHighWater(workerId: number): Promise<IdHighWaterStore>;
  /** Requests sent so far, by kind (one live object). */
  readonly requests: RequestCounts;
  /** Calls `timer` when each request completes (metrics). */
  timeRequests(timer: RequestTimer): void;
}

export async function openCassandraStores(options: CassandraOptions): Promise<CassandraStores> {
  checkKeyspaceName(options.keyspace);
  const client = new cassandra.Client({
    contactPoints: options.contactPoints,
    localDataCenter: options.localDataCenter,
    ...(options.credentials ? { credentials: options.credentials } : {}),
    ...(options.ssl ? { sslOptions: options.ssl } : {}),
    socketOptions: { connectTimeout: 10_000, readTimeout: options.requestTimeoutMs ?? 30_000 },
    protocolOptions: { maxSchemaAgreementWaitSeconds: 30 },
    policies: {
      // The driver's default doubles the delay between reconnection attempts from 1 s up to 10 min
      // (1, 2, 4, 8, 16 s...), so a node that is back after ~10-20 s (a restart, a rolling upgrade)
      // waits up to ~15 s more for the next attempt, and with one node (or all replicas down) every
      // request fails with NoHostAvailable meanwhile. Capped at 2 s, a node is used again within ~2 s
      // of coming back; an attempt against a down node costs one refused connect, so 0.5 attempts/s
      // per node and client is harmless.
      reconnection: new cassandra.policies.reconnection.ExponentialReconnectionPolicy(
        RECONNECT_BASE_DELAY_MS,
        RECONNECT_MAX_DELAY_MS,
        false,
      ),
    },
    // Pooling stays at the driver's defaults, which suit this client: one connection per local node (up
    // to 2,048 requests in flight on it; the session sends at most REQUESTS_IN_FLIGHT_MAX at once), and
    // a heartbeat (an OPTIONS request) on a connection idle for 30 s, which keeps idle connections from
    // being dropped by middleboxes. A killed node is noticed at once (the socket closes); a hung one by the request
    // timeout above.
  });
  try {
    await client.connect();
  } catch (err) {
    await client.shutdown().catch(() => undefined);
    throw storageError(`connect to ${options.contactPoints.join(",")} (dc ${options.localDataCenter})`, err);
  }
  try {
    if (options.provision === false) await verifySchema(client, options.keyspace);
    else
      await migrate(client, {
        keyspace: options.keyspace,
        replication: options.replication ?? { class: "SimpleStrategy", replication_factor: 1 },
      });
  } catch (err) {
    await client.shutdown().catch(() => undefined);
    throw err;
  }

  const session = new Session(client, options.keyspace, options.consistency);
  const inFlight = options.inFlightMax === undefined ? {} : { inFlightMax: options.inFlightMax };
  let closing: Promise<void> | undefined;
  return {
    keyspace: options.keyspace,
    client,
    messages: new CassandraMessageStore(session, inFlight),
    membership: new CassandraMembershipStore(session),
    inbox: new CassandraInboxStore(session),
    receipts: new CassandraReceiptStore(session),
    presence: new CassandraPresenceStore(session),
    devices: new CassandraDeviceStore(session),
    settings: new CassandraSettingsStore(session),
    pushDeadLetters: new CassandraPushDeadLetters(session),
    sequencer: new CassandraSequencerStore(session),
    ownership: new CassandraOwnershipStore(session),
    idHighWater: (workerId) => openIdHighWater(session, workerId),
    requests: session.requests,
    timeRequests: (timer) => session.timeRequests(timer),
    close() {
      closing ??= (async () => {
        session.markClosed();
        await client.shutdown();
      })();
      return closing;
    },
  };
}
