/**
 * What the benchmark's per-message costs are built from: the storage request counters every process
 * exports, the scrape that sums them by series, and finding a server's pid by its listening port.
 */
import { createServer } from "node:net";
import { describe, expect, it } from "vitest";
import { createMetrics, type StorageRequestSource } from "../internal/lib/metrics.js";
import { firstPort, pidListeningOn } from "./infra.js";
import { nodeCountsPerMessage } from "./ladder.js";
import { sumMetrics } from "./server.js";

const SERIES = [
  'switchboard_cassandra_requests_total{kind="read"}',
  'switchboard_cassandra_requests_total{kind="write"}',
  'switchboard_cassandra_requests_total{kind="batch"}',
  'switchboard_cassandra_requests_total{kind="lwt"}',
  "switchboard_cassandra_requests_total",
  "switchboard_kafka_produce_requests_total",
  "switchboard_kafka_produced_records_total",
];

type Timer = Parameters<StorageRequestSource["timeCassandra"]>[0];

function source(): Omit<StorageRequestSource, "cassandra"> & {
  cassandra: { reads: number; writes: number; batches: number; lwts: number; waiting: number };
  produces: number;
  records: number;
  lag: Array<{ group: string; partition: number; records: number }>;
  timers: Timer[];
  dedupe: { store: number; memory: number; trusted: number };
} {
  const s = {
    cassandra: { reads: 0, writes: 0, batches: 0, lwts: 0, waiting: 0 },
    produces: 0,
    records: 0,
    lag: [] as Array<{ group: string; partition: number; records: number }>,
    timers: [] as Timer[],
    dedupe: { store: 0, memory: 0, trusted: 0 },
    timeCassandra: (timer: Timer) => {
      s.timers.push(timer);
    },
    kafka: {
      produceRequests: () => s.produces,
      producedRecords: () => s.records,
      consumerLag: () => s.lag,
      dedupeChecks: () => s.dedupe,
      inboxOwnersInOneRoundTrip: () => [],
    },
  };
  return s;
}

describe("storage request counters on /metrics", () => {
  it("export every attached client's live counts as counters, by kind", async () => {
    const metrics = createMetrics();
    const page = async () => sumMetrics(await metrics.registry.metrics(), SERIES);
    // Before any backend is attached (embedded): zeros.
    expect(await page()).toMatchObject({
      switchboard_kafka_produce_requests_total: 0,
      switchboard_kafka_produced_records_total: 0,
    });
    const a = source();
    const b = source();
    metrics.countStorageRequests(a);
    metrics.countStorageRequests(b);
    a.cassandra.reads = 3;
    a.cassandra.lwts = 2;
    b.cassandra.writes = 5;
    b.cassandra.batches = 1;
    a.produces = 4;
    a.records = 10;
    b.records = 1;
    expect(await page()).toEqual({
      'switchboard_cassandra_requests_total{kind="read"}': 3,
      'switchboard_cassandra_requests_total{kind="write"}': 5,
      'switchboard_cassandra_requests_total{kind="batch"}': 1,
      'switchboard_cassandra_requests_total{kind="lwt"}': 2,
      switchboard_cassandra_requests_total: 11,
      switchboard_kafka_produce_requests_total: 4,
      switchboard_kafka_produced_records_total: 11,
    });
    a.cassandra.reads = 7;
    b.produces = 2;
    const text = await metrics.registry.metrics();
    expect(text).toContain("# TYPE switchboard_cassandra_requests_total counter");
    expect(text).toContain('switchboard_cassandra_requests_total{kind="read"} 7');
    expect(text).toMatch(/^switchboard_kafka_produce_requests_total 6$/m);
    // Scraping again without new requests changes nothing.
    const again = sumMetrics(text, SERIES);
    expect(await page()).toEqual(again);
    expect(again.switchboard_cassandra_requests_total).toBe(15);
  });

  it("export the Cassandra requests waiting for a place, summed over the clients, as a gauge", async () => {
    const metrics = createMetrics();
    const [a, b] = [source(), source()];
    metrics.countStorageRequests(a);
    metrics.countStorageRequests(b);
    const waiting = async () =>
      Number(/^switchboard_cassandra_requests_waiting (\d+)$/m.exec(await metrics.registry.metrics())?.[1]);
    expect(await waiting()).toBe(0);
    a.cassandra.waiting = 30;
    b.cassandra.waiting = 4;
    expect(await waiting()).toBe(34);
    a.cassandra.waiting = 0;
    expect(await waiting()).toBe(4);
  });

  it("export the sequencers' drafts by how their dedupe key was checked", async () => {
    const metrics = createMetrics();
    const a = source();
    const b = source();
    metrics.countStorageRequests(a);
    metrics.countStorageRequests(b);
    a.dedupe = { store: 3, memory: 1, trusted: 40 };
    b.dedupe = { store: 2, memory: 0, trusted: 0 };
    const checked = (text: string, how: string) =>
      Number(
        new RegExp(`^switchboard_sequencer_dedupe_checks_total\\{checked="${how}"\\} (\\d+)$`, "m").exec(
          text,
        )?.[1],
      );
    let text = await metrics.registry.metrics();
    expect(["store", "memory", "trusted"].map((how) => checked(text, how))).toEqual([5, 1, 40]);
    a.dedupe = { store: 4, memory: 1, trusted: 50 };
    text = await metrics.registry.metrics();
    expect(["store", "memory", "trusted"].map((how) => checked(text, how))).toEqual([6, 1, 50]);
  });
});

describe("Kafka lag and Cassandra latency on /metrics", () => {
  it("report each owned partition's lag as it stands, and time each request by kind and outcome", async () => {
    const metrics = createMetrics();
    const a = source();
    metrics.countStorageRequests(a);
    a.lag = [
      { group: "p.sequencer", partition: 0, records: 12 },
      { group: "p.inbox", partition: 3, records: 0 },
    ];
    let text = await metrics.registry.metrics();
    expect(text).toMatch(/^switchboard_kafka_consumer_lag_records\{group="p.sequencer",partition="0"\} 12$/m);
    expect(text).toMatch(/^switchboard_kafka_consumer_lag_records\{group="p.inbox",partition="3"\} 0$/m);
    // A partition no longer owned (a new generation) is no longer reported.
    a.lag = [{ group: "p.inbox", partition: 3, records: 5 }];
    text = await metrics.registry.metrics();
    expect(text).not.toContain('group="p.sequencer"');
    expect(text).toMatch(/^switchboard_kafka_consumer_lag_records\{group="p.inbox",partition="3"\} 5$/m);

    for (const timer of a.timers) {
      timer("read", 0.003, false);
      timer("read", 0.2, true);
    }
    text = await metrics.registry.metrics();
    expect(text).toMatch(
      /^switchboard_cassandra_request_duration_seconds_count\{kind="read",outcome="ok"\} 1$/m,
    );
    expect(text).toMatch(
      /^switchboard_cassandra_request_duration_seconds_bucket\{le="0.005",kind="read",outcome="ok"\} 1$/m,
    );
    expect(text).toMatch(
      /^switchboard_cassandra_request_duration_seconds_count\{kind="read",outcome="error"\} 1$/m,
    );
  });
});

describe("finding a server by its port", () => {
  it("finds this process listening on a port, and nothing on a closed one", async () => {
    const server = createServer();
    await new Promise<void>((res) => server.listen(0, "127.0.0.1", res));
    const port = (server.address() as { port: number }).port;
    try {
      expect(pidListeningOn(port)).toBe(process.pid);
    } finally {
      await new Promise((res) => server.close(res));
    }
    expect(pidListeningOn(port)).toBeUndefined();
  });

  it("reads the port of the first address of a list", () => {
    expect(firstPort("127.0.0.1:19042,127.0.0.2:19042", 9042)).toBe(19042);
    expect(firstPort("cassandra", 9042)).toBe(9042);
    expect(firstPort(undefined, 9092)).toBe(9092);
  });
});

describe("the Cassandra node's own counts per message", () => {
  it("divides each table's local reads and writes in the step by its messages, and sums them", () => {
    const before = { "write:inbox_by_user": 100, "write:inbox_heads": 100, "read:partition_owners": 7 };
    const after = {
      "write:inbox_by_user": 460,
      "write:inbox_heads": 460,
      "write:messages_by_conversation": 180,
      "read:partition_owners": 7,
      "read:conversation_sequencer": 190,
    };
    expect(nodeCountsPerMessage(200, before, after)).toEqual({
      reads: 0.95,
      writes: 4.5,
      by_table: {
        inbox_by_user: { reads: 0, writes: 1.8 },
        inbox_heads: { reads: 0, writes: 1.8 },
        messages_by_conversation: { reads: 0, writes: 0.9 },
        conversation_sequencer: { reads: 0.95, writes: 0 },
      },
    });
  });

  it("reports nothing when the node could not be asked before or after, or nothing was sent", () => {
    expect(nodeCountsPerMessage(200, undefined, { "write:x": 1 })).toBeNull();
    expect(nodeCountsPerMessage(200, { "write:x": 1 }, undefined)).toBeNull();
    expect(nodeCountsPerMessage(0, { "write:x": 1 }, { "write:x": 2 })).toBeNull();
  });
});
