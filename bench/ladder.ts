/**
 * The step ladder against a running system under test: connect the pairs, warm up, then each rate
 * in turn (a step that failed under foreign load is retried), judging every step (verdict) and
 * stopping at the first failure unless told otherwise. Which system it is (one process or a
 * cluster, and on which backend) is the SystemUnderTest's business.
 */
import { join } from "node:path";
import { PairLoad, type StepResult } from "./loadgen.js";
import type { LadderSettings } from "./options.js";
import { PerfRecording } from "./perf.js";
import { f, roleOf } from "./report.js";
import { machineBusySeconds } from "./server.js";
import { type SystemUnderTest, totalCpuSeconds } from "./sut.js";

export interface Verdict {
  ok10: boolean;
  ok50: boolean;
  why: string;
}

/** The server's own view of a step (warm-up included), from its /metrics. */
export interface ServerStages {
  /** Mean time from a valid send to its durable append (the part of the ack spent in storage). */
  append_mean_ms: number | null;
  /** Router batches (one inbox commit each), their mean duration and mean size. */
  router_batches: number;
  router_batch_mean_ms: number | null;
  messages_per_router_batch: number | null;
  /**
   * The server's garbage collection in the step (prom-client's nodejs_gc_duration_seconds, summed
   * over the processes): mark-compacts, and the milliseconds of all GC pauses. Old-generation
   * garbage shows as major GCs, and their pauses as the latency tail.
   */
  major_gcs: number;
  gc_pause_ms: number;
}

/** "n/a": not measured (a JVM that was not found, or a backend without it). */
export type NA = "n/a";

/**
 * Where a step's time goes, per message. Requests are the step's deltas of the processes' /metrics
 * counters (the whole step: warm-up, measured window and drain) over the messages sent in the step;
 * CPU is over the measured window, per message sent in it (as server_cpu_us_per_msg).
 */
export interface StepCosts {
  /** Messages sent in the step, warm-up included: what the request counts are divided by. */
  messages: number;
  /** Cassandra client requests per message, by kind (null: the backend has no Cassandra). */
  cassandra: { reads: number; writes: number; batches: number; lwts: number; total: number } | null;
  /**
   * Partitions the Cassandra node read and wrote per message (its own local counts, by table; a
   * batch request writes many): null without Cassandra or when the node could not be asked.
   */
  cassandra_node: NodeCounts | null;
  /** Kafka produce requests and produced records per message (null: the backend has no Kafka). */
  kafka: { produce_requests: number; produced_records: number } | null;
  /** CPU µs per message: each Switchboard process, the Kafka and Cassandra JVMs, and all of them. */
  cpu_us: {
    by_process: Record<string, number>;
    kafka: number | NA;
    cassandra: number | NA;
    total: number | null;
  };
}

export interface NodeCounts {
  reads: number;
  writes: number;
  /** Per table with any: reads and writes per message. */
  by_table: Record<string, { reads: number; writes: number }>;
}

export type LadderResult = StepResult & {
  server_stages?: ServerStages;
  per_msg?: StepCosts;
  /** A cluster: each role's cores (the sum over its processes). */
  server_cpu_cores_by_role?: Record<string, number>;
};

export interface LadderStep {
  r: LadderResult;
  v: Verdict;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Waits (up to maxWaitMs) until processes other than the system under test (its servers and its
 * Kafka/Cassandra) and this generator use less than `threshold` cores over a 1 s window; returns the
 * last foreign load seen. Other work on a 2-core box shows up directly in p99, so every step records
 * it (other_cpu_cores) either way.
 */
async function waitQuiet(
  sut: SystemUnderTest,
  threshold: number,
  maxWaitMs: number,
  log: (s: string) => void,
): Promise<number> {
  const deadline = performance.now() + maxWaitMs;
  let announced = false;
  for (;;) {
    const m0 = machineBusySeconds();
    const s0 = totalCpuSeconds(sut);
    const g0 = process.cpuUsage();
    const t0 = performance.now();
    await sleep(1000);
    const dt = (performance.now() - t0) / 1000;
    const g = process.cpuUsage(g0);
    const own = totalCpuSeconds(sut) - s0 + (g.user + g.system) / 1e6;
    const foreign = (machineBusySeconds() - m0 - own) / dt;
    if (foreign < threshold || performance.now() >= deadline) {
      if (announced || foreign >= threshold)
        log(
          `    foreign load ${foreign.toFixed(2)} cores${foreign >= threshold ? " (gave up waiting)" : ""}`,
        );
      return foreign;
    }
    if (!announced)
      log(`    waiting for foreign load (${foreign.toFixed(2)} cores) to drop below ${threshold}`);
    announced = true;
  }
}

const CONTENDED_CORES = 0.25;

function verdict(r: StepResult, extraClosed: number): Verdict {
  const problems: string[] = [];
  if (r.lost > 0) problems.push(`${r.lost} lost`);
  if (r.errors > 0) problems.push(`${r.errors} errors`);
  if (r.duplicates > 0) problems.push(`${r.duplicates} dup`);
  if (r.aborted) problems.push("backlog abort");
  // More than a second of messages still undelivered when the schedule ended: the step was not held,
  // whatever its percentiles (they then depend on the step's length).
  else if (r.backlog_at_end > r.rate)
    problems.push(
      `backlog ${(r.backlog_at_end / r.rate).toFixed(1)} s, ${r.delivered_per_second}/s delivered`,
    );
  if (extraClosed > 0) problems.push(`${extraClosed} closed`);
  if (r.generator_bound) problems.push("GENERATOR-BOUND");
  const clean = problems.length === 0;
  const p99 = r.latency.p99_ms;
  const ok10 = clean && p99 <= 10;
  const ok50 = clean && p99 <= 50;
  const contended = (r.other_cpu_cores ?? 0) > CONTENDED_CORES ? " CONTENDED" : "";
  if (!clean) return { ok10, ok50, why: problems.join(", ") + contended };
  return { ok10, ok50, why: (ok10 ? "p99≤10" : ok50 ? "p99≤50" : "p99>50") + contended };
}

const MAJOR_GCS = 'nodejs_gc_duration_seconds_count{kind="major"}';
const GC_SECONDS = "nodejs_gc_duration_seconds_sum";
const STAGE_METRICS = [
  "switchboard_message_append_seconds_sum",
  "switchboard_message_append_seconds_count",
  "switchboard_router_batch_seconds_sum",
  "switchboard_router_batch_seconds_count",
  MAJOR_GCS,
  GC_SECONDS,
];

const CASSANDRA_KINDS = { reads: "read", writes: "write", batches: "batch", lwts: "lwt" } as const;
const cassandraSeries = (kind: string) => `switchboard_cassandra_requests_total{kind="${kind}"}`;
const KAFKA_PRODUCE_REQUESTS = "switchboard_kafka_produce_requests_total";
const KAFKA_PRODUCED_RECORDS = "switchboard_kafka_produced_records_total";
/** Everything a step scrapes from the system's /metrics, before and after. */
const STEP_METRICS = [
  ...STAGE_METRICS,
  ...Object.values(CASSANDRA_KINDS).map(cassandraSeries),
  KAFKA_PRODUCE_REQUESTS,
  KAFKA_PRODUCED_RECORDS,
];

const r2 = (x: number) => Math.round(x * 100) / 100;

/** Per message of the step: the node's local reads and writes, in all and by table. */
export function nodeCountsPerMessage(
  messages: number,
  a: Record<string, number> | undefined,
  b: Record<string, number> | undefined,
): NodeCounts | null {
  if (!a || !b || messages === 0) return null;
  const byTable: NodeCounts["by_table"] = {};
  let reads = 0;
  let writes = 0;
  for (const [key, after] of Object.entries(b)) {
    const [kind, table] = key.split(":") as ["read" | "write", string];
    const delta = after - (a[key] ?? 0);
    if (delta <= 0) continue;
    const t = byTable[table] ?? { reads: 0, writes: 0 };
    byTable[table] = t;
    if (kind === "read") {
      t.reads = r2(delta / messages);
      reads += delta;
    } else {
      t.writes = r2(delta / messages);
      writes += delta;
    }
  }
  return { reads: r2(reads / messages), writes: r2(writes / messages), by_table: byTable };
}

function stepCosts(
  r: StepResult,
  onInfra: boolean,
  a: Record<string, number> | undefined,
  b: Record<string, number> | undefined,
  nodeBefore?: Record<string, number>,
  nodeAfter?: Record<string, number>,
): StepCosts {
  const n = r.step_sent;
  // A series missing on either side (no /metrics, or a server without the counter): not measured.
  const perMsg = (k: string): number | null =>
    a?.[k] === undefined || b?.[k] === undefined || n === 0 ? null : r2((b[k]! - a[k]!) / n);
  let cassandra: StepCosts["cassandra"] = null;
  const kinds = Object.entries(CASSANDRA_KINDS).map(([field, kind]) => [
    field,
    perMsg(cassandraSeries(kind)),
  ]);
  if (onInfra && kinds.every(([, v]) => v !== null)) {
    const c = Object.fromEntries(kinds) as { reads: number; writes: number; batches: number; lwts: number };
    cassandra = { ...c, total: r2(c.reads + c.writes + c.batches + c.lwts) };
  }
  const produces = perMsg(KAFKA_PRODUCE_REQUESTS);
  const records = perMsg(KAFKA_PRODUCED_RECORDS);
  const kafka =
    onInfra && produces !== null && records !== null
      ? { produce_requests: produces, produced_records: records }
      : null;
  const jvm = (name: string): number | NA => r.infra_cpu_us_per_msg?.[name] ?? "n/a";
  return {
    messages: n,
    cassandra,
    cassandra_node: onInfra ? nodeCountsPerMessage(n, nodeBefore, nodeAfter) : null,
    kafka,
    cpu_us: {
      by_process: r.server_cpu_us_per_msg_by_process ?? {},
      kafka: jvm("kafka"),
      cassandra: jvm("cassandra"),
      total: r.system_cpu_us_per_msg ?? r.server_cpu_us_per_msg,
    },
  };
}

function stageDelta(
  a: Record<string, number> | undefined,
  b: Record<string, number> | undefined,
): ServerStages {
  const d = (k: string) => (b?.[k] ?? 0) - (a?.[k] ?? 0);
  const r2 = (x: number) => Math.round(x * 100) / 100;
  const appends = d("switchboard_message_append_seconds_count");
  const batches = d("switchboard_router_batch_seconds_count");
  return {
    append_mean_ms: appends > 0 ? r2((1000 * d("switchboard_message_append_seconds_sum")) / appends) : null,
    router_batches: batches,
    router_batch_mean_ms:
      batches > 0 ? r2((1000 * d("switchboard_router_batch_seconds_sum")) / batches) : null,
    messages_per_router_batch: batches > 0 ? r2(appends / batches) : null,
    major_gcs: d(MAJOR_GCS),
    gc_pause_ms: Math.round(1000 * d(GC_SECONDS)),
  };
}

function byRole(byProcess: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, cores] of Object.entries(byProcess))
    out[roleOf(name)] = Math.round(((out[roleOf(name)] ?? 0) + cores) * 100) / 100;
  return out;
}

export interface LadderOptions extends LadderSettings {
  stopOnFail: boolean;
  /** Rates measured even after the ladder stopped (the headline rates). */
  alwaysRates?: number[];
  /** The Cassandra node's local read and write counts by table (CassandraNodeCounts), if on it. */
  nodeCounts?: () => Promise<Record<string, number> | undefined>;
  /** `perf record` the server (single process) during the step at this rate, into `perfDir`. */
  perfRate?: number;
  perfDir: string;
  log: (s: string) => void;
}

export async function runLadder(
  sut: SystemUnderTest,
  rates: number[],
  o: LadderOptions,
): Promise<{ steps: LadderStep[]; rssKb: Record<string, number>; perf?: PerfRecording }> {
  const log = o.log;
  log(sut.description);
  const load = new PairLoad({
    senderUrl: sut.senderUrl,
    receiverUrl: sut.receiverUrl,
    pairs: o.pairs,
    encoding: o.encoding,
    bodyBytes: o.bodyBytes,
    sendersLive: o.sendersLive,
    appendUserToUrl: sut.userInUrl,
    tokens: (users) => sut.tokens(users),
    protocol: sut.protocol,
  });
  const steps: LadderStep[] = [];
  let perf: PerfRecording | undefined;
  try {
    await load.connect();
    log(`  ${o.pairs} pairs connected; warm-up ${o.initialWarmupMs / 1000} s at ${o.initialWarmupRate}/s`);
    const warm = await load.runStep({
      rate: o.initialWarmupRate,
      warmupMs: 0,
      measureMs: o.initialWarmupMs,
      drainTimeoutMs: o.drainMs,
      drainMaxMs: o.drainMaxMs,
      backlogSecondsMax: 10,
    });
    log(`  warm-up: ${warm.delivered}/${warm.sent} delivered, p99 ${f(warm.latency.p99_ms)} ms`);
    let stopped = false;
    for (const rate of rates) {
      if (stopped && !o.alwaysRates?.includes(rate)) continue;
      let step: LadderStep | undefined;
      // A step that failed while other processes used the CPU is retried (up to `o.retries` times);
      // the attempt that saw the least foreign load is kept, whatever its latency.
      for (let attempt = 1; attempt <= 1 + o.retries; attempt++) {
        const closedBefore = load.closedUnexpectedly;
        await waitQuiet(sut, o.quietThreshold, o.quietWaitMs, log);
        if (rate === o.perfRate && !perf && sut.perfPid !== undefined) {
          perf = new PerfRecording(
            sut.perfPid,
            join(o.perfDir, `switchboard-bench-perf-${sut.perfPid}.data`),
          );
          perf.start(o.warmupMs, Math.max(1, Math.floor(o.stepMs / 1000)));
        }
        const m0 = await sut.metrics(STEP_METRICS);
        const n0 = await o.nodeCounts?.();
        const r: LadderResult = await load.runStep({
          rate,
          warmupMs: o.warmupMs,
          measureMs: o.stepMs,
          drainTimeoutMs: o.drainMs,
          drainMaxMs: o.drainMaxMs,
          // Past the ladder's failure a headline rate runs its whole schedule (bounded at 15 s of backlog).
          backlogSecondsMax: stopped ? 15 : 3,
          serverCpuSeconds: () => sut.serverCpuSeconds(),
          machineBusySeconds,
          ...(sut.infra ? { infraCpuSeconds: () => sut.infra!.seconds() } : {}),
        });
        const m1 = m0 && (await sut.metrics(STEP_METRICS));
        const n1 = n0 && (await o.nodeCounts?.());
        if (m0) r.server_stages = stageDelta(m0, m1);
        r.per_msg = stepCosts(r, sut.infra !== undefined, m0, m1, n0, n1);
        if (r.server_cpu_cores_by_process) r.server_cpu_cores_by_role = byRole(r.server_cpu_cores_by_process);
        const v = verdict(r, load.closedUnexpectedly - closedBefore);
        if (attempt > 1) v.why += ` (attempt ${attempt})`;
        if (stopped) v.why += " (after ladder stop)";
        if (!step || (r.other_cpu_cores ?? 0) < (step.r.other_cpu_cores ?? 0)) step = { r, v };
        log(`  ${String(rate).padStart(6)}/s:${progress(r)} → ${v.why}`);
        sut.checkRunning();
        if (v.ok10 || stopped || !v.why.includes("CONTENDED")) break;
      }
      if (step!.v.why.includes("attempt")) log(`    kept: ${step!.v.why}`);
      steps.push(step!);
      if (o.stopOnFail && !step!.v.ok50) stopped = true;
    }
    await perf?.finish();
    return { steps, rssKb: sut.rssKb(), ...(perf ? { perf } : {}) };
  } finally {
    await load.close();
  }
}

/** A step's progress line (after the rate). */
function progress(r: LadderResult): string {
  const st = r.server_stages;
  const stages = st
    ? ` [server: append ${f(st.append_mean_ms)} ms, router batch ${f(st.router_batch_mean_ms)} ms × ${st.router_batches} (${f(st.messages_per_router_batch, 1)} msgs), GC ${st.gc_pause_ms} ms paused, ${st.major_gcs} major]`
    : "";
  const roles = r.server_cpu_cores_by_role
    ? ` (${Object.entries(r.server_cpu_cores_by_role)
        .map(([n, c]) => `${n} ${f(c)}`)
        .join(", ")})`
    : "";
  const jvm = r.infra_cpu_cores
    ? `, ${Object.entries(r.infra_cpu_cores)
        .map(([n, c]) => `${n} ${f(c)}`)
        .join(", ")}`
    : "";
  const c = r.per_msg;
  const costs = c?.cassandra
    ? ` [per msg: cassandra ${f(c.cassandra.total)} (r ${f(c.cassandra.reads)} w ${f(c.cassandra.writes)} b ${f(c.cassandra.batches)} lwt ${f(c.cassandra.lwts)}), kafka ${f(c.kafka?.produce_requests)} produces ${f(c.kafka?.produced_records)} records; ${c.cpu_us.total ?? "-"} µs CPU]`
    : "";
  return `${stages}${costs} sent ${r.offered_rate}/s, p50 ${f(r.latency.p50_ms)} p99 ${f(r.latency.p99_ms)} p99.9 ${f(r.latency.p999_ms)} max ${f(r.latency.max_ms)} ms; ack p99 ${f(r.ack_latency.p99_ms)}; server ${f(r.server_cpu_cores)} cores${roles}${jvm}, gen ${f(r.generator_cpu_cores)}, other ${f(r.other_cpu_cores)}`;
}
