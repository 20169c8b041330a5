/**
 * The benchmark's options (`--name X`, or `BENCH_<NAME>=X` in the environment) and the settings they
 * resolve to, with the defaults of each backend: the embedded backend runs a fast ladder on pinned
 * cores; the distributed and cluster backends (real Kafka + Cassandra on the same cores) run a slower
 * ladder, unpinned, with long drains.
 */
import { cpus, tmpdir } from "node:os";
import { parseArgs } from "node:util";
import { hasTaskset } from "./server.js";
import type { Encoding } from "./wire.js";

export const BACKENDS = ["embedded", "distributed", "cluster"] as const;
export type BackendName = (typeof BACKENDS)[number];

export const OPTIONS = {
  backend: {
    type: "string",
    doc: "embedded (default); distributed: one `switchboard start --backend distributed` on real Kafka + Cassandra from test/infra/up.sh (started or reused, left running), a fresh topic prefix and keyspace per run (dropped at the end unless --keep-data), plus the Cassandra writer phase; cluster: the same infra under a multi-process cluster (test/infra/cluster: 2 gateways, 2 routers, presence, push, id, sequencer), every pair's sender on gateway 0 and receiver on gateway 1 (baseline and idle are embedded-only, the writer distributed-only)",
  },
  quick: { type: "boolean", doc: "short run (~1 min): 3 s steps, 2,000 idle connections" },
  rates: {
    type: "string",
    doc: "ladder rates, msgs/s (default 500,1000,2500,5000,7500,10000,15000,20000,25000,30000,40000,50000; distributed and cluster 25,50,100,250,500,1000,2500,5000,7500,10000); 1000 and 5000 are measured even after the ladder stops",
  },
  "step-seconds": { type: "string", doc: "measured seconds per step (default 10; quick 3)" },
  "warmup-seconds": {
    type: "string",
    doc: "unmeasured seconds at each step's rate before measuring (default 2; quick 1)",
  },
  "initial-warmup-seconds": {
    type: "string",
    doc: "warm-up before the ladder (default 5; distributed and cluster 60, long enough for a fresh Cassandra node's JIT: its first ~50,000 messages run 2–6× slower; quick 2)",
  },
  "initial-warmup-rate": {
    type: "string",
    doc: "rate of the warm-up before the ladder, msgs/s (default 1000; distributed and cluster 500)",
  },
  "drain-seconds": {
    type: "string",
    doc: "after a step, stop waiting for stragglers after this long without progress (default 3); missing = lost",
  },
  "drain-max-seconds": {
    type: "string",
    doc: "after a step, stop waiting for stragglers after this long in all (default 30; distributed and cluster 180, so a backlog is measured out, not counted as lost)",
  },
  pairs: { type: "string", doc: "sender→receiver connection pairs (default 100)" },
  "body-bytes": { type: "string", doc: "message body size (default 100)" },
  encoding: { type: "string", doc: "binary (protobuf, default) or json" },
  "senders-live": { type: "boolean", doc: "senders sync too, so the server echoes each message to them" },
  "storm-clients": {
    type: "string",
    doc: "storm phase: clients that each missed 20–50 messages and reconnect at once (default 10000; quick 2000)",
  },
  "history-messages": {
    type: "string",
    doc: "storm phase: messages in the conversation read back for the history-sync figure (default 10000; quick 2000)",
  },
  "idle-conns": {
    type: "string",
    doc: "idle authenticated connections for the RSS test (default 10000; quick 2000; max ~19000)",
  },
  "baseline-rates": { type: "string", doc: "bare-ws baseline rates (default 1000,5000)" },
  skip: {
    type: "string",
    doc: "comma list of phases to skip: ladder, writer (distributed), baseline, idle (embedded), restart (single process), fanout, channel, push, storm (embedded: reconnect storm and history sync, design.md G7 and G8), centrifugo (embedded: Centrifugo v6 on the same ladder and idle test, history off and on, built with `go install` on first use; a missing Go toolchain is an error)",
  },
  push: {
    type: "boolean",
    doc: "also run the push phase (opt-in: about 50 s; embedded only): notifications/s and CPU per notification of the push service against each provider's protocol-checking stand-in, and ms from a message's ack to the provider request on the server; alone: --push --skip ladder,baseline,idle,restart,fanout,channel",
  },
  "push-providers": {
    type: "string",
    doc: "push phase: providers whose throughput is measured, one run each (default apns,fcm,webpush,webhook)",
  },
  "push-seconds": {
    type: "string",
    doc: "push phase: measured seconds per provider, after a 1 s warm-up (default 5; quick 3)",
  },
  "push-notifications": {
    type: "string",
    doc: "push phase: also end a provider's measured window once this many notifications were sent in it (default 0: by time only)",
  },
  "push-users": {
    type: "string",
    doc: "push phase: users, one device each, the notifications go round (default 1000)",
  },
  "push-window": {
    type: "string",
    doc: "push phase: notifications open at once (between notify() and the end of their job) (default 512; the service sends at most push.sendsInFlightMax, 64, per provider)",
  },
  "push-node-args": {
    type: "string",
    doc: "push phase: extra node flags for its push processes, space-separated (e.g. --push-node-args='--cpu-prof --cpu-prof-dir=/tmp/push-prof'; summarize with node dist/bench/profile.js FILE)",
  },
  "push-latency-rate": {
    type: "string",
    doc: "push phase: messages per second to the offline user for the ack→provider latency (default 50)",
  },
  "push-latency-seconds": {
    type: "string",
    doc: "push phase: seconds of those messages (default 10; quick 5; 0: latency not measured)",
  },
  "group-members": { type: "string", doc: "fan-out phase: members of the group, all online (default 100)" },
  "group-count": {
    type: "string",
    doc: "fan-out phase: groups of those same members, the messages spread over them (default 1; design.md G6: 100)",
  },
  "group-rates": {
    type: "string",
    doc: "fan-out phase: messages per second into the group, one step each (default 10,50,100,200)",
  },
  "channel-members": {
    type: "string",
    doc: "channel phase: members of the channel, a pull-model group (default 10000)",
  },
  "channel-online": { type: "string", doc: "channel phase: how many of them are online (default 2000)" },
  "channel-rates": {
    type: "string",
    doc: "channel phase: messages per second into the channel, one step each (default 10)",
  },
  "restart-devices": {
    type: "string",
    doc: "restart phase: connected SDK devices while the server is killed and restarted (default 100)",
  },
  "restart-rounds": {
    type: "string",
    doc: "restart phase: kill -9 and restart this many times (default 3; quick 1)",
  },
  "kafka-partitions": {
    type: "string",
    doc: "distributed and cluster: partitions of the run's message topics (default 12, the server's default)",
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
    doc: "taskset CPU list for the server (cluster: every process of it) (default 0; distributed and cluster: unpinned unless given)",
  },
  "generator-cpus": {
    type: "string",
    doc: "taskset CPU list for this generator (default 1; distributed and cluster: unpinned unless given)",
  },
  "no-pin": { type: "boolean", doc: "do not use taskset" },
  "cpu-prof": {
    type: "boolean",
    doc: "run the ladder's server with --cpu-prof and print where its CPU went (cluster: every role process, each profile printed)",
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
    doc: "parent dir of the servers' temp data dirs (cluster: its run dir) (default: OS temp dir; /dev/shm takes fsync out of the picture)",
  },
  tracing: {
    type: "string",
    doc: "run the servers with OpenTelemetry tracing on at this sample ratio (e.g. 1 or 0.01), exporting OTLP to a sink in this process that discards the spans (default: tracing off)",
  },
  "server-node-args": {
    type: "string",
    doc: "extra node flags for the ladder's and the storm's server, space-separated (e.g. --perf-basic-prof, or --cpu-prof --cpu-prof-dir=DIR) (single-process backends)",
  },
  "perf-rate": {
    type: "string",
    doc: "record the server with `perf record -g` during the ladder step at this rate (server gets --perf-basic-prof) (single-process backends)",
  },
  "no-stop": {
    type: "boolean",
    doc: "run every ladder rate even after a failure (exploration; max rates still count from the bottom)",
  },
  retries: {
    type: "string",
    doc: "re-runs of a step that failed while foreign load was high; the least contended attempt is kept (default 2)",
  },
  "keep-data": {
    type: "boolean",
    doc: "keep the servers' temp data dirs (and stderr logs; cluster: its run dir and logs)",
  },
  "json-out": { type: "string", doc: "also write the JSON summary to this file" },
  help: { type: "boolean", doc: "this text" },
} as const;

export type Opts = {
  [K in keyof typeof OPTIONS]?: (typeof OPTIONS)[K]["type"] extends "boolean" ? boolean : string;
};

export function readOptions(argv = process.argv.slice(2)): Opts {
  const { values } = parseArgs({
    args: argv,
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

export function helpText(): string {
  const lines = ["usage: node dist/bench/run.js [options]   (every option also as BENCH_<NAME>=...)"];
  for (const [k, v] of Object.entries(OPTIONS))
    lines.push(`  --${k}${v.type === "string" ? " X" : ""}\n      ${v.doc}`);
  return lines.join("\n");
}

export const num = (s: string | undefined, d: number) => (s === undefined ? d : Number(s));
export const list = (s: string | undefined, d: number[]) =>
  s === undefined
    ? d
    : s
        .split(",")
        .map((x) => Number(x.trim()))
        .filter((x) => x > 0);

/** What every ladder (the platform's and the bare baseline's) runs with. */
export interface LadderSettings {
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
  retries: number;
  quietThreshold: number;
  quietWaitMs: number;
}

/** How the servers are started (the generator's own pinning is applied by run.ts). */
export interface ServerSettings {
  /** taskset CPU list for the server's processes, or undefined for no pinning. */
  serverCpus: string | undefined;
  nice: number;
  realtime: boolean;
  keepData: boolean;
  dataRoot: string;
  /** Environment added to every server process (e.g. tracing's, set by run.ts). */
  env: Record<string, string>;
}

export interface Settings {
  backend: BackendName;
  /** On the real Kafka + Cassandra of test/infra (distributed, cluster). */
  onInfra: boolean;
  quick: boolean;
  skip: Set<string>;
  /** CPU list this generator should be pinned to (undefined: not pinned). */
  generatorCpus: string | undefined;
  rates: number[];
  baselineRates: number[];
  idleConns: number;
  stormClients: number;
  historyMessages: number;
  kafkaPartitions: number;
  ladder: LadderSettings;
  server: ServerSettings;
}

export function resolveSettings(opts: Opts): Settings {
  const backend = (opts.backend ?? "embedded") as BackendName;
  if (!BACKENDS.includes(backend)) throw new Error(`--backend must be one of ${BACKENDS.join(", ")}`);
  if (backend === "cluster")
    for (const k of ["perf-rate", "server-node-args"] as const)
      if (opts[k] !== undefined) throw new Error(`--${k} needs a single-process backend (not cluster)`);
  const onInfra = backend !== "embedded";
  const quick = opts.quick ?? false;
  const skip = new Set(
    (opts.skip ?? "")
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean),
  );
  // The bare-ws baseline and the idle-connection test do not depend on the storage backend: the
  // embedded mode measures them. The writer phase drives Cassandra directly, without a server: the
  // distributed mode measures it.
  if (onInfra) for (const phase of ["baseline", "idle", "storm", "centrifugo"]) skip.add(phase);
  // The push phase runs the embedded job store and server; opt-in (about 50 s).
  if (onInfra || !opts.push) skip.add("push");
  // The cluster's processes are restarted by its own tests (test/cluster), not measured here.
  if (backend === "cluster") for (const phase of ["writer", "restart"]) skip.add(phase);
  const encoding = (opts.encoding ?? "binary") as Encoding;
  if (encoding !== "binary" && encoding !== "json") throw new Error("--encoding must be binary or json");
  const pin = !opts["no-pin"] && hasTaskset() && cpus().length >= 2;
  // On infra, Kafka and Cassandra run on the same cores, so by default nothing is pinned (the
  // server's Kafka/Cassandra clients and the JVMs' threads are better left to the scheduler).
  const serverCpus = pin ? (opts["server-cpus"] ?? (onInfra ? undefined : "0")) : undefined;
  const generatorCpus = pin ? (opts["generator-cpus"] ?? (onInfra ? undefined : "1")) : undefined;
  return {
    backend,
    onInfra,
    quick,
    skip,
    generatorCpus,
    rates: list(
      opts.rates,
      onInfra
        ? [25, 50, 100, 250, 500, 1000, 2500, 5000, 7500, 10_000]
        : [500, 1000, 2500, 5000, 7500, 10_000, 15_000, 20_000, 25_000, 30_000, 40_000, 50_000],
    ),
    baselineRates: list(opts["baseline-rates"], [1000, 5000]),
    idleConns: num(opts["idle-conns"], quick ? 2000 : 10_000),
    stormClients: num(opts["storm-clients"], quick ? 2000 : 10_000),
    historyMessages: num(opts["history-messages"], quick ? 2000 : 10_000),
    kafkaPartitions: num(opts["kafka-partitions"], 12),
    ladder: {
      pairs: num(opts.pairs, 100),
      encoding,
      bodyBytes: num(opts["body-bytes"], 100),
      sendersLive: opts["senders-live"] ?? false,
      stepMs: num(opts["step-seconds"], quick ? 3 : 10) * 1000,
      warmupMs: num(opts["warmup-seconds"], quick ? 1 : 2) * 1000,
      initialWarmupMs: num(opts["initial-warmup-seconds"], quick ? 2 : onInfra ? 60 : 5) * 1000,
      initialWarmupRate: num(opts["initial-warmup-rate"], onInfra ? 500 : 1000),
      drainMs: num(opts["drain-seconds"], 3) * 1000,
      drainMaxMs: num(opts["drain-max-seconds"], onInfra ? 180 : 30) * 1000,
      retries: num(opts.retries, 2),
      quietThreshold: num(opts["quiet-threshold"], 0.3),
      quietWaitMs: num(opts["quiet-wait-seconds"], opts.realtime ? 0 : quick ? 5 : 15) * 1000,
    },
    server: {
      serverCpus,
      nice: num(opts.nice, 0),
      realtime: opts.realtime ?? false,
      keepData: opts["keep-data"] ?? false,
      dataRoot: opts["data-root"] ?? tmpdir(),
      env: {},
    },
  };
}
