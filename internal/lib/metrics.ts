/**
 * Prometheus metrics, one registry per platform instance (so tests can run several in a process).
 * Names follow Prometheus conventions: switchboard_<subsystem>_<what>_<unit|total>.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import { registerBuildInfo } from "./build-info.js";

/**
 * Live request counters of a storage client (the distributed backend's `requests`): read when
 * /metrics is scraped. Structural, so this module does not depend on the backends.
 */
export interface StorageRequestSource {
  cassandra: {
    readonly reads: number;
    readonly writes: number;
    readonly batches: number;
    readonly lwts: number;
    /** Requests waiting now for a place to be sent. */
    readonly waiting: number;
  };
  /** Calls `timer` when each Cassandra request completes. */
  timeCassandra(
    timer: (kind: "read" | "write" | "batch" | "lwt", seconds: number, failed: boolean) => void,
  ): void;
  kafka: {
    produceRequests(): number;
    producedRecords(): number;
    /** Records behind the end of each partition this process consumes in a shared group. */
    consumerLag(): Iterable<{ group: string; partition: number; records: number }>;
    /** The sequencer's drafts by how their dedupe key was checked (zeros without a sequencer). */
    dedupeChecks(): { store: number; memory: number; trusted: number };
    /** Per inbox owner of this process: whether it writes rows and heads in one round trip. */
    inboxOwnersInOneRoundTrip(): Iterable<{ group: string; oneRoundTrip: boolean }>;
  };
}

/** Seconds, for request and delivery latencies: 0.5 ms to 10 s. */
const LATENCY_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/**
 * prom-client's gauges named `nodejs_active_{handles,requests,resources}_total` break the naming
 * rule (`_total` is for counters; promtool refuses them) and repeat the sum of the by-type gauges
 * `nodejs_active_*`, which stay.
 */
const MISNAMED_DEFAULT_GAUGES = [
  "nodejs_active_handles_total",
  "nodejs_active_requests_total",
  "nodejs_active_resources_total",
];

const CASSANDRA_KINDS = [
  ["read", "reads"],
  ["write", "writes"],
  ["batch", "batches"],
  ["lwt", "lwts"],
] as const;

/**
 * Counters whose values live in storage clients: each scrape sums every attached source and adds
 * what they counted since the last scrape, so the series only ever go up (a source that closes
 * keeps its last counts), as a Prometheus counter must.
 */
function storageRequestCounters(r: Registry[]) {
  const sources: StorageRequestSource[] = [];
  const seen = {
    read: 0,
    write: 0,
    batch: 0,
    lwt: 0,
    produceRequests: 0,
    producedRecords: 0,
    store: 0,
    memory: 0,
    trusted: 0,
  };
  const advance = (key: keyof typeof seen, now: number): number => {
    const delta = Math.max(0, now - seen[key]);
    seen[key] = Math.max(seen[key], now);
    return delta;
  };
  const sum = (of: (s: StorageRequestSource) => number) => sources.reduce((a, s) => a + of(s), 0);
  new Counter({
    name: "switchboard_cassandra_requests_total",
    help: "Requests this process sent to Cassandra, by kind: read (SELECT), write (one statement), batch (an unconditional batch: one request however many statements), lwt (a conditional statement or batch: one Paxos round).",
    labelNames: ["kind"],
    registers: r,
    collect() {
      for (const [kind, field] of CASSANDRA_KINDS) {
        const now = sum((s) => s.cassandra[field]);
        this.inc({ kind }, advance(kind, now));
      }
    },
  });
  new Counter({
    name: "switchboard_kafka_produce_requests_total",
    help: "Produce requests this process sent to Kafka (one per batch the producer flushed).",
    registers: r,
    collect() {
      const now = sum((s) => s.kafka.produceRequests());
      this.inc(advance("produceRequests", now));
    },
  });
  new Counter({
    name: "switchboard_kafka_produced_records_total",
    help: "Records this process produced to Kafka (all topics).",
    registers: r,
    collect() {
      const now = sum((s) => s.kafka.producedRecords());
      this.inc(advance("producedRecords", now));
    },
  });
  new Counter({
    name: "switchboard_sequencer_dedupe_checks_total",
    help: "Drafts this process sequenced, by how their (sender, client_msg_id) was checked for an earlier message: store (looked up in Cassandra), memory (a key this sequencer saw since it got the partition), trusted (a first attempt, as its client said, received well after anything the sequencer may have missed; ADR 0002).",
    labelNames: ["checked"],
    registers: r,
    collect() {
      for (const checked of ["store", "memory", "trusted"] as const) {
        const now = sum((s) => s.kafka.dedupeChecks()[checked]);
        this.inc({ checked }, advance(checked, now));
      }
    },
  });
  new Gauge({
    name: "switchboard_kafka_consumer_lag_records",
    help: "Records between the last offset this process committed and the end of the partition, per consumer group (sequencer, inbox) and partition it owns; growing lag means the owner falls behind.",
    labelNames: ["group", "partition"],
    registers: r,
    collect() {
      this.reset();
      for (const source of sources)
        for (const { group, partition, records } of source.kafka.consumerLag())
          this.set({ group, partition: String(partition) }, records);
    },
  });
  new Gauge({
    name: "switchboard_inbox_owner_one_round_trip",
    help: "Per inbox consumer group: 1 while this process's inbox owner writes a batch's inbox rows and heads in one round trip, 0 while it writes the rows first and the heads after them because a member of its consumer group runs a version that does not check heads against their rows (a rolling upgrade: 0 long after the rollout means an older router Pod still runs). Absent without an inbox owner (embedded backend, roles without one).",
    labelNames: ["group"],
    registers: r,
    collect() {
      this.reset();
      for (const source of sources)
        for (const { group, oneRoundTrip } of source.kafka.inboxOwnersInOneRoundTrip())
          this.set({ group }, oneRoundTrip ? 1 : 0);
    },
  });
  new Gauge({
    name: "switchboard_cassandra_requests_waiting",
    help: "Cassandra requests of this process waiting for a place to be sent (at most 1,024 are in flight at once; the rest queue in the process). Above 0 for long: the process asks Cassandra for more than it answers.",
    registers: r,
    collect() {
      this.set(sum((s) => s.cassandra.waiting));
    },
  });
  const cassandraSeconds = new Histogram({
    name: "switchboard_cassandra_request_duration_seconds",
    help: "Time from sending a Cassandra request to its answer, by kind (read, write, batch, lwt) and outcome (ok, error).",
    labelNames: ["kind", "outcome"],
    buckets: LATENCY_BUCKETS,
    registers: r,
  });
  return (source: StorageRequestSource): void => {
    sources.push(source);
    source.timeCassandra((kind, seconds, failed) =>
      cassandraSeconds.observe({ kind, outcome: failed ? "error" : "ok" }, seconds),
    );
  };
}

/** What a presence service holds now, read when /metrics is scraped. */
export interface PresenceCounts {
  usersOnline: number;
  sessions: number;
  watches: number;
}

/** The switchboard_presence_* metrics: the presence service's state and what gateways do about it. */
function presenceMetrics(r: Registry[]) {
  const sources = new Set<() => PresenceCounts>();
  const gauge = (name: string, help: string, field: keyof PresenceCounts) =>
    new Gauge({
      name,
      help,
      registers: r,
      collect() {
        let sum = 0;
        for (const source of sources) sum += source()[field];
        this.set(sum);
      },
    });
  return {
    /** Reports a presence service's counts (until the returned function is called). */
    attach(source: () => PresenceCounts): () => void {
      sources.add(source);
      return () => sources.delete(source);
    },
    usersOnline: gauge(
      "switchboard_presence_users_online",
      "Users this presence process shows online (a session heartbeats, or the last one stopped less than presence.offlineAfterMs ago).",
      "usersOnline",
    ),
    sessions: gauge(
      "switchboard_presence_sessions",
      "Sessions (connections) this presence process has had heartbeats from and not seen end.",
      "sessions",
    ),
    watches: gauge(
      "switchboard_presence_watches",
      "Watches this presence process holds: one per watching session and watched user.",
      "watches",
    ),
    relaysFailed: new Counter({
      name: "switchboard_presence_relays_failed_total",
      help: "Presence changes (or parts of one, for a user watched by very many sessions) this presence process could not hand to a router: their watchers were not told.",
      registers: r,
    }),
    watchesLost: new Counter({
      name: "switchboard_presence_watches_lost_total",
      help: "Renewals (KeepWatches) after which this gateway subscribes its sessions' watches on a presence shard again, by reason: lost (the shard had lost them: it restarted, or renewals failed past the lease), unanswered (the renewal failed, and its lost answer may have gone with it).",
      labelNames: ["reason"],
      registers: r,
    }),
    watchesRenewed: new Counter({
      name: "switchboard_presence_watches_resubscribed_total",
      help: "Watches (session × watched user) this gateway subscribed again on a presence shard that had lost them.",
      registers: r,
    }),
    endSessionFailures: new Counter({
      name: "switchboard_presence_end_session_failures_total",
      help: "EndSession calls of this gateway to a presence shard that failed, by outcome: retried (asked again later), dropped (a failure not worth retrying, retries exhausted or too many waiting; the shard drops the session's watches when this gateway's lease lapses or the shard restarts).",
      labelNames: ["outcome"],
      registers: r,
    }),
  };
}

export type PresenceMetrics = ReturnType<typeof presenceMetrics>;

/** What the metrics read of a watched disk (the embedded backend's DiskSpace). */
export interface DiskSpaceState {
  readonly full: boolean;
  readonly availableBytes: number | undefined;
}

/**
 * The split roles that export each metric of one part of the platform (role all exports every
 * metric; a metric not listed, every role): a process exports what it can measure, so a dashboard's
 * "connections per gateway" lists gateways only, not every id or push Pod at 0.
 */
export const EXPORTED_BY: Readonly<Record<string, readonly string[]>> = {
  switchboard_gateway_connections: ["gateway"],
  switchboard_gateway_sockets: ["gateway"],
  switchboard_gateway_connections_max: ["gateway"],
  switchboard_gateway_routing_records_behind: ["gateway"],
  switchboard_gateway_connects_total: ["gateway"],
  switchboard_gateway_frames_total: ["gateway"],
  switchboard_gateway_errors_total: ["gateway"],
  switchboard_gateway_closes_total: ["gateway"],
  // Sends through the WebSocket (gateways) and through the server API (ChatService on routers).
  switchboard_messages_appended_total: ["gateway", "router"],
  switchboard_message_append_seconds: ["gateway", "router"],
  switchboard_message_delivery_seconds: ["gateway"],
  switchboard_router_deliveries_total: ["router"],
  switchboard_router_inbox_entries_total: ["router"],
  switchboard_router_batch_seconds: ["router"],
  switchboard_router_gateway_streams: ["router"],
  switchboard_router_gateway_stream_queue_bytes: ["router"],
  switchboard_router_deliveries_dropped_total: ["router"],
  switchboard_router_notifications_dropped_total: ["router"],
  switchboard_router_relays_expired_total: ["router"],
  switchboard_router_gateway_stream_failures_total: ["router"],
  switchboard_event_relays_dropped_total: ["gateway", "router"],
  switchboard_push_notifications_total: ["push"],
  switchboard_presence_users_online: ["presence"],
  switchboard_presence_sessions: ["presence"],
  switchboard_presence_watches: ["presence"],
  switchboard_presence_relays_failed_total: ["presence"],
  // What a gateway does about the presence shards' watches.
  switchboard_presence_watches_lost_total: ["gateway"],
  switchboard_presence_watches_resubscribed_total: ["gateway"],
  switchboard_presence_end_session_failures_total: ["gateway"],
  switchboard_sequencer_dedupe_checks_total: ["sequencer"],
};

/** This process's metrics; `role` (its --role) decides which it exports (EXPORTED_BY). */
export function createMetrics(role = "all") {
  const registry = new Registry();
  let ready: () => boolean = () => false;
  let recordsBehind: () => number = () => 0;
  let disk: { dataDir: string; space: DiskSpaceState } | undefined;
  // The standard names (process_cpu_seconds_total, nodejs_heap_size_used_bytes, ...), which
  // dashboards and alerts for any Node.js service already know.
  collectDefaultMetrics({ register: registry });
  for (const name of MISNAMED_DEFAULT_GAUGES) registry.removeSingleMetric(name);
  registerBuildInfo(
    registry,
    "switchboard_build_info",
    "Always 1: the version of Switchboard this process runs and its Node.js version, as labels.",
  );
  const r = [registry];
  const metrics = {
    registry,
    /** Sets what switchboard_ready reports: the same answer as /readyz. */
    setReadiness(check: () => boolean): void {
      ready = check;
    },
    ready: new Gauge({
      name: "switchboard_ready",
      help: "1 while this process is ready (/readyz answers 200: storage reachable, started, not stopping), else 0.",
      registers: r,
      collect() {
        this.set(ready() ? 1 : 0);
      },
    }),
    /** Exports a storage client's request counters (switchboard_cassandra_*, switchboard_kafka_*). */
    countStorageRequests: storageRequestCounters(r),
    connections: new Gauge({
      name: "switchboard_gateway_connections",
      help: "Open authenticated WebSocket connections.",
      registers: r,
    }),
    sockets: new Gauge({
      name: "switchboard_gateway_sockets",
      help: "Open WebSocket connections, authenticated or still authenticating: what gateway.connectionsMax limits.",
      registers: r,
    }),
    connectionsMax: new Gauge({
      name: "switchboard_gateway_connections_max",
      help: "The most WebSocket connections this gateway holds, authenticated or not (gateway.connectionsMax; compare switchboard_gateway_sockets); past it new ones get 503.",
      registers: r,
    }),
    /** Reports the embedded backend's disk space (switchboard_storage_*) for `dataDir`. */
    watchDiskSpace(dataDir: string, space: DiskSpaceState): void {
      disk = { dataDir, space };
    },
    storageAvailableBytes: new Gauge({
      name: "switchboard_storage_available_bytes",
      help: "Embedded backend: bytes free on the file system that holds the data dir, at the last check (every second; not reported when dataDirFreeBytesMin is 0).",
      labelNames: ["data_dir"],
      registers: r,
      collect() {
        this.reset();
        const available = disk?.space.availableBytes;
        if (disk && available !== undefined) this.set({ data_dir: disk.dataDir }, available);
      },
    }),
    storageFull: new Gauge({
      name: "switchboard_storage_full",
      help: "Embedded backend: 1 while new messages are refused (STORAGE_FULL) because the data dir's file system has fewer bytes free than dataDirFreeBytesMin, else 0 (not reported when dataDirFreeBytesMin is 0).",
      labelNames: ["data_dir"],
      registers: r,
      collect() {
        this.reset();
        if (disk) this.set({ data_dir: disk.dataDir }, disk.space.full ? 1 : 0);
      },
    }),
    /** Sets what switchboard_gateway_routing_records_behind reports (the gateway's count at scrape time). */
    countRoutingRecordsBehind(count: () => number): void {
      recordsBehind = count;
    },
    routingRecordsBehind: new Gauge({
      name: "switchboard_gateway_routing_records_behind",
      help: "Sessions whose record in the routing table is more than 2 s behind (the table unreachable: Kafka on the distributed backend): welcomed without being in it (they sync and read, but get no live events until it is written; then they catch up from the inbox), or closed and not yet removed from it (routers count them connected). Both are retried with backoff until written.",
      registers: r,
      collect() {
        this.set(recordsBehind());
      },
    }),
    connectsTotal: new Counter({
      name: "switchboard_gateway_connects_total",
      help: "Connection attempts by result.",
      labelNames: ["result"],
      registers: r,
    }),
    framesTotal: new Counter({
      name: "switchboard_gateway_frames_total",
      help: "Client frames received by kind.",
      labelNames: ["kind"],
      registers: r,
    }),
    errorsTotal: new Counter({
      name: "switchboard_gateway_errors_total",
      help: "Error replies by reason, code (gRPC-style: INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED and UNKNOWN are the platform's failures, and so is reason STORAGE_FULL, a RESOURCE_EXHAUSTED; the others are the client's) and request (the frame's kind, e.g. send; none when the frame was not a request).",
      labelNames: ["reason", "code", "request"],
      registers: r,
    }),
    closesTotal: new Counter({
      name: "switchboard_gateway_closes_total",
      help: "Connections closed by the server, by close code: the codes of docs/protocol.md §7, 1009/1007/1002 for a frame the WebSocket layer refused (too large, not UTF-8, not RFC 6455), and 1006 for a connection dropped without a close frame after it answered no ping (a dead peer, or a client that stopped reading).",
      labelNames: ["code"],
      registers: r,
    }),
    messagesTotal: new Counter({
      name: "switchboard_messages_appended_total",
      help: "Messages made durable (acked), sent over the WebSocket or the server API.",
      registers: r,
    }),
    appendSeconds: new Histogram({
      name: "switchboard_message_append_seconds",
      help: "Server-side send→ack: time from a valid send frame (or server API send) to its ack (the message durable and sequenced).",
      buckets: LATENCY_BUCKETS,
      registers: r,
    }),
    deliverySeconds: new Histogram({
      name: "switchboard_message_delivery_seconds",
      help: "Server-side send→deliver: time from a message's acceptance (the clock of the gateway that accepted it) to its frame being written to a live recipient's connection on this gateway, per connection (catch-up and sync reads are not counted).",
      buckets: LATENCY_BUCKETS,
      registers: r,
    }),
    deliveriesTotal: new Counter({
      name: "switchboard_router_deliveries_total",
      help: "Message events handed to gateway sessions.",
      registers: r,
    }),
    inboxEntriesTotal: new Counter({
      name: "switchboard_router_inbox_entries_total",
      help: "Inbox entries of the messages routed: one per member of a push conversation, none for a pull conversation (a large group), whose messages are stored once.",
      registers: r,
    }),
    routerBatchSeconds: new Histogram({
      name: "switchboard_router_batch_seconds",
      help: "Time to route one consumed batch: the inbox write and the fan-out on the embedded backend; the fan-out only on the distributed one, whose inbox owner writes the inbox.",
      buckets: LATENCY_BUCKETS,
      registers: r,
    }),
    gatewayStreams: new Gauge({
      name: "switchboard_router_gateway_streams",
      help: "Deliver streams this router holds open to gateways.",
      registers: r,
    }),
    gatewayStreamQueueBytes: new Gauge({
      name: "switchboard_router_gateway_stream_queue_bytes",
      help: "Bytes queued on this router's Deliver streams, not yet taken by gRPC (all gateways).",
      registers: r,
    }),
    deliveriesDroppedTotal: new Counter({
      name: "switchboard_router_deliveries_dropped_total",
      help: "Deliver events not handed to a gateway, by reason (queue_full: the stream's byte bound; unreachable: the gateway's stream is down; audience_unavailable: a pull conversation's members could not be read). Message events stay in the inbox or the conversation: clients recover them by gap catch-up, sync or history.",
      labelNames: ["reason"],
      registers: r,
    }),
    notificationsDroppedTotal: new Counter({
      name: "switchboard_router_notifications_dropped_total",
      help: "Notifications of offline recipients the router could not hand to push, by reason: failed (push refused it, or failed it again at every retry), retries_full (too many were waiting to be retried), closed (the router closed while it waited to be retried).",
      labelNames: ["reason"],
      registers: r,
    }),
    relaysExpiredTotal: new Counter({
      name: "switchboard_router_relays_expired_total",
      help: "Relayed events (typing) that reached the router after their expiry, which the caller had already answered with an error: not relayed.",
      registers: r,
    }),
    eventRelaysDroppedTotal: new Counter({
      name: "switchboard_event_relays_dropped_total",
      help: "Receipt and group-change events that could not be relayed to members' devices, by event (receipt, conversation) and reason: failed (refused, or failed at every retry for about 30 s: every router down), retries_full (too many were waiting to be retried), closed (the process closed while it waited). The change itself is stored: clients see it in listReceipts and listConversations.",
      labelNames: ["event", "reason"],
      registers: r,
    }),
    gatewayStreamFailuresTotal: new Counter({
      name: "switchboard_router_gateway_stream_failures_total",
      help: "Deliver streams to gateways that ended with an error (gateway gone, restarting or unreachable).",
      registers: r,
    }),
    pushNotifications: new Counter({
      name: "switchboard_push_notifications_total",
      help: "Push deliveries (notification × device) by provider (apns, fcm, webpush, webhook; none for a collapsed notification) and result: sent, retried (one per retry), pruned (dead token removed), failed (permanent, or retries exhausted), unconfigured (no credentials for the provider), dropped (pendingMax reached), abandoned (process closed while waiting to retry; a stored job resumes in the next process), recovered (resumed from the job store at start), collapsed (held for a burst's summary), summarized (a burst's summary sent), muted (the user muted the conversation), do_not_disturb (the user's do-not-disturb window was on), online (a burst's summary not sent: the user came online since), replayed (a dead letter sent again through the server API), duplicate (a notification the job store already took for that device: a message handled again after a crash), busy (refused: too many notifications waiting to be decided; the router asks again).",
      labelNames: ["provider", "result"],
      registers: r,
    }),
    invariantViolations: new Counter({
      name: "switchboard_invariant_violations_total",
      help: "Assertions that failed in production; alert on any.",
      registers: r,
    }),
    presence: presenceMetrics(r),
    grpc: grpcMetrics(r),
  };
  // Built for every role (the code that updates them is shared), exported only where they mean
  // something.
  if (role !== "all")
    for (const [name, roles] of Object.entries(EXPORTED_BY))
      if (!roles.includes(role)) registry.removeSingleMetric(name);
  return metrics;
}

/** gRPC's method labels, in the grpc-ecosystem order (grpc_type: unary, server_stream, bidi_stream). */
const GRPC_LABELS = ["grpc_type", "grpc_service", "grpc_method"] as const;

/**
 * Per-method gRPC metrics under the names of the grpc-ecosystem Prometheus interceptors
 * (go-grpc-middleware's providers/prometheus, java-grpc-prometheus, py-grpc-prometheus), so that the
 * dashboards and alerts written for those work unchanged. grpc_code is the status name as those
 * spell it (OK, Canceled, InvalidArgument, DeadlineExceeded, ...).
 */
function grpcMetrics(r: Registry[]) {
  return {
    serverStarted: new Counter({
      name: "grpc_server_started_total",
      help: "gRPC calls this process's gRPC server started, by method.",
      labelNames: GRPC_LABELS,
      registers: r,
    }),
    serverHandled: new Counter({
      name: "grpc_server_handled_total",
      help: "gRPC calls this process's gRPC server completed, by method and status code (grpc_code: OK, Canceled, DeadlineExceeded, ...).",
      labelNames: [...GRPC_LABELS, "grpc_code"],
      registers: r,
    }),
    serverHandlingSeconds: new Histogram({
      name: "grpc_server_handling_seconds",
      help: "Time from a gRPC call's start to its status on this process's server, by method (for streams: the stream's lifetime).",
      labelNames: GRPC_LABELS,
      buckets: LATENCY_BUCKETS,
      registers: r,
    }),
    serverMsgReceived: new Counter({
      name: "grpc_server_msg_received_total",
      help: "Messages this process's gRPC server received, by method (one per unary call; each message of a stream).",
      labelNames: GRPC_LABELS,
      registers: r,
    }),
    serverMsgSent: new Counter({
      name: "grpc_server_msg_sent_total",
      help: "Messages this process's gRPC server sent, by method (one per successful unary call; each message of a stream).",
      labelNames: GRPC_LABELS,
      registers: r,
    }),
    clientStarted: new Counter({
      name: "grpc_client_started_total",
      help: "gRPC calls this process started to other processes, by method.",
      labelNames: GRPC_LABELS,
      registers: r,
    }),
    clientHandled: new Counter({
      name: "grpc_client_handled_total",
      help: "gRPC calls this process made to other processes that completed, by method and status code.",
      labelNames: [...GRPC_LABELS, "grpc_code"],
      registers: r,
    }),
    clientHandlingSeconds: new Histogram({
      name: "grpc_client_handling_seconds",
      help: "Time from a gRPC call's start to its status as this process's client saw it, by method (for streams: the stream's lifetime).",
      labelNames: GRPC_LABELS,
      buckets: LATENCY_BUCKETS,
      registers: r,
    }),
  };
}

export type GrpcMetrics = ReturnType<typeof grpcMetrics>;

export type Metrics = ReturnType<typeof createMetrics>;

/** prom-client's default process and Node.js metrics, documented by their project, not row by row. */
const DEFAULT_METRIC = /^(process|nodejs)_/;

/**
 * The metrics reference in the README: a Markdown table of every metric in `registries` (type, labels,
 * help), prom-client's defaults summed up in one row. `npm run docs` writes it; a test keeps it true.
 */
export function metricsDocs(registries: Registry[]): string {
  const rows = ["| Metric | Type | Labels | Meaning |", "|---|---|---|---|"];
  let defaults = false;
  for (const registry of registries)
    for (const m of registry.getMetricsAsArray() as unknown as Array<{
      name: string;
      help: string;
      type: string;
      labelNames: string[];
    }>) {
      if (DEFAULT_METRIC.test(m.name)) {
        defaults = true;
        continue;
      }
      const labels = m.labelNames.map((l) => `\`${l}\``).join(", ");
      rows.push(`| \`${m.name}\` | ${m.type} | ${labels} | ${m.help.replaceAll("|", "\\|")} |`);
    }
  if (defaults)
    rows.push(
      "| `process_*`, `nodejs_*` | | | The standard process and Node.js metrics of prom-client (CPU, memory, open files, event-loop lag, GC, heap), under their usual names. |",
    );
  return rows.join("\n");
}
