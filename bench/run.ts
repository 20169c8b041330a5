/**
 * `npm run bench`: the platform's headline figures on this machine, on the embedded backend (default)
 * or, with `--backend distributed`, on real Kafka + Cassandra (test/infra, started or reused).
 *
 *   1. 1:1 send→deliver latency (and ack latency) at fixed open-loop rates, from the scheduled send
 *      time (no coordinated omission), HDR histograms; pairs of sender/receiver connections.
 *   2. The step ladder: the highest rate held with p99 ≤ 10 ms (G4) and with p99 ≤ 50 ms (G5),
 *      stopping at the first failure or when the generator cannot keep the schedule.
 *   3. RSS per idle authenticated connection (G1) on a fresh server.
 *   +  a bare-ws baseline (same wire shapes, no platform) at the headline rates: the day's floor.
 *
 * The server runs on core 0 and this generator on core 1 (taskset) when available (embedded only: in
 * distributed mode the Kafka and Cassandra JVMs share the same cores, so nothing is pinned unless
 * asked). Each server gets a fresh temporary data dir and is killed at the end, on error and on
 * SIGINT. The distributed mode also gets a fresh topic prefix and keyspace, dropped at the end, and
 * measures the Cassandra batch writer on its own (bench/writer.ts).
 * Options: --help. Every option can also be given as BENCH_<NAME> (e.g. BENCH_QUICK=1).
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { cpus, loadavg, setPriority, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { mintTokens } from "./client.js";
import { type IdleResult, runIdle } from "./idle.js";
import { dropRunState, ensureInfra, InfraCpu, type InfraEnv, type RunNames, runNames } from "./infra.js";
import { PairLoad, type StepResult } from "./loadgen.js";
import { hasPerf, PerfRecording } from "./perf.js";
import { formatProfile, type ProfileSummary, summarizeProfile } from "./profile.js";
import {
  fsyncProbe,
  hasTaskset,
  machineBusySeconds,
  pinSelf,
  realtimeSelf,
  ServerProcess,
} from "./server.js";
import { type Encoding, selfCheck } from "./wire.js";
import { runWriter, type WriterResult } from "./writer.js";

const OPTIONS = {
  backend: {
    type: "string",
    doc: "embedded (default) or distributed: real Kafka + Cassandra from test/infra/up.sh (started or reused, left running), a fresh topic prefix and keyspace per run (dropped at the end unless --keep-data), plus the Cassandra writer phase (baseline and idle are embedded-only)",
  },
  quick: { type: "boolean", doc: "short run (~1 min): 3 s steps, 2,000 idle connections" },
  rates: {
    type: "string",
    doc: "ladder rates, msgs/s (default 500,1000,2500,5000,7500,10000,15000,20000,25000,30000,40000,50000; distributed 25,50,100,250,500,1000,2500,5000,7500,10000); 1000 and 5000 are measured even after the ladder stops",
  },
  "step-seconds": { type: "string", doc: "measured seconds per step (default 10; quick 3)" },
  "warmup-seconds": {
    type: "string",
    doc: "unmeasured seconds at each step's rate before measuring (default 2; quick 1)",
  },
  "initial-warmup-seconds": {
    type: "string",
    doc: "warm-up before the ladder (default 5; distributed 10; quick 2)",
  },
  "initial-warmup-rate": {
    type: "string",
    doc: "rate of the warm-up before the ladder, msgs/s (default 1000; distributed 50, below its knee)",
  },
  "drain-seconds": {
    type: "string",
    doc: "after a step, stop waiting for stragglers after this long without progress (default 3); missing = lost",
  },
  "drain-max-seconds": {
    type: "string",
    doc: "after a step, stop waiting for stragglers after this long in all (default 30; distributed 180, so a backlog is measured out, not counted as lost)",
  },
  pairs: { type: "string", doc: "sender→receiver connection pairs (default 100)" },
  "body-bytes": { type: "string", doc: "message body size (default 100)" },
  encoding: { type: "string", doc: "binary (protobuf, default) or json" },
  "senders-live": { type: "boolean", doc: "senders sync too, so the server echoes each message to them" },
  "idle-conns": {
    type: "string",
    doc: "idle authenticated connections for the RSS test (default 10000; quick 2000; max ~19000)",
  },
  "baseline-rates": { type: "string", doc: "bare-ws baseline rates (default 1000,5000)" },
  skip: {
    type: "string",
    doc: "comma list of phases to skip: ladder, writer (distributed), baseline, idle (embedded)",
  },
  "kafka-partitions": {
    type: "string",
    doc: "distributed: partitions of the run's message topics (default 12, the server's default)",
  },
  "writer-rows-per-call": {
    type: "string",
    doc: "distributed writer phase: rows per write() call, one measured shape each (default 1,10,50)",
  },
  "writer-seconds": { type: "string", doc: "writer phase: measured seconds per shape (default 10; quick 3)" },
  "writer-conversations": { type: "string", doc: "writer phase: conversations written (default 1000)" },
  "writer-callers": {
    type: "string",
    doc: "writer phase: concurrent write() callers (default 256, above the in-flight bound)",
  },
  "writer-fence-entries": {
    type: "string",
    doc: "writer phase: entries per sequencer fence call (CassandraSequencerStore.assign), one shape each (default 1,10; 0 = none)",
  },
  "writer-fence-callers": {
    type: "string",
    doc: "writer phase: concurrent fence callers, each on conversations of its own (default 64)",
  },
  "writer-in-flight": {
    type: "string",
    doc: "writer phase: the store's in-flight request bound (default 64, as in the server)",
  },
  "server-cpus": {
    type: "string",
    doc: "taskset CPU list for the server (default 0; distributed: unpinned unless given)",
  },
  "generator-cpus": {
    type: "string",
    doc: "taskset CPU list for this generator (default 1; distributed: unpinned unless given)",
  },
  "no-pin": { type: "boolean", doc: "do not use taskset" },
  "cpu-prof": {
    type: "boolean",
    doc: "run the ladder's server with --cpu-prof and print where its CPU went",
  },
  "cpu-prof-dir": { type: "string", doc: "where to keep the .cpuprofile (default: a temp dir)" },
  "quiet-threshold": {
    type: "string",
    doc: "foreign CPU load (cores) under which a step may start (default 0.3)",
  },
  "quiet-wait-seconds": {
    type: "string",
    doc: "wait at most this long per step for foreign load to drop (default 15; quick 5; 0 with --realtime)",
  },
  realtime: {
    type: "boolean",
    doc: "run server and generator as SCHED_RR 1 (chrt) so other work on a shared box cannot delay them",
  },
  nice: {
    type: "string",
    doc: "niceness for server and generator, e.g. -10 to run ahead of other work on a shared box (default 0)",
  },
  "data-root": {
    type: "string",
    doc: "parent dir of the servers' temp data dirs (default: OS temp dir; /dev/shm takes fsync out of the picture)",
  },
  "server-node-args": {
    type: "string",
    doc: "extra node flags for the ladder's server, space-separated (e.g. --perf-basic-prof)",
  },
  "perf-rate": {
    type: "string",
    doc: "record the server with `perf record -g` during the ladder step at this rate (server gets --perf-basic-prof)",
  },
  "no-stop": {
    type: "boolean",
    doc: "run every ladder rate even after a failure (exploration; max rates still count from the bottom)",
  },
  retries: {
    type: "string",
    doc: "re-runs of a step that failed while foreign load was high; the least contended attempt is kept (default 2)",
  },
  "keep-data": { type: "boolean", doc: "keep the servers' temp data dirs (and stderr logs)" },
  "json-out": { type: "string", doc: "also write the JSON summary to this file" },
  help: { type: "boolean", doc: "this text" },
} as const;

type Opts = {
  [K in keyof typeof OPTIONS]?: (typeof OPTIONS)[K]["type"] extends "boolean" ? boolean : string;
};

function readOptions(): Opts {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: Object.fromEntries(Object.entries(OPTIONS).map(([k, v]) => [k, { type: v.type }])) as Record<
      string,
      { type: "string" | "boolean" }
    >,
    strict: true,
  });
  const out: Record<string, string | boolean> = {};
  for (const [k, v] of Object.entries(OPTIONS)) {
    const env = process.env[`BENCH_${k.replace(/-/g, "_").toUpperCase()}`];
    const given = values[k];
    if (given !== undefined) out[k] = given;
    else if (env !== undefined) out[k] = v.type === "boolean" ? /^(1|true|yes|on)$/i.test(env) : env;
  }
  return out as Opts;
}

const num = (s: string | undefined, d: number) => (s === undefined ? d : Number(s));
const list = (s: string | undefined, d: number[]) =>
  s === undefined
    ? d
    : s
        .split(",")
        .map((x) => Number(x.trim()))
        .filter((x) => x > 0);
const log = (s: string) => process.stderr.write(`${s}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Limits raised so the gateway's per-connection and per-user rate limits never shape the load. */
const SERVER_ENV: Record<string, string> = {
  SWITCHBOARD_GATEWAY_SENDS_PER_SECOND: "1000000",
  SWITCHBOARD_GATEWAY_SEND_BURST: "1000000",
  SWITCHBOARD_GATEWAY_USER_SENDS_PER_SECOND: "1000000",
  SWITCHBOARD_GATEWAY_FRAMES_PER_SECOND: "1000000",
  SWITCHBOARD_GATEWAY_CONNECTIONS_MAX: "19500",
};

interface Verdict {
  ok10: boolean;
  ok50: boolean;
  why: string;
}

/**
 * Waits (up to maxWaitMs) until processes other than the server, its Kafka/Cassandra (`infra`) and
 * this generator use less than `threshold` cores over a 1 s window; returns the last foreign load
 * seen. Other work on a 2-core box shows up directly in p99, so every step records it
 * (other_cpu_cores) either way.
 */
async function waitQuiet(
  server: ServerProcess,
  threshold: number,
  maxWaitMs: number,
  infra?: InfraCpu,
): Promise<number> {
  const deadline = performance.now() + maxWaitMs;
  let announced = false;
  for (;;) {
    const m0 = machineBusySeconds();
    const s0 = server.cpuSeconds();
    const i0 = infra?.total() ?? 0;
    const g0 = process.cpuUsage();
    const t0 = performance.now();
    await sleep(1000);
    const dt = (performance.now() - t0) / 1000;
    const g = process.cpuUsage(g0);
    const own = server.cpuSeconds() - s0 + (infra?.total() ?? 0) - i0 + (g.user + g.system) / 1e6;
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

const f = (x: number | null | undefined, d = 2) =>
  x === null || x === undefined || Number.isNaN(x) ? "-" : x.toFixed(d);

const STAGE_METRICS = [
  "switchboard_message_append_seconds_sum",
  "switchboard_message_append_seconds_count",
  "switchboard_router_batch_seconds_sum",
  "switchboard_router_batch_seconds_count",
];

/** The server's own view of a step (warm-up included), from its /metrics. */
interface ServerStages {
  /** Mean time from a valid send to its durable append (the part of the ack spent in storage). */
  append_mean_ms: number | null;
  /** Router batches (one inbox commit each), their mean duration and mean size. */
  router_batches: number;
  router_batch_mean_ms: number | null;
  messages_per_router_batch: number | null;
}

async function stageMetrics(server: ServerProcess): Promise<Record<string, number> | undefined> {
  try {
    return await server.metrics(STAGE_METRICS);
  } catch {
    return undefined;
  }
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
  };
}

function table(title: string, rows: Array<{ r: StepResult; v?: Verdict }>): string {
  const head = [
    "rate/s",
    "sent/s",
    "msgs",
    "lost",
    "p50",
    "p90",
    "p99",
    "p99.9",
    "max",
    "ack p50",
    "ack p99",
    "lag p99",
    "srv core",
    "srv µs/msg",
    "gen core",
    "other",
    "verdict",
  ];
  // Distributed: the Kafka and Cassandra JVMs' cores and the whole system's CPU per message.
  const infraNames = [...new Set(rows.flatMap(({ r }) => Object.keys(r.infra_cpu_cores ?? {})))];
  if (infraNames.length > 0)
    head.splice(head.indexOf("gen core"), 0, ...infraNames.map((n) => `${n} core`), "sys µs/msg");
  const body = rows.map(({ r, v }) => [
    String(r.rate),
    String(r.offered_rate),
    String(r.sent),
    String(r.lost),
    f(r.latency.p50_ms),
    f(r.latency.p90_ms),
    f(r.latency.p99_ms),
    f(r.latency.p999_ms),
    f(r.latency.max_ms),
    f(r.ack_latency.p50_ms),
    f(r.ack_latency.p99_ms),
    f(r.send_lag.p99_ms),
    f(r.server_cpu_cores),
    r.server_cpu_us_per_msg === null ? "-" : String(r.server_cpu_us_per_msg),
    ...(infraNames.length > 0
      ? [
          ...infraNames.map((n) => f(r.infra_cpu_cores?.[n])),
          r.system_cpu_us_per_msg === null || r.system_cpu_us_per_msg === undefined
            ? "-"
            : String(r.system_cpu_us_per_msg),
        ]
      : []),
    f(r.generator_cpu_cores),
    f(r.other_cpu_cores),
    v?.why ?? "",
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padStart(widths[i]!)).join("  ");
  return [title, line(head), line(widths.map((w) => "-".repeat(w))), ...body.map(line)].join("\n");
}

async function runLadder(
  kind: "switchboard" | "bare",
  rates: number[],
  o: {
    serverCpus: string | undefined;
    pairs: number;
    encoding: Encoding;
    bodyBytes: number;
    sendersLive: boolean;
    stepMs: number;
    warmupMs: number;
    initialWarmupMs: number;
    initialWarmupRate: number;
    drainMs: number;
    drainMaxMs: number;
    nodeArgs: string[];
    keepData: boolean;
    dataRoot: string;
    nice: number;
    realtime: boolean;
    stopOnFail: boolean;
    retries: number;
    /** Rates measured even after the ladder stopped (the headline rates). */
    alwaysRates?: number[];
    perfRate?: number;
    quietThreshold: number;
    quietWaitMs: number;
    /** Distributed backend: `start` arguments, environment, and the JVMs whose CPU the steps account for. */
    distributed?: { args: string[]; env: Record<string, string>; infra: InfraCpu };
  },
): Promise<{
  steps: Array<{ r: StepResult; v: Verdict }>;
  server: ServerProcess;
  rssKb: number;
  perf?: PerfRecording;
}> {
  const dist = kind === "switchboard" ? o.distributed : undefined;
  const server = await ServerProcess.start({
    kind,
    cpus: o.serverCpus,
    env: { ...SERVER_ENV, ...dist?.env },
    ...(dist ? { args: dist.args, startTimeoutMs: 180_000 } : {}),
    nodeArgs: o.nodeArgs,
    keepData: o.keepData,
    nice: o.nice,
    realtime: o.realtime,
    dataRoot: o.dataRoot,
  });
  log(`${kind} server pid ${server.pid} on port ${server.port} (data ${server.dataDir})`);
  const load = new PairLoad({
    url: `ws://127.0.0.1:${server.port}/ws`,
    pairs: o.pairs,
    encoding: o.encoding,
    bodyBytes: o.bodyBytes,
    sendersLive: o.sendersLive,
    appendUserToUrl: kind === "bare",
    tokens: (users) =>
      kind === "bare" ? Promise.resolve(users.map(() => "x")) : mintTokens(server.dataDir, users),
  });
  const steps: Array<{ r: StepResult; v: Verdict }> = [];
  let perf: PerfRecording | undefined;
  try {
    await load.connect();
    log(`  ${o.pairs} pairs connected; warm-up ${o.initialWarmupMs / 1000} s at ${o.initialWarmupRate}/s`);
    const cpuProbe = () => server.cpuSeconds();
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
      let step: { r: StepResult; v: Verdict } | undefined;
      // A step that failed while other processes used the CPU is retried (up to `o.retries` times);
      // the attempt that saw the least foreign load is kept, whatever its latency.
      for (let attempt = 1; attempt <= 1 + o.retries; attempt++) {
        const closedBefore = load.closedUnexpectedly;
        await waitQuiet(server, o.quietThreshold, o.quietWaitMs, dist?.infra);
        if (rate === o.perfRate && !perf) {
          perf = new PerfRecording(server.pid, join(o.dataRoot, `switchboard-bench-perf-${server.pid}.data`));
          perf.start(o.warmupMs, Math.max(1, Math.floor(o.stepMs / 1000)));
        }
        const m0 = kind === "switchboard" ? await stageMetrics(server) : undefined;
        const r: StepResult & { server_stages?: ServerStages } = await load.runStep({
          rate,
          warmupMs: o.warmupMs,
          measureMs: o.stepMs,
          drainTimeoutMs: o.drainMs,
          drainMaxMs: o.drainMaxMs,
          // Past the ladder's failure a headline rate runs its whole schedule (bounded at 15 s of backlog).
          backlogSecondsMax: stopped ? 15 : 3,
          serverCpuSeconds: cpuProbe,
          machineBusySeconds,
          ...(dist ? { infraCpuSeconds: () => dist.infra.seconds() } : {}),
        });
        if (m0) r.server_stages = stageDelta(m0, await stageMetrics(server));
        const v = verdict(r, load.closedUnexpectedly - closedBefore);
        if (attempt > 1) v.why += ` (attempt ${attempt})`;
        if (stopped) v.why += " (after ladder stop)";
        if (!step || (r.other_cpu_cores ?? 0) < (step.r.other_cpu_cores ?? 0)) step = { r, v };
        const st = r.server_stages;
        const jvm = r.infra_cpu_cores
          ? `, ${Object.entries(r.infra_cpu_cores)
              .map(([n, c]) => `${n} ${f(c)}`)
              .join(", ")}`
          : "";
        log(
          `  ${String(rate).padStart(6)}/s:${st ? ` [server: append ${f(st.append_mean_ms)} ms, router batch ${f(st.router_batch_mean_ms)} ms × ${st.router_batches} (${f(st.messages_per_router_batch, 1)} msgs)]` : ""} sent ${r.offered_rate}/s, p50 ${f(r.latency.p50_ms)} p99 ${f(r.latency.p99_ms)} p99.9 ${f(r.latency.p999_ms)} max ${f(r.latency.max_ms)} ms; ack p99 ${f(r.ack_latency.p99_ms)}; server ${f(r.server_cpu_cores)} cores${jvm}, gen ${f(r.generator_cpu_cores)}, other ${f(r.other_cpu_cores)} → ${v.why}`,
        );
        if (!server.running) throw new Error(`server exited: ${server.tail()}`);
        if (v.ok10 || stopped || !v.why.includes("CONTENDED")) break;
      }
      if (step!.v.why.includes("attempt")) log(`    kept: ${step!.v.why}`);
      steps.push(step!);
      if (o.stopOnFail && !step!.v.ok50) stopped = true;
    }
    await perf?.finish();
    return { steps, server, rssKb: server.rssKb(), ...(perf ? { perf } : {}) };
  } finally {
    await load.close();
  }
}

function maxLine(limitMs: number, m: ReturnType<typeof maxRate>, lowest: number | undefined): string {
  const held = m.max_rate === null ? `none (below ${lowest ?? "?"}/s)` : `${m.max_rate}/s`;
  const fail = m.first_failure
    ? `first failure at ${m.first_failure.rate}/s: p99 ${f(m.first_failure.p99_ms)} ms; ${m.first_failure.why}`
    : "no failure in the ladder";
  return `  highest rate held with p99 ≤ ${limitMs} ms: ${held} (${fail}; bounded by ${m.bounded_by})`;
}

function maxRate(steps: Array<{ r: StepResult; v: Verdict }>, key: "ok10" | "ok50") {
  let best: number | null = null;
  let firstFail: { rate: number; p99_ms: number; why: string } | null = null;
  for (const { r, v } of steps) {
    if (v[key]) {
      best = r.rate;
      continue;
    }
    firstFail = { rate: r.rate, p99_ms: r.latency.p99_ms, why: v.why };
    break;
  }
  const generatorBound = firstFail?.why.includes("GENERATOR-BOUND") ?? false;
  const contended = firstFail?.why.includes("CONTENDED") ?? false;
  return {
    max_rate: best,
    first_failure: firstFail,
    bounded_by:
      firstFail === null
        ? "ladder-end"
        : generatorBound
          ? "generator"
          : contended
            ? "server, under foreign load (upper bound)"
            : "server",
    contended,
  };
}

function writerTable(w: WriterResult): string {
  const head = [
    "rows/call",
    "rows/s",
    "calls/s",
    "call p50",
    "call p99",
    "call max",
    "cass core",
    "cass µs/row",
    "client core",
    "other",
    "errors",
    "read-back",
  ];
  const body = w.shapes.map((s) => [
    String(s.rows_per_call),
    String(s.rows_per_second),
    String(s.calls_per_second),
    f(s.call_latency.p50_ms),
    f(s.call_latency.p99_ms),
    f(s.call_latency.max_ms),
    f(s.cassandra_cpu_cores),
    s.cassandra_cpu_us_per_row === null ? "-" : String(s.cassandra_cpu_us_per_row),
    f(s.client_cpu_cores),
    f(s.other_cpu_cores),
    String(s.errors),
    s.verified ? "ok" : "MISMATCH",
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padStart(widths[i]!)).join("  ");
  const s0 = w.shapes[0];
  return [
    `Cassandra batch writer (CassandraMessageStore.write, ${s0?.conversations ?? "?"} conversations, ${s0?.callers ?? "?"} callers, ${s0?.in_flight_max ?? "?"} requests in flight), ${s0?.measured_seconds ?? "?"} s per shape:`,
    line(head),
    line(widths.map((x) => "-".repeat(x))),
    ...body.map(line),
    `  writer rows/s: ${w.best ? `${w.best.rows_per_second} (${w.best.rows_per_call} rows per call)` : "none (every shape failed)"}`,
    ...(w.fence.length > 0 ? ["", fenceTable(w)] : []),
  ].join("\n");
}

function fenceTable(w: WriterResult): string {
  const head = [
    "entries/assign",
    "assigns/s",
    "seqs/s",
    "p50",
    "p99",
    "max",
    "cass core",
    "cass µs/assign",
    "client core",
    "other",
    "errors",
  ];
  const body = w.fence.map((s) => [
    String(s.entries_per_assign),
    String(s.assigns_per_second),
    String(s.entries_per_second),
    f(s.assign_latency.p50_ms),
    f(s.assign_latency.p99_ms),
    f(s.assign_latency.max_ms),
    f(s.cassandra_cpu_cores),
    s.cassandra_cpu_us_per_assign === null ? "-" : String(s.cassandra_cpu_us_per_assign),
    f(s.client_cpu_cores),
    f(s.other_cpu_cores),
    String(s.errors + s.not_applied),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padStart(widths[i]!)).join("  ");
  const s0 = w.fence[0];
  return [
    `Sequencer fence (CassandraSequencerStore.assign: one Paxos round per call, ${s0?.callers ?? "?"} callers over ${s0?.conversations ?? "?"} conversations), ms:`,
    line(head),
    line(widths.map((x) => "-".repeat(x))),
    ...body.map(line),
  ].join("\n");
}

async function main(): Promise<void> {
  const opts = readOptions();
  if (opts.help) {
    log("usage: node dist/bench/run.js [options]   (every option also as BENCH_<NAME>=...)");
    for (const [k, v] of Object.entries(OPTIONS))
      log(`  --${k}${v.type === "string" ? " X" : ""}\n      ${v.doc}`);
    return;
  }
  selfCheck();
  const quick = opts.quick ?? false;
  const backend = opts.backend ?? "embedded";
  if (backend !== "embedded" && backend !== "distributed")
    throw new Error("--backend must be embedded or distributed");
  const distributed = backend === "distributed";
  const skip = new Set(
    (opts.skip ?? "")
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean),
  );
  // The bare-ws baseline and the idle-connection test do not depend on the storage backend: the
  // embedded mode measures them.
  if (distributed) for (const phase of ["baseline", "idle"]) skip.add(phase);
  const encoding = (opts.encoding ?? "binary") as Encoding;
  if (encoding !== "binary" && encoding !== "json") throw new Error("--encoding must be binary or json");
  const pin = !opts["no-pin"] && hasTaskset() && cpus().length >= 2;
  // Distributed: Kafka and Cassandra run on the same cores, so by default nothing is pinned (the
  // server's Kafka/Cassandra clients and the JVMs' threads are better left to the scheduler).
  const serverCpus = pin ? (opts["server-cpus"] ?? (distributed ? undefined : "0")) : undefined;
  const genCpus = opts["generator-cpus"] ?? (distributed ? undefined : "1");
  const pinned = pin && genCpus !== undefined ? pinSelf(genCpus) : false;
  const common = {
    serverCpus,
    pairs: num(opts.pairs, 100),
    encoding,
    bodyBytes: num(opts["body-bytes"], 100),
    sendersLive: opts["senders-live"] ?? false,
    stepMs: num(opts["step-seconds"], quick ? 3 : 10) * 1000,
    warmupMs: num(opts["warmup-seconds"], quick ? 1 : 2) * 1000,
    initialWarmupMs: num(opts["initial-warmup-seconds"], quick ? 2 : distributed ? 10 : 5) * 1000,
    initialWarmupRate: num(opts["initial-warmup-rate"], distributed ? 50 : 1000),
    drainMs: num(opts["drain-seconds"], 3) * 1000,
    drainMaxMs: num(opts["drain-max-seconds"], distributed ? 180 : 30) * 1000,
    keepData: opts["keep-data"] ?? false,
    dataRoot: opts["data-root"] ?? tmpdir(),
    nice: num(opts.nice, 0),
    realtime: opts.realtime ?? false,
    quietThreshold: num(opts["quiet-threshold"], 0.3),
    retries: num(opts.retries, 2),
    quietWaitMs: num(opts["quiet-wait-seconds"], opts.realtime ? 0 : quick ? 5 : 15) * 1000,
  };
  if (common.nice) setPriority(common.nice); // this (main) thread; the server gets `nice -n`
  if (common.realtime && !realtimeSelf()) throw new Error("--realtime: chrt failed (needs CAP_SYS_NICE)");
  const rates = list(
    opts.rates,
    distributed
      ? [25, 50, 100, 250, 500, 1000, 2500, 5000, 7500, 10_000]
      : [500, 1000, 2500, 5000, 7500, 10_000, 15_000, 20_000, 25_000, 30_000, 40_000, 50_000],
  );
  const baselineRates = list(opts["baseline-rates"], [1000, 5000]);
  const idleConns = num(opts["idle-conns"], quick ? 2000 : 10_000);
  // Distributed: real Kafka and Cassandra (shared with the tests: reused if running, never stopped),
  // and a topic prefix, consumer groups and keyspace of this run's own.
  let dist:
    | {
        infraEnv: InfraEnv;
        infra: InfraCpu;
        names: RunNames;
        partitions: number;
        args: string[];
        env: Record<string, string>;
      }
    | undefined;
  if (distributed) {
    log("distributed: starting or reusing Kafka and Cassandra (test/infra/up.sh kafka cassandra)");
    const infraEnv = await ensureInfra(log);
    const infra = new InfraCpu();
    const names = runNames();
    const partitions = num(opts["kafka-partitions"], 12);
    dist = {
      infraEnv,
      infra,
      names,
      partitions,
      args: ["--backend", "distributed"],
      env: {
        ...infraEnv,
        SWITCHBOARD_KAFKA_TOPIC_PREFIX: names.topicPrefix,
        SWITCHBOARD_KAFKA_PARTITIONS: String(partitions),
        SWITCHBOARD_CASSANDRA_KEYSPACE: names.keyspace,
      },
    };
    const d = dist;
    runCleanup = async () => {
      if (common.keepData) {
        log(`kept keyspace ${d.names.keyspace} and topics ${d.names.topicPrefix}* (--keep-data)`);
        return;
      }
      const problems = await dropRunState(d.infraEnv, d.names);
      if (problems.length > 0) log(`cleanup: ${problems.join("; ")}`);
      else log(`dropped keyspace ${d.names.keyspace}, topics and consumer groups ${d.names.topicPrefix}*`);
    };
  }
  const env = {
    node: process.version,
    backend,
    ...(dist
      ? {
          kafka_brokers: dist.infraEnv.KAFKA_BROKERS,
          cassandra_contact_points: dist.infraEnv.CASSANDRA_CONTACT_POINTS,
          topic_prefix: dist.names.topicPrefix,
          keyspace: dist.names.keyspace,
          kafka_partitions: dist.partitions,
          jvm_pids: dist.infra.pids,
          jvm_rss_kb_at_start: dist.infra.rssKb(),
        }
      : {}),
    cpu: cpus()[0]?.model ?? "?",
    cores: cpus().length,
    loadavg_at_start: loadavg().map((x) => Math.round(x * 100) / 100),
    server_cpus: serverCpus ?? "unpinned",
    generator_cpus: pinned && genCpus !== undefined ? genCpus : "unpinned",
    data_root: common.dataRoot,
    data_fs: (() => {
      try {
        return (
          execFileSync("df", ["--output=fstype", common.dataRoot]).toString().split("\n")[1]?.trim() ?? "?"
        );
      } catch {
        return "?";
      }
    })(),
    fsync_4k: fsyncProbe(common.dataRoot),
    encoding,
    pairs: common.pairs,
    body_bytes: common.bodyBytes,
    senders_live: common.sendersLive,
    nice: common.nice,
    scheduling: common.realtime ? "SCHED_RR 1 (--realtime)" : "normal",
    step_seconds: common.stepMs / 1000,
    warmup_seconds: common.warmupMs / 1000,
  };
  log(`switchboard bench: ${JSON.stringify(env)}`);

  const summary: Record<string, unknown> = { bench: `switchboard-${backend}`, env };
  const report: string[] = [];
  const trailer: string[] = [];

  // 1 + 2: the latency ladder on the platform (embedded, or distributed on Kafka + Cassandra).
  let profile: ProfileSummary | undefined;
  if (!skip.has("ladder")) {
    const profDir = opts["cpu-prof"]
      ? (opts["cpu-prof-dir"] ?? join(tmpdir(), `switchboard-cpuprof-${process.pid}`))
      : "";
    if (profDir) mkdirSync(profDir, { recursive: true });
    const nodeArgs = [
      ...(profDir ? ["--cpu-prof", "--cpu-prof-dir", profDir] : []),
      ...(opts["server-node-args"] ?? "").split(" ").filter(Boolean),
    ];
    const perfRate = opts["perf-rate"] === undefined ? undefined : Number(opts["perf-rate"]);
    if (perfRate !== undefined) {
      if (!hasPerf()) throw new Error("--perf-rate: perf is not installed");
      nodeArgs.push("--perf-basic-prof");
    }
    const { steps, server, rssKb, perf } = await runLadder("switchboard", rates, {
      ...common,
      nodeArgs,
      stopOnFail: !opts["no-stop"],
      alwaysRates: [1000, 5000],
      ...(perfRate !== undefined ? { perfRate } : {}),
      ...(dist ? { distributed: { args: dist.args, env: dist.env, infra: dist.infra } } : {}),
    });
    const perfReport = perf?.report();
    const code = await server.stop();
    perf?.cleanup(common.keepData);
    if (perfReport) {
      summary.server_perf_report = perfReport;
      trailer.push(perfReport);
    }
    if (code !== 0 && code !== null) log(`  switchboard server exit code ${code}`);
    if (profDir) {
      const file = readdirSync(profDir).find((x) => x.endsWith(".cpuprofile"));
      if (file) {
        profile = summarizeProfile(join(profDir, file), 20);
        summary.server_cpu_profile = { file: join(profDir, file), ...profile };
      } else log(`  no .cpuprofile found in ${profDir}`);
    }
    const at = (rate: number) => steps.find((s) => s.r.rate === rate)?.r;
    const pick = (r: StepResult | undefined) =>
      r && {
        latency: r.latency,
        ack_latency: r.ack_latency,
        lost: r.lost,
        server_cpu_cores: r.server_cpu_cores,
        ...(r.infra_cpu_cores ? { infra_cpu_cores: r.infra_cpu_cores } : {}),
        verdict: steps.find((s) => s.r === r)?.v.why ?? "",
      };
    const m10 = maxRate(steps, "ok10");
    const m50 = maxRate(steps, "ok50");
    summary.latency_1k = pick(at(1000)) ?? null;
    summary.latency_5k = pick(at(5000)) ?? null;
    summary.max_rate_p99_10ms = m10;
    summary.max_rate_p99_50ms = m50;
    summary.ladder = steps.map(({ r, v }) => ({ ...r, verdict: v.why }));
    summary.server_rss_after_ladder_kb = rssKb;
    report.push(
      table(
        `Switchboard ${backend}, 1:1 send→deliver latency in ms from the scheduled send (open loop):`,
        steps,
      ),
      maxLine(10, m10, steps[0]?.r.rate),
      maxLine(50, m50, steps[0]?.r.rate),
    );
  }

  // Distributed: the Cassandra batch writer on its own (no server running), on the run's keyspace.
  let writer: WriterResult | undefined;
  if (dist && !skip.has("writer")) {
    const rowsPerCall = list(opts["writer-rows-per-call"], [1, 10, 50]);
    log(`writer phase: CassandraMessageStore.write, ${rowsPerCall.join("/")} rows per call`);
    writer = await runWriter({
      env: dist.infraEnv,
      keyspace: dist.names.keyspace,
      rowsPerCall,
      conversations: num(opts["writer-conversations"], 1000),
      callers: num(opts["writer-callers"], 256),
      inFlightMax: num(opts["writer-in-flight"], 64),
      entriesPerAssign: list(opts["writer-fence-entries"], [1, 10]),
      fenceCallers: num(opts["writer-fence-callers"], 64),
      quietThreshold: common.quietThreshold,
      quietWaitMs: Math.max(common.quietWaitMs, 30_000),
      warmupMs: (quick ? 1 : 2) * 1000,
      measureMs: num(opts["writer-seconds"], quick ? 3 : 10) * 1000,
      bodyBytes: common.bodyBytes,
      infra: dist.infra,
      log,
    });
    summary.writer = writer;
    summary.writer_rows_per_second = writer.best?.rows_per_second ?? null;
    report.push(writerTable(writer));
  }

  // Baseline: bare ws with the same wire shapes, same generator, same pinning.
  const ladderSteps = (summary.ladder as Array<StepResult & { verdict: string }> | undefined) ?? [];
  if (!skip.has("baseline") && baselineRates.length > 0) {
    if (encoding !== "binary") log("baseline skipped: the bare server speaks the binary protocol only");
    else {
      const { steps, server } = await runLadder("bare", baselineRates, {
        ...common,
        initialWarmupMs: Math.min(common.initialWarmupMs, 2000),
        nodeArgs: [],
        stopOnFail: false,
      });
      await server.stop();
      summary.baseline_bare_ws = steps.map(({ r, v }) => ({ ...r, verdict: v.why }));
      report.push(table("Bare-ws baseline (no auth, no storage, no router: the floor), ms:", steps));
      const vs = steps.flatMap(({ r: b }) => {
        const s = ladderSteps.find((x) => x.rate === b.rate);
        if (!s) return [];
        return [
          {
            rate: b.rate,
            p50_minus_bare_ms: Math.round((s.latency.p50_ms - b.latency.p50_ms) * 100) / 100,
            p99_minus_bare_ms: Math.round((s.latency.p99_ms - b.latency.p99_ms) * 100) / 100,
            server_cpu_ratio:
              s.server_cpu_us_per_msg && b.server_cpu_us_per_msg
                ? Math.round((100 * s.server_cpu_us_per_msg) / b.server_cpu_us_per_msg) / 100
                : null,
          },
        ];
      });
      summary.vs_bare = vs;
      for (const x of vs)
        report.push(
          `  at ${x.rate}/s Switchboard − bare: p50 +${f(x.p50_minus_bare_ms)} ms, p99 +${f(x.p99_minus_bare_ms)} ms; server CPU per message ×${f(x.server_cpu_ratio)}`,
        );
    }
  }

  // 3: idle authenticated connections on a fresh server.
  let idle: IdleResult | undefined;
  if (!skip.has("idle")) {
    const server = await ServerProcess.start({
      kind: "switchboard",
      cpus: serverCpus,
      env: SERVER_ENV,
      keepData: common.keepData,
      nice: common.nice,
      realtime: common.realtime,
      dataRoot: common.dataRoot,
      // The inspector (loopback, random port) lets the test force a full GC before each reading.
      nodeArgs: ["--inspect=127.0.0.1:0"],
    });
    log(`idle test: server pid ${server.pid}, opening ${idleConns} connections`);
    try {
      idle = await runIdle(server, {
        connections: idleConns,
        concurrency: 200,
        settleMs: quick ? 1500 : 3000,
        encoding,
        log,
      });
    } finally {
      await server.stop();
    }
    summary.idle_connections = idle;
    report.push(
      [
        `Idle authenticated connections (server RSS from /proc/PID/status VmRSS):`,
        `  ${idle.connections} open (${idle.failed} failed) in ${idle.connect_seconds} s = ${idle.connects_per_second} connects/s`,
        `  RSS ${(idle.rss_before_kb / 1024).toFixed(1)} MB → ${(idle.rss_after_kb / 1024).toFixed(1)} MB as found: ${idle.rss_per_conn_kb} KB per connection, ${idle.rss_per_10k_conns_mb} MB per 10,000 connections`,
        idle.rss_gc_before_kb !== null && idle.rss_gc_after_kb !== null
          ? `  RSS after a forced full GC ${(idle.rss_gc_before_kb / 1024).toFixed(1)} MB → ${(idle.rss_gc_after_kb / 1024).toFixed(1)} MB: ${idle.rss_gc_per_conn_kb} KB per connection, ${idle.rss_gc_per_10k_conns_mb} MB per 10,000 connections`
          : "  (no forced-GC reading: inspector unavailable)",
        `  V8 heap used (after GC) ${f(idle.heap_before_mb, 1)} → ${f(idle.heap_after_mb, 1)} MB: ${f(idle.heap_per_conn_kb)} KB per connection; idle server CPU ${idle.server_cpu_idle_cores} cores; RSS after closing all ${(idle.rss_after_close_kb / 1024).toFixed(1)} MB`,
      ].join("\n"),
    );
  }

  process.stdout.write(`\n${report.join("\n\n")}\n`);
  if (profile) trailer.push(`Ladder server ${formatProfile(profile)}`);
  if (trailer.length > 0) process.stdout.write(`\n${trailer.join("\n\n")}\n`);
  const json = JSON.stringify(summary);
  if (opts["json-out"]) writeFileSync(opts["json-out"], `${json}\n`);
  process.stdout.write(`\n${json}\n`);
}

/** Drops the distributed run's keyspace and topics (set once they exist); runs on success and failure. */
let runCleanup: (() => Promise<void>) | undefined;

main().then(
  async () => {
    await runCleanup?.();
    process.exit(0);
  },
  async (err: unknown) => {
    log(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    await runCleanup?.().catch((e: unknown) => log(`cleanup failed: ${String(e)}`));
    process.exit(1);
  },
);
