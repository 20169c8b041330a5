/**
 * `npm run bench`: the platform's headline figures on this machine, on the embedded backend (default),
 * with `--backend distributed` on real Kafka + Cassandra (test/infra, started or reused), or with
 * `--backend cluster` as separate role processes on them (test/infra/cluster).
 *
 *   1. 1:1 send→deliver latency (and ack latency) at fixed open-loop rates, from the scheduled send
 *      time (no coordinated omission), HDR histograms; pairs of sender/receiver connections.
 *   2. The step ladder: the highest rate held with p99 ≤ 10 ms (G4 of docs/design.md §7) and with
 *      p99 ≤ 50 ms (G5), stopping at the first failure or when the generator cannot keep the
 *      schedule; per step, where the time goes (requests and CPU per message, by process).
 *   3. RSS per idle authenticated connection (G1) on a fresh server.
 *   +  a bare-ws baseline (same wire shapes, no platform) at the headline rates: the day's floor.
 *
 * The server runs on core 0 and this generator on core 1 (taskset) when available (embedded only: on
 * Kafka and Cassandra the JVMs share the same cores, so nothing is pinned unless asked). Each server
 * gets a fresh temporary data dir and is killed at the end, on error and on SIGINT. The distributed
 * and cluster modes also get a fresh topic prefix and keyspace, dropped at the end; the distributed
 * mode measures the Cassandra batch writer on its own (bench/writer.ts).
 *
 * This file runs the phases; options.ts resolves the settings, backend.ts starts and stops the system
 * under test (sut.ts: one process; cluster-system.ts: the cluster), ladder.ts drives it, report.ts
 * prints the tables.
 * Options: --help. Every option can also be given as BENCH_<NAME> (e.g. BENCH_QUICK=1).
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { cpus, loadavg, setPriority, tmpdir } from "node:os";
import { join } from "node:path";
import { type Backend, openBackend } from "./backend.js";
import { CENTRIFUGO_VERSION, CentrifugoSystem, centrifugoIdle, type PeerIdleResult } from "./centrifugo.js";
import { type FanoutOptions, type FanoutStep, runFanout } from "./fanout.js";
import { IDLE_CONNECTS_CONCURRENT, type IdleResult, runIdle } from "./idle.js";
import { CassandraNodeCounts } from "./infra.js";
import { type LadderStep, runLadder } from "./ladder.js";
import { helpText, list, num, type Opts, readOptions, resolveSettings, type Settings } from "./options.js";
import { type PeerRun, peerRatios, ratioReport } from "./peer-ratios.js";
import { hasPerf } from "./perf.js";
import { formatProfile, type ProfileSummary, summarizeProfile } from "./profile.js";
import { PUSH_PROVIDERS, runPush } from "./push.js";
import type { ProviderName } from "./push-driver.js";
import {
  costTable,
  f,
  fanoutTable,
  idleReport,
  logLines,
  maxLine,
  maxRate,
  nodeTableLines,
  pushTables,
  restartTable,
  roleTable,
  stageTable,
  table,
  writerTable,
} from "./report.js";
import { type RestartResult, runRestart } from "./restart.js";
import { fsyncProbe, pinSelf, realtimeSelf, ServerProcess } from "./server.js";
import { runStorm, type StormResult, stormReport } from "./storm.js";
import { ProcessSystem, SERVER_ENV, type StopReport } from "./sut.js";
import { startTraceSink } from "./trace-sink.js";
import { selfCheck } from "./wire.js";
import { runWriter } from "./writer.js";

const log = (s: string) => process.stderr.write(`${s}\n`);

/** What the phases add to: the JSON summary, the report (stdout) and what follows it. */
interface Output {
  summary: Record<string, unknown>;
  report: string[];
  trailer: string[];
}

function environment(s: Settings, backend: Backend, pinned: boolean): Record<string, unknown> {
  const fs = (() => {
    try {
      return (
        execFileSync("df", ["--output=fstype", s.server.dataRoot]).toString().split("\n")[1]?.trim() ?? "?"
      );
    } catch {
      return "?";
    }
  })();
  return {
    node: process.version,
    backend: s.backend,
    ...backend.describe(),
    cpu: cpus()[0]?.model ?? "?",
    cores: cpus().length,
    loadavg_at_start: loadavg().map((x) => Math.round(x * 100) / 100),
    server_cpus: s.server.serverCpus ?? "unpinned",
    generator_cpus: pinned && s.generatorCpus !== undefined ? s.generatorCpus : "unpinned",
    data_root: s.server.dataRoot,
    data_fs: fs,
    fsync_4k: fsyncProbe(s.server.dataRoot),
    encoding: s.ladder.encoding,
    pairs: s.ladder.pairs,
    body_bytes: s.ladder.bodyBytes,
    senders_live: s.ladder.sendersLive,
    nice: s.server.nice,
    scheduling: s.server.realtime ? "SCHED_RR 1 (--realtime)" : "normal",
    step_seconds: s.ladder.stepMs / 1000,
    warmup_seconds: s.ladder.warmupMs / 1000,
  };
}

/** 1 + 2: the latency ladder on the platform (embedded, distributed, or a cluster). */
async function ladderPhase(s: Settings, opts: Opts, backend: Backend, out: Output): Promise<void> {
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
  const sut = await backend.start(nodeArgs, profDir || undefined);
  const node =
    backend.infra && backend.names
      ? new CassandraNodeCounts(backend.infra.env, backend.names.keyspace, log)
      : undefined;
  let ladder: Awaited<ReturnType<typeof runLadder>>;
  let perfReport: string | undefined;
  let stopped: StopReport;
  try {
    ladder = await runLadder(sut, s.rates, {
      ...s.ladder,
      stopOnFail: !opts["no-stop"],
      alwaysRates: [1000, 5000],
      ...(perfRate !== undefined ? { perfRate } : {}),
      ...(node ? { nodeCounts: () => node.read() } : {}),
      perfDir: s.server.dataRoot,
      log,
    });
    perfReport = ladder.perf?.report();
  } finally {
    await node?.close();
    // Also on failure, so the run's topics and keyspace are never dropped under a running system.
    if (backend.name === "cluster") out.summary.cluster = sut.describe();
    stopped = await sut.stop();
  }
  const { steps, rssKb, perf } = ladder;
  perf?.cleanup(s.server.keepData);
  if (perfReport) {
    out.summary.server_perf_report = perfReport;
    out.trailer.push(perfReport);
  }
  for (const p of stopped.problems) log(`  ${p}`);
  if (profDir && backend.name === "cluster") {
    // One profile per role process, named <role>-<http port>-<pid>.cpuprofile (cpu-profile-preload.ts).
    const files = readdirSync(profDir)
      .filter((x) => x.endsWith(".cpuprofile"))
      .sort();
    const profiles: Record<string, { file: string } & ProfileSummary> = {};
    for (const file of files) {
      const profile = summarizeProfile(join(profDir, file), 20);
      profiles[file.replace(/\.cpuprofile$/, "")] = { file: join(profDir, file), ...profile };
      out.trailer.push(`Cluster process ${file}: ${formatProfile(profile)}`);
    }
    if (files.length === 0) log(`  no .cpuprofile found in ${profDir}`);
    out.summary.cluster_cpu_profiles = profiles;
  } else if (profDir) {
    const file = readdirSync(profDir).find((x) => x.endsWith(".cpuprofile"));
    if (file) {
      const profile: ProfileSummary = summarizeProfile(join(profDir, file), 20);
      out.summary.server_cpu_profile = { file: join(profDir, file), ...profile };
      out.trailer.push(`Ladder server ${formatProfile(profile)}`);
    } else log(`  no .cpuprofile found in ${profDir}`);
  }
  const at = (rate: number) => steps.find((x) => x.r.rate === rate)?.r;
  const pick = (r: LadderStep["r"] | undefined) =>
    r && {
      latency: r.latency,
      ack_latency: r.ack_latency,
      lost: r.lost,
      server_cpu_cores: r.server_cpu_cores,
      ...(r.server_cpu_cores_by_role ? { server_cpu_cores_by_role: r.server_cpu_cores_by_role } : {}),
      ...(r.infra_cpu_cores ? { infra_cpu_cores: r.infra_cpu_cores } : {}),
      ...(r.per_msg ? { per_msg: r.per_msg } : {}),
      verdict: steps.find((x) => x.r === r)?.v.why ?? "",
    };
  const m10 = maxRate(steps, "ok10");
  const m50 = maxRate(steps, "ok50");
  const sum = out.summary;
  sum.latency_1k = pick(at(1000)) ?? null;
  sum.latency_5k = pick(at(5000)) ?? null;
  sum.max_rate_p99_10ms = m10;
  sum.max_rate_p99_50ms = m50;
  sum.ladder = steps.map(({ r, v }) => ({ ...r, verdict: v.why }));
  const rss = Object.values(rssKb);
  sum.server_rss_after_ladder_kb = rss.reduce((a, b) => a + b, 0);
  if (rss.length > 1) sum.server_rss_after_ladder_kb_by_process = rssKb;
  out.report.push(
    table(
      `Switchboard ${s.backend}, 1:1 send→deliver latency in ms from the scheduled send (open loop):`,
      steps,
    ),
    maxLine(10, m10, steps[0]?.r.rate),
    maxLine(50, m50, steps[0]?.r.rate),
  );
  if (steps.some((x) => x.r.server_cpu_cores_by_role))
    out.report.push(roleTable("Server CPU by role (cores, and µs per message sent):", steps));
  out.report.push(
    costTable(
      "Where the time goes, per message: Cassandra requests by kind, the partitions the node read and wrote (its own counts) and Kafka produce requests/records (the step's deltas over its messages, warm-up included); CPU µs of each process and JVM (measured window):",
      steps,
    ),
  );
  const nodeLines = nodeTableLines(steps);
  if (nodeLines.length > 0)
    out.report.push(
      ["Partitions the Cassandra node wrote and read per message, by table:", ...nodeLines].join("\n"),
    );
  if (stopped.logs) {
    sum.cluster_logs = stopped.logs;
    const lines = logLines(stopped.logs);
    out.report.push(
      lines.length > 0
        ? ["Warnings and errors in the cluster's logs:", ...lines].join("\n")
        : "No warnings or errors in the cluster's logs.",
    );
  }
}

/** Distributed: the Cassandra batch writer on its own (no server running), on the run's keyspace. */
async function writerPhase(s: Settings, opts: Opts, backend: Backend, out: Output): Promise<void> {
  const { infra, names } = backend;
  if (!infra || !names) return;
  const rowsPerCall = list(opts["writer-rows-per-call"], [1, 10, 50]);
  log(`writer phase: CassandraMessageStore.write, ${rowsPerCall.join("/")} rows per call`);
  const writer = await runWriter({
    env: infra.env,
    keyspace: names.keyspace,
    rowsPerCall,
    conversations: num(opts["writer-conversations"], 1000),
    callers: num(opts["writer-callers"], 256),
    inFlightMax: num(opts["writer-in-flight"], 64),
    entriesPerAssign: list(opts["writer-fence-entries"], [1, 10]),
    fenceCallers: num(opts["writer-fence-callers"], 64),
    quietThreshold: s.ladder.quietThreshold,
    quietWaitMs: Math.max(s.ladder.quietWaitMs, 30_000),
    warmupMs: (s.quick ? 1 : 2) * 1000,
    measureMs: num(opts["writer-seconds"], s.quick ? 3 : 10) * 1000,
    bodyBytes: s.ladder.bodyBytes,
    infra: infra.cpu,
    log,
  });
  out.summary.writer = writer;
  out.summary.writer_rows_per_second = writer.best?.rows_per_second ?? null;
  out.report.push(writerTable(writer));
}

/** Group fan-out: one sender into groups of N online members (fanout.ts). */
async function fanoutPhase(s: Settings, opts: Opts, backend: Backend, out: Output): Promise<void> {
  const members = num(opts["group-members"], 100);
  const rates = list(opts["group-rates"], [10, 50, 100, 200]);
  const groups = num(opts["group-count"], 1);
  log(`fan-out phase: ${groups} group(s) of ${members} online members at ${rates.join(", ")} msgs/s`);
  out.summary.fanout = await measureFanout(s, backend, out, { members, groups, rates });
}

/** Channel fan-out: a pull-model group, most members offline (fanout.ts, ADR 0010). */
async function channelPhase(s: Settings, opts: Opts, backend: Backend, out: Output): Promise<void> {
  const total = num(opts["channel-members"], 10_000);
  const online = num(opts["channel-online"], 2_000);
  const rates = list(opts["channel-rates"], [10]);
  log(`channel phase: ${total} members, ${online} online, at ${rates.join(", ")} msgs/s`);
  out.summary.channel = await measureFanout(s, backend, out, {
    members: online,
    offline: total - online,
    rates,
  });
}

/** One fan-out run on a fresh system, its table added to the report. */
async function measureFanout(
  s: Settings,
  backend: Backend,
  out: Output,
  shape: Pick<FanoutOptions, "members" | "offline" | "groups" | "rates">,
): Promise<FanoutStep[]> {
  const sut = await backend.start([]);
  let steps: FanoutStep[];
  try {
    steps = await runFanout(sut, {
      ...shape,
      warmupMs: s.ladder.warmupMs,
      measureMs: s.ladder.stepMs,
      bodyBytes: s.ladder.bodyBytes,
      drainMs: 30_000,
      log,
    });
  } finally {
    await sut.stop();
  }
  out.report.push(fanoutTable(steps));
  return steps;
}

/** Recovery: kill -9 and restart a single-process server with devices connected (restart.ts). */
async function restartPhase(s: Settings, opts: Opts, backend: Backend, out: Output): Promise<void> {
  const devices = num(opts["restart-devices"], 100);
  const rounds = num(opts["restart-rounds"], s.quick ? 1 : 3);
  log(`restart phase: ${devices} devices, ${rounds} kill -9 and restart`);
  const sut = await backend.start([]);
  let result: RestartResult;
  try {
    result = await runRestart(sut, { devices, rounds, log });
  } finally {
    await sut.stop();
  }
  out.summary.restart = result;
  out.report.push(restartTable(result));
}

/**
 * Push (push.ts): notifications per second per provider stand-in, and ack → provider request on the
 * server process.
 */
async function pushPhase(s: Settings, opts: Opts, out: Output): Promise<void> {
  const providers = (opts["push-providers"] ?? PUSH_PROVIDERS.join(","))
    .split(",")
    .map((p) => p.trim())
    .filter(Boolean);
  for (const p of providers)
    if (!PUSH_PROVIDERS.includes(p as ProviderName))
      throw new Error(`--push-providers: ${p} is not one of ${PUSH_PROVIDERS.join(", ")}`);
  const result = await runPush({
    providers: providers as ProviderName[],
    users: num(opts["push-users"], 1000),
    window: num(opts["push-window"], 512),
    warmupMs: 1000,
    measureMs: num(opts["push-seconds"], s.quick ? 3 : 5) * 1000,
    countMax: num(opts["push-notifications"], 0),
    nodeArgs: (opts["push-node-args"] ?? "").split(" ").filter(Boolean),
    latencyRate: num(opts["push-latency-rate"], 50),
    latencySeconds: num(opts["push-latency-seconds"], s.quick ? 5 : 10),
    bodyBytes: s.ladder.bodyBytes,
    server: s.server,
    quietThreshold: s.ladder.quietThreshold,
    quietWaitMs: s.ladder.quietWaitMs,
    log,
  });
  out.summary.push = result;
  out.summary.push_notifications_per_second = Object.fromEntries(
    result.throughput.map((t) => [t.provider, t.per_second]),
  );
  if (result.latency) {
    out.summary.push_ack_to_provider_ms = Object.fromEntries(
      result.latency.by_provider.map((p) => [p.provider, p.ack_to_provider]),
    );
    out.summary.push_missing = result.latency.by_provider.reduce((n, p) => n + p.missing, 0);
  }
  out.report.push(pushTables(result));
}

/** Baseline: bare ws with the same wire shapes, same generator, same pinning. */
async function baselinePhase(s: Settings, out: Output): Promise<void> {
  if (s.ladder.encoding !== "binary") {
    log("baseline skipped: the bare server speaks the binary protocol only");
    return;
  }
  const sut = await ProcessSystem.start("bare", s.server, {});
  let steps: LadderStep[];
  try {
    ({ steps } = await runLadder(sut, s.baselineRates, {
      ...s.ladder,
      initialWarmupMs: Math.min(s.ladder.initialWarmupMs, 2000),
      stopOnFail: false,
      perfDir: s.server.dataRoot,
      log,
    }));
  } finally {
    await sut.stop();
  }
  out.summary.baseline_bare_ws = steps.map(({ r, v }) => ({ ...r, verdict: v.why }));
  out.report.push(table("Bare-ws baseline (no auth, no storage, no router: the floor), ms:", steps));
  const ladderSteps = (out.summary.ladder as Array<LadderStep["r"] & { verdict: string }> | undefined) ?? [];
  const vs = steps.flatMap(({ r: b }) => {
    const x = ladderSteps.find((l) => l.rate === b.rate);
    if (!x) return [];
    return [
      {
        rate: b.rate,
        p50_minus_bare_ms: Math.round((x.latency.p50_ms - b.latency.p50_ms) * 100) / 100,
        p99_minus_bare_ms: Math.round((x.latency.p99_ms - b.latency.p99_ms) * 100) / 100,
        server_cpu_ratio:
          x.server_cpu_us_per_msg && b.server_cpu_us_per_msg
            ? Math.round((100 * x.server_cpu_us_per_msg) / b.server_cpu_us_per_msg) / 100
            : null,
      },
    ];
  });
  out.summary.vs_bare = vs;
  for (const x of vs)
    out.report.push(
      `  at ${x.rate}/s Switchboard − bare: p50 +${f(x.p50_minus_bare_ms)} ms, p99 +${f(x.p99_minus_bare_ms)} ms; server CPU per message ×${f(x.server_cpu_ratio)}`,
    );
}

/** 3: idle authenticated connections on a fresh server. */
async function idlePhase(s: Settings, out: Output): Promise<void> {
  const server = await ServerProcess.start({
    kind: "switchboard",
    cpus: s.server.serverCpus,
    env: SERVER_ENV,
    keepData: s.server.keepData,
    nice: s.server.nice,
    realtime: s.server.realtime,
    dataRoot: s.server.dataRoot,
    // The inspector (loopback, random port) lets the test force a full GC before each reading.
    nodeArgs: ["--inspect=127.0.0.1:0"],
  });
  log(`idle test: server pid ${server.pid}, opening ${s.idleConns} connections`);
  let idle: IdleResult;
  try {
    idle = await runIdle(server, {
      connections: s.idleConns,
      concurrency: IDLE_CONNECTS_CONCURRENT,
      settleMs: s.quick ? 1500 : 3000,
      encoding: s.ladder.encoding,
      log,
    });
  } finally {
    await server.stop();
  }
  out.summary.idle_connections = idle;
  out.report.push(idleReport(idle));
}

/** G7 and G8: a reconnect storm and a history sync on a fresh server. */
async function stormPhase(s: Settings, opts: Opts, out: Output): Promise<void> {
  const server = await ServerProcess.start({
    kind: "switchboard",
    // --server-node-args applies here too (e.g. --cpu-prof --cpu-prof-dir=DIR for the storm's profile).
    nodeArgs: (opts["server-node-args"] ?? "").split(" ").filter(Boolean),
    cpus: s.server.serverCpus,
    env: SERVER_ENV,
    keepData: s.server.keepData,
    nice: s.server.nice,
    realtime: s.server.realtime,
    dataRoot: s.server.dataRoot,
  });
  log(`storm: server pid ${server.pid}, ${s.stormClients} clients`);
  let storm: StormResult;
  try {
    storm = await runStorm(server, {
      clients: s.stormClients,
      groupSize: 50,
      missedMin: 20,
      missedMax: 50,
      concurrency: 1_000,
      historyMessages: s.historyMessages,
      log,
    });
  } finally {
    await server.stop();
  }
  out.summary.storm = storm;
  out.report.push(stormReport(storm));
}

/**
 * Centrifugo v6 on the same ladder, generator and pinning, with history off and on, and its idle
 * connections (history off); then Switchboard's figures as ratios of Centrifugo's.
 */
async function centrifugoPhase(s: Settings, out: Output): Promise<void> {
  const peers: Record<string, PeerRun> = {};
  for (const history of [false, true]) {
    const sut = await CentrifugoSystem.start({ history, cpus: s.server.serverCpus, log });
    let steps: LadderStep[];
    let idle: PeerIdleResult | undefined;
    try {
      ({ steps } = await runLadder(sut, s.rates, {
        ...s.ladder,
        stopOnFail: true,
        alwaysRates: [1000, 5000],
        perfDir: s.server.dataRoot,
        log,
      }));
      if (!history && !s.skip.has("idle")) idle = await centrifugoIdle(sut, s.idleConns, log);
    } finally {
      await sut.stop();
    }
    const name = `Centrifugo ${CENTRIFUGO_VERSION}, history ${history ? "on" : "off"}`;
    const m10 = maxRate(steps, "ok10");
    const m50 = maxRate(steps, "ok50");
    peers[history ? "history_on" : "history_off"] = {
      name,
      ladder: steps.map(({ r, v }) => ({ ...r, verdict: v.why })),
      max_rate_p99_10ms: m10,
      max_rate_p99_50ms: m50,
      ...(idle ? { idle_connections: idle } : {}),
    };
    out.report.push(
      table(`${name} (memory engine; its ack is not durable), the same generator, JSON protocol, ms:`, steps),
      maxLine(10, m10, steps[0]?.r.rate),
      maxLine(50, m50, steps[0]?.r.rate),
    );
    if (idle)
      out.report.push(
        `  ${name}: ${idle.connections} idle connections (${idle.failed} failed), ${idle.connects_per_second} connects/s (server ${idle.server_cpu_us_per_connect} µs of CPU per connect), ${idle.rss_per_conn_kb} KB RSS per connection (as found)`,
      );
  }
  const ratios = peerRatios(out.summary, peers);
  out.summary.centrifugo = { version: CENTRIFUGO_VERSION, ...peers, ratios };
  out.report.push(ratioReport(ratios));
}

async function main(): Promise<void> {
  const opts = readOptions();
  if (opts.help) {
    log(helpText());
    return;
  }
  selfCheck();
  const s = resolveSettings(opts);
  const pinned = s.generatorCpus !== undefined ? pinSelf(s.generatorCpus) : false;
  // This (main) thread; a single server gets `nice -n`, a cluster's processes inherit it.
  if (s.server.nice) setPriority(s.server.nice);
  if (s.server.realtime && !realtimeSelf()) throw new Error("--realtime: chrt failed (needs CAP_SYS_NICE)");
  // Distributed and cluster: real Kafka and Cassandra (shared with the tests: reused if running,
  // never stopped), and a topic prefix, consumer groups and keyspace of this run's own.
  const sink = opts.tracing === undefined ? undefined : await startTraceSink(Number(opts.tracing));
  if (sink) Object.assign(s.server.env, sink.env);
  const backend = await openBackend(s, log);
  runCleanup = () => backend.cleanup(log);
  const env = environment(s, backend, pinned);
  log(`switchboard bench: ${JSON.stringify(env)}`);

  const out: Output = { summary: { bench: `switchboard-${s.backend}`, env }, report: [], trailer: [] };
  if (!s.skip.has("ladder")) await ladderPhase(s, opts, backend, out);
  if (!s.skip.has("writer")) await writerPhase(s, opts, backend, out);
  if (!s.skip.has("fanout")) await fanoutPhase(s, opts, backend, out);
  if (!s.skip.has("channel")) await channelPhase(s, opts, backend, out);
  if (!s.skip.has("restart")) await restartPhase(s, opts, backend, out);
  if (opts.push && s.onInfra) log("push phase skipped: it runs on the embedded backend only");
  if (!s.skip.has("push")) await pushPhase(s, opts, out);
  if (!s.skip.has("baseline") && s.baselineRates.length > 0) await baselinePhase(s, out);
  if (!s.skip.has("idle")) await idlePhase(s, out);
  if (!s.skip.has("storm")) await stormPhase(s, opts, out);
  if (!s.skip.has("centrifugo")) await centrifugoPhase(s, out);

  if (sink) {
    const stages = sink.stages();
    out.summary.tracing = { sample_ratio: Number(opts.tracing), ...sink.stats(), stages };
    out.report.push(
      `Tracing on at sample ratio ${opts.tracing}: ${sink.stats().exports} OTLP exports, ${sink.stats().bytes} bytes received.`,
    );
    if (stages.length > 0) out.report.push(stageTable(stages));
    sink.close();
  }
  process.stdout.write(`\n${out.report.join("\n\n")}\n`);
  if (out.trailer.length > 0) process.stdout.write(`\n${out.trailer.join("\n\n")}\n`);
  const json = JSON.stringify(out.summary);
  if (opts["json-out"]) writeFileSync(opts["json-out"], `${json}\n`);
  process.stdout.write(`\n${json}\n`);
}

/** Drops the run's keyspace and topics (set once the backend exists); runs on success and failure. */
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
