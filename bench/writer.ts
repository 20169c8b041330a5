/**
 * The Cassandra batch writer on its own: `CassandraMessageStore.write` (internal/backends/cassandra/
 * messages.ts, the store the sequencer writes every sequenced message through) driven directly, as
 * fast as its bound allows, on the run's keyspace.
 *
 * The shape follows the sequencer: each write() call carries the next `rowsPerCall` seqs of one
 * conversation (the sequencer writes one conversation's share of a polled batch per call), over many
 * conversations, with more callers than the store's in-flight bound (`inFlightMax`, 64 by default, as
 * in the server), so the bound, not the caller, decides the rate. One call is one request: a single
 * INSERT, or an unlogged single-partition batch (cut at 50 rows), plus a bucket marker INSERT before
 * the first rows of every 1,000-seq bucket. rows/s counts rows whose write() resolved (acknowledged by
 * Cassandra at the configured consistency) within the measured window; a sample of conversations is
 * read back afterwards (lastSeq) to check that the rows are there.
 *
 * For comparison it also drives the sequencer's per-conversation state, `CassandraSequencerStore.record`
 * (one plain single-partition write per call: the head plus one dedupe row per entry, ADR 0002), the
 * same way: `entriesPerAssign` new seqs of one conversation per call, each conversation owned by one
 * caller.
 * Before each shape it waits (bounded) until the machine is quiet, so a previous phase's flushes and
 * compactions are not counted against the writer.
 */
import { type CassandraStores, openCassandraStores } from "../internal/backends/cassandra/index.js";
import type { StoredMessage } from "../internal/backends/types.js";
import { type LatencySummary, newHistogram, recordMs, summarize } from "./hist.js";
import { contactPoints, datacenter, type InfraCpu, type InfraEnv } from "./infra.js";
import { makeBody } from "./loadgen.js";
import { machineBusySeconds } from "./server.js";

export interface WriterOptions {
  env: InfraEnv;
  keyspace: string;
  /** Rows per write() call, one measured shape each (e.g. 1, 10, 50). */
  rowsPerCall: number[];
  conversations: number;
  /** Concurrent callers (more than the store's in-flight bound, so that bound is what limits). */
  callers: number;
  /** The store's in-flight bound (the server's default is 64). */
  inFlightMax: number;
  /** Entries per fence call (assign), one measured shape each (e.g. 1, 10); empty: no fence shapes. */
  entriesPerAssign: number[];
  /** Concurrent fence callers (each owns conversations of its own). */
  fenceCallers: number;
  warmupMs: number;
  measureMs: number;
  bodyBytes: number;
  infra: InfraCpu;
  /** Wait before each shape until all other processes use less than this many cores (max quietWaitMs). */
  quietThreshold: number;
  quietWaitMs: number;
  log: (s: string) => void;
}

export interface WriterShapeResult {
  rows_per_call: number;
  conversations: number;
  callers: number;
  in_flight_max: number;
  measured_seconds: number;
  rows: number;
  calls: number;
  rows_per_second: number;
  calls_per_second: number;
  /** Latency of one write() call, from the moment the caller issued it (queueing in the bound included). */
  call_latency: LatencySummary;
  errors: number;
  error_sample: string | null;
  cassandra_cpu_cores: number;
  kafka_cpu_cores: number;
  /** This process (the driver and the store's code). */
  client_cpu_cores: number;
  other_cpu_cores: number;
  cassandra_cpu_us_per_row: number | null;
  /** Rows read back (lastSeq of sampled conversations) match what was acknowledged. */
  verified: boolean;
}

export interface FenceShapeResult {
  entries_per_assign: number;
  conversations: number;
  callers: number;
  measured_seconds: number;
  assigns: number;
  assigns_per_second: number;
  entries_per_second: number;
  assign_latency: LatencySummary;
  not_applied: number;
  errors: number;
  error_sample: string | null;
  cassandra_cpu_cores: number;
  client_cpu_cores: number;
  other_cpu_cores: number;
  cassandra_cpu_us_per_assign: number | null;
}

export interface WriterResult {
  shapes: WriterShapeResult[];
  fence: FenceShapeResult[];
  /** The highest rows/s over the shapes (with its rows per call). */
  best: { rows_per_call: number; rows_per_second: number } | null;
}

const r2 = (x: number) => Math.round(x * 100) / 100;

export async function runWriter(o: WriterOptions): Promise<WriterResult> {
  const stores = await openCassandraStores({
    contactPoints: contactPoints(o.env),
    localDataCenter: datacenter(o.env),
    keyspace: o.keyspace,
    inFlightMax: o.inFlightMax,
  });
  try {
    const shapes: WriterShapeResult[] = [];
    for (const rowsPerCall of o.rowsPerCall) {
      await waitQuiet(o);
      const r = await runShape(stores, o, rowsPerCall);
      o.log(
        `  writer ${rowsPerCall} rows/call: ${r.rows_per_second} rows/s (${r.calls_per_second} calls/s, call p50 ${r.call_latency.p50_ms} p99 ${r.call_latency.p99_ms} ms), cassandra ${r.cassandra_cpu_cores} cores, client ${r.client_cpu_cores}, other ${r.other_cpu_cores}${r.errors ? `, ${r.errors} errors: ${r.error_sample}` : ""}${r.verified ? "" : ", READ-BACK MISMATCH"}`,
      );
      shapes.push(r);
    }
    const fence: FenceShapeResult[] = [];
    for (const entries of o.entriesPerAssign) {
      await waitQuiet(o);
      const r = await runFence(stores, o, entries);
      o.log(
        `  fence ${entries} entries/assign: ${r.assigns_per_second} assigns/s = ${r.entries_per_second} seqs/s (assign p50 ${r.assign_latency.p50_ms} p99 ${r.assign_latency.p99_ms} ms), cassandra ${r.cassandra_cpu_cores} cores = ${r.cassandra_cpu_us_per_assign} µs per assign, client ${r.client_cpu_cores}, other ${r.other_cpu_cores}${r.errors || r.not_applied ? `, ${r.errors} errors, ${r.not_applied} not applied: ${r.error_sample}` : ""}`,
      );
      fence.push(r);
    }
    const ok = shapes.filter((s) => s.errors === 0 && s.verified);
    const best = ok.reduce<WriterShapeResult | undefined>(
      (b, s) => (!b || s.rows_per_second > b.rows_per_second ? s : b),
      undefined,
    );
    return {
      shapes,
      fence,
      best: best ? { rows_per_call: best.rows_per_call, rows_per_second: best.rows_per_second } : null,
    };
  } finally {
    await stores.close();
  }
}

async function runShape(
  stores: CassandraStores,
  o: WriterOptions,
  rowsPerCall: number,
): Promise<WriterShapeResult> {
  const body = makeBody(o.bodyBytes);
  const convs = Array.from({ length: o.conversations }, (_, i) => `bench-writer-${rowsPerCall}-${i}`);
  const next = new Array<number>(o.conversations).fill(0); // last seq handed out per conversation
  const acked = new Array<number>(o.conversations).fill(0); // rows acknowledged per conversation
  const dirty = new Array<boolean>(o.conversations).fill(false);
  let turn = 0;
  let idSeq = 0;
  const hist = newHistogram();
  const w: Window = { measuring: false, stopping: false };
  let rows = 0;
  let calls = 0;
  let errors = 0;
  let errorSample: string | null = null;
  const now = Date.now();

  const caller = async () => {
    while (!w.stopping) {
      const c = turn++ % o.conversations;
      const first = next[c]! + 1;
      next[c] = next[c]! + rowsPerCall;
      const batch: StoredMessage[] = [];
      for (let s = first; s < first + rowsPerCall; s++) {
        const id = ++idSeq;
        batch.push({
          conversationId: convs[c]!,
          seq: s,
          messageId: String(1_000_000_000_000 + id),
          sender: `w${c}`,
          clientMsgId: `c${id}`,
          body,
          createdAtMs: now,
        });
      }
      const t = performance.now();
      try {
        await stores.messages.write(batch);
        acked[c] = acked[c]! + rowsPerCall;
        // Throughput: rows whose write completed within the window, whenever it was issued.
        if (w.measuring) {
          recordMs(hist, performance.now() - t);
          rows += rowsPerCall;
          calls++;
        }
      } catch (err) {
        errors++;
        errorSample ??= err instanceof Error ? err.message : String(err);
        dirty[c] = true; // a failed call leaves a hole: the read-back skips this conversation
        if (errors > 100) w.stopping = true;
      }
    }
  };

  const { secs, client, cassandraSeconds, kafka, other } = await measureWindow(
    o,
    w,
    Array.from({ length: o.callers }, caller),
  );
  const cass = cassandraSeconds / secs;

  // Read back a sample: the newest stored seq of a conversation is what was acknowledged for it.
  let verified = true;
  const sample = [0, Math.floor(o.conversations / 2), o.conversations - 1];
  for (const c of sample) {
    if (dirty[c] || acked[c] === 0) continue;
    const last = await stores.messages.lastSeq(convs[c]!);
    if (last !== acked[c]) {
      verified = false;
      o.log(`  writer read-back: ${convs[c]} has last seq ${last}, ${acked[c]} rows were acknowledged`);
    }
  }
  return {
    rows_per_call: rowsPerCall,
    conversations: o.conversations,
    callers: o.callers,
    in_flight_max: o.inFlightMax,
    measured_seconds: r2(secs),
    rows,
    calls,
    rows_per_second: Math.round(rows / secs),
    calls_per_second: Math.round(calls / secs),
    call_latency: summarize(hist),
    errors,
    error_sample: errorSample,
    cassandra_cpu_cores: r2(cass),
    kafka_cpu_cores: r2(kafka),
    client_cpu_cores: r2(client),
    other_cpu_cores: r2(other),
    cassandra_cpu_us_per_row: rows > 0 ? Math.round((cassandraSeconds * 1e6) / rows) : null,
    verified,
  };
}

/** Waits (at most quietWaitMs) until every process but this one uses less than quietThreshold cores. */
async function waitQuiet(o: WriterOptions): Promise<void> {
  const deadline = performance.now() + o.quietWaitMs;
  for (;;) {
    const m0 = machineBusySeconds();
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, 1000));
    const c = process.cpuUsage(c0);
    const busy = (machineBusySeconds() - m0 - (c.user + c.system) / 1e6) / ((performance.now() - t0) / 1000);
    if (busy < o.quietThreshold) return;
    if (performance.now() >= deadline) {
      o.log(`    machine still busy (${busy.toFixed(2)} cores besides this process); measuring anyway`);
      return;
    }
  }
}

async function runFence(
  stores: CassandraStores,
  o: WriterOptions,
  entries: number,
): Promise<FenceShapeResult> {
  const callers = o.fenceCallers;
  const perCaller = Math.max(1, Math.floor(o.conversations / callers));
  const conversations = perCaller * callers;
  const hist = newHistogram();
  const w: Window = { measuring: false, stopping: false };
  let assigns = 0;
  const notApplied = 0;
  let errors = 0;
  let errorSample: string | null = null;
  let idSeq = 0;

  const caller = async (index: number) => {
    const convs = Array.from({ length: perCaller }, (_, i) => `bench-fence-${entries}-${index}-${i}`);
    const heads = new Array<number>(perCaller).fill(0);
    for (let turn = 0; !w.stopping; turn++) {
      const i = turn % perCaller;
      const head = heads[i]!;
      const batch = Array.from({ length: entries }, (_, k) => {
        const id = ++idSeq;
        return {
          dedupeKey: `w${w}\u0000c${id}`,
          seq: head + k + 1,
          messageId: String(2_000_000_000_000 + id),
        };
      });
      const t = performance.now();
      try {
        // One owner per conversation (no fence to lose): the head and dedupe rows as one plain write.
        await stores.sequencer.record(
          [{ conversationId: convs[i]!, head: head + entries, assigned: batch }],
          BigInt(Date.now()) * 1000n,
          3600,
        );
        heads[i] = head + entries;
        if (w.measuring) {
          recordMs(hist, performance.now() - t);
          assigns++;
        }
      } catch (err) {
        errors++;
        errorSample ??= err instanceof Error ? err.message : String(err);
        if (errors > 100) w.stopping = true;
      }
    }
  };

  const {
    secs,
    client,
    cassandraSeconds: cassSeconds,
    other,
  } = await measureWindow(
    o,
    w,
    Array.from({ length: callers }, (_, i) => caller(i)),
  );
  return {
    entries_per_assign: entries,
    conversations,
    callers,
    measured_seconds: r2(secs),
    assigns,
    assigns_per_second: Math.round(assigns / secs),
    entries_per_second: Math.round((assigns * entries) / secs),
    assign_latency: summarize(hist),
    not_applied: notApplied,
    errors,
    error_sample: errorSample,
    cassandra_cpu_cores: r2(cassSeconds / secs),
    client_cpu_cores: r2(client),
    other_cpu_cores: r2(other),
    cassandra_cpu_us_per_assign: assigns > 0 ? Math.round((cassSeconds * 1e6) / assigns) : null,
  };
}

/** Flags shared with a phase's callers: record while `measuring`, return once `stopping`. */
interface Window {
  measuring: boolean;
  stopping: boolean;
}

/**
 * Lets the callers warm up, measures for `measureMs` (this process's, the JVMs' and the machine's
 * CPU), then stops the callers and waits for them.
 */
async function measureWindow(
  o: Pick<WriterOptions, "warmupMs" | "measureMs" | "infra">,
  w: Window,
  running: Array<Promise<void>>,
): Promise<{ secs: number; client: number; cassandraSeconds: number; kafka: number; other: number }> {
  await new Promise((r) => setTimeout(r, o.warmupMs));
  const cpu0 = process.cpuUsage();
  const infra0 = o.infra.seconds();
  const machine0 = machineBusySeconds();
  const t0 = performance.now();
  w.measuring = true;
  await new Promise((r) => setTimeout(r, o.measureMs));
  w.measuring = false;
  const t1 = performance.now();
  const cpu = process.cpuUsage(cpu0);
  const infra1 = o.infra.seconds();
  const machine1 = machineBusySeconds();
  w.stopping = true;
  await Promise.all(running);
  const secs = (t1 - t0) / 1000;
  const client = (cpu.user + cpu.system) / 1e6 / secs;
  const cassandraSeconds = (infra1.cassandra ?? 0) - (infra0.cassandra ?? 0);
  const kafka = ((infra1.kafka ?? 0) - (infra0.kafka ?? 0)) / secs;
  const other = Math.max(0, (machine1 - machine0) / secs - client - cassandraSeconds / secs - kafka);
  return { secs, client, cassandraSeconds, kafka, other };
}
