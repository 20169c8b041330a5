/**
 * The benchmark's human-readable report: the ladder's table (and, for a cluster, server CPU by
 * role), the highest rates held, and the writer's tables.
 */

import type { FanoutStep } from "./fanout.js";
import type { IdleResult } from "./idle.js";
import type { LadderStep, Verdict } from "./ladder.js";
import type { StepResult } from "./loadgen.js";
import type { PushResult } from "./push.js";
import type { RestartResult, RestartRound } from "./restart.js";
import type { LogDigest } from "./sut.js";
import type { StageFigures } from "./trace-sink.js";
import type { WriterResult } from "./writer.js";

export const f = (x: number | null | undefined, d = 2) =>
  x === null || x === undefined || Number.isNaN(x) ? "-" : x.toFixed(d);

/** The role of a cluster process named `<role>-<index>`. */
export const roleOf = (processName: string) => processName.replace(/-\d+$/, "");

/** Right-aligned columns under a title. */
function columns(title: string, head: string[], body: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padStart(widths[i]!)).join("  ");
  return [title, line(head), line(widths.map((w) => "-".repeat(w))), ...body.map(line)].join("\n");
}

export function table(title: string, rows: Array<{ r: StepResult; v?: Verdict }>): string {
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
  // On Kafka + Cassandra (distributed, cluster): the JVMs' cores and the whole system's CPU per message.
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
  return columns(title, head, body);
}

/**
 * A cluster's server CPU by role (summed over the role's processes) at each rate: cores, and µs per
 * message sent in the window.
 */
export function roleTable(title: string, rows: LadderStep[]): string {
  const roles = [...new Set(rows.flatMap(({ r }) => Object.keys(r.server_cpu_cores_by_role ?? {})))];
  const head = ["rate/s", ...roles.map((n) => `${n} core (µs/msg)`), "total core (µs/msg)"];
  const cell = (r: StepResult, cores: number | undefined) =>
    cores === undefined
      ? "-"
      : `${f(cores)} (${r.offered_rate > 0 ? Math.round((cores * 1e6) / r.offered_rate) : "-"})`;
  const body = rows.map(({ r }) => [
    String(r.rate),
    ...roles.map((n) => cell(r, r.server_cpu_cores_by_role?.[n])),
    cell(r, r.server_cpu_cores ?? undefined),
  ]);
  return columns(title, head, body);
}

/**
 * Where the time goes, per message and step: Cassandra requests by kind and Kafka produces (the step's
 * /metrics deltas over the messages sent in it, warm-up included), and CPU µs of each Switchboard
 * process, of the Kafka and Cassandra JVMs ("n/a": not found) and of all of them (measured window).
 */
export function costTable(title: string, rows: LadderStep[]): string {
  const processes = [...new Set(rows.flatMap(({ r }) => Object.keys(r.per_msg?.cpu_us.by_process ?? {})))];
  const onInfra = rows.some(({ r }) => r.infra_cpu_cores !== undefined);
  const head = [
    "rate/s",
    "msgs",
    ...(onInfra
      ? [
          "cass read",
          "cass write",
          "cass batch",
          "cass lwt",
          "cass total",
          "node reads",
          "node writes",
          "kafka produces",
          "kafka records",
        ]
      : []),
    ...processes.map((p) => `${p} µs`),
    ...(onInfra ? ["kafka JVM µs", "cassandra JVM µs"] : []),
    "total µs",
  ];
  const us = (x: number | "n/a" | null | undefined) =>
    x === null || x === undefined ? "-" : typeof x === "string" ? x : String(x);
  const body = rows.map(({ r }) => {
    const c = r.per_msg;
    const cass = c?.cassandra;
    return [
      String(r.rate),
      c ? String(c.messages) : "-",
      ...(onInfra
        ? [
            f(cass?.reads),
            f(cass?.writes),
            f(cass?.batches),
            f(cass?.lwts),
            f(cass?.total),
            f(c?.cassandra_node?.reads),
            f(c?.cassandra_node?.writes),
            f(c?.kafka?.produce_requests),
            f(c?.kafka?.produced_records),
          ]
        : []),
      ...processes.map((p) => us(c?.cpu_us.by_process[p])),
      ...(onInfra ? [us(c?.cpu_us.kafka), us(c?.cpu_us.cassandra)] : []),
      us(c?.cpu_us.total),
    ];
  });
  return columns(title, head, body);
}

/** Per step on Cassandra: the partitions the node wrote and read per message, by table, most first. */
export function nodeTableLines(rows: LadderStep[]): string[] {
  const part = (byTable: Record<string, { reads: number; writes: number }>, kind: "reads" | "writes") =>
    Object.entries(byTable)
      .filter(([, t]) => t[kind] > 0)
      .sort((a, b) => b[1][kind] - a[1][kind])
      .map(([table, t]) => `${table} ${f(t[kind])}`)
      .join(", ");
  return rows.flatMap(({ r }) => {
    const n = r.per_msg?.cassandra_node;
    if (!n) return [];
    return [
      `  ${r.rate}/s: writes ${f(n.writes)} (${part(n.by_table, "writes")}); reads ${f(n.reads)} (${part(n.by_table, "reads")})`,
    ];
  });
}

/** The warnings and errors each cluster process logged, busiest first (empty when none). */
export function logLines(logs: Record<string, LogDigest>): string[] {
  const out: string[] = [];
  for (const [name, d] of Object.entries(logs)) {
    if (d.warn + d.error + d.other === 0) continue;
    out.push(`  ${name}: ${d.error} errors, ${d.warn} warnings, ${d.other} other lines`);
    for (const [msg, n] of Object.entries(d.top))
      out.push(
        `    ${n.count} × ${msg.slice(0, 200)} (${n.first.slice(11, 23)}${n.count > 1 ? ` .. ${n.last.slice(11, 23)}` : ""})`,
      );
  }
  return out;
}

export function idleReport(idle: IdleResult): string {
  return [
    `Idle authenticated connections (server RSS from /proc/PID/status VmRSS):`,
    `  ${idle.connections} open (${idle.failed} failed) in ${idle.connect_seconds} s = ${idle.connects_per_second} connects/s, server ${idle.server_cpu_us_per_connect} µs of CPU per connect`,
    `  RSS ${(idle.rss_before_kb / 1024).toFixed(1)} MB → ${(idle.rss_after_kb / 1024).toFixed(1)} MB as found: ${idle.rss_per_conn_kb} KB per connection, ${idle.rss_per_10k_conns_mb} MB per 10,000 connections`,
    idle.rss_gc_before_kb !== null && idle.rss_gc_after_kb !== null
      ? `  RSS after a forced full GC ${(idle.rss_gc_before_kb / 1024).toFixed(1)} MB → ${(idle.rss_gc_after_kb / 1024).toFixed(1)} MB: ${idle.rss_gc_per_conn_kb} KB per connection, ${idle.rss_gc_per_10k_conns_mb} MB per 10,000 connections`
      : "  (no forced-GC reading: inspector unavailable)",
    `  V8 heap used (after GC) ${f(idle.heap_before_mb, 1)} → ${f(idle.heap_after_mb, 1)} MB: ${f(idle.heap_per_conn_kb)} KB per connection; idle server CPU ${idle.server_cpu_idle_cores} cores; RSS after closing all ${(idle.rss_after_close_kb / 1024).toFixed(1)} MB`,
  ].join("\n");
}

export function maxLine(limitMs: number, m: ReturnType<typeof maxRate>, lowest: number | undefined): string {
  const held = m.max_rate === null ? `none (below ${lowest ?? "?"}/s)` : `${m.max_rate}/s`;
  const fail = m.first_failure
    ? `first failure at ${m.first_failure.rate}/s: p99 ${f(m.first_failure.p99_ms)} ms; ${m.first_failure.why}`
    : "no failure in the ladder";
  return `  highest rate held with p99 ≤ ${limitMs} ms: ${held} (${fail}; bounded by ${m.bounded_by})`;
}

export function maxRate(steps: Array<{ r: StepResult; v: Verdict }>, key: "ok10" | "ok50") {
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

export function writerTable(w: WriterResult): string {
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
  const s0 = w.shapes[0];
  return [
    columns(
      `Cassandra batch writer (CassandraMessageStore.write, ${s0?.conversations ?? "?"} conversations, ${s0?.callers ?? "?"} callers, ${s0?.in_flight_max ?? "?"} requests in flight), ${s0?.measured_seconds ?? "?"} s per shape:`,
      head,
      body,
    ),
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
  const s0 = w.fence[0];
  return columns(
    `Sequencer fence (CassandraSequencerStore.assign: one Paxos round per call, ${s0?.callers ?? "?"} callers over ${s0?.conversations ?? "?"} conversations), ms:`,
    head,
    body,
  );
}

export function restartTable(r: RestartResult): string {
  const head = [
    "round",
    "started",
    "ready",
    "first ack",
    "reconnected p50",
    "reconnected max",
    "live p50",
    "live p99",
    "live max",
  ];
  const row = (name: string, x: RestartRound) => [
    name,
    String(x.started_ms),
    String(x.ready_ms),
    String(x.first_ack_ms),
    String(x.reconnected_p50_ms),
    String(x.reconnected_max_ms),
    String(x.live_p50_ms),
    String(x.live_p99_ms),
    String(x.live_max_ms),
  ];
  return columns(
    `Recovery after kill -9 (ms from the restarted process's spawn; ${r.devices} SDK devices with the default reconnect backoff):`,
    head,
    [...r.rounds.map((x, i) => row(String(i + 1), x)), row("worst", r.worst)],
  );
}

export function fanoutTable(steps: FanoutStep[]): string {
  const head = [
    "msgs/s",
    "deliveries/s",
    "last p50",
    "last p99",
    "last max",
    "first p50",
    "lost",
    "dup",
    "server µs/delivery",
    "infra µs/delivery",
  ];
  const body = steps.map((x) => [
    String(x.rate),
    String(x.deliveries_per_second),
    f(x.last_member_p50_ms),
    f(x.last_member_p99_ms),
    f(x.last_member_max_ms),
    f(x.first_member_p50_ms),
    String(x.lost),
    String(x.duplicates),
    String(x.server_cpu_us_per_delivery),
    x.infra_cpu_us_per_delivery === null ? "-" : String(x.infra_cpu_us_per_delivery),
  ]);
  const first = steps[0];
  const who = first
    ? `${first.groups > 1 ? `${first.groups} groups of ` : ""}${first.total_members} members (${first.delivery} model), ${first.members} of them online`
    : "?";
  return columns(
    `Group fan-out, ${who}, ms from the scheduled send to the last (first) online member:`,
    head,
    body,
  );
}

export function stageTable(stages: StageFigures[]): string {
  const head = ["span", "spans", "start p50", "start p99", "took p50", "took p99"];
  const body = stages.map((s) => [
    s.name,
    String(s.spans),
    f(s.start_p50_ms),
    f(s.start_p99_ms),
    f(s.duration_p50_ms),
    f(s.duration_p99_ms),
  ]);
  return columns(
    "Where a traced message's time goes: per span name, ms from its trace's root span (the gateway's send) to the span's start, and the span's duration (every phase's traced messages together):",
    head,
    body,
  );
}

/** The push phase: throughput per provider stand-in, then ack → provider request on the server. */
export function pushTables(p: PushResult): string {
  const us = (x: number | null) => (x === null ? "-" : String(x));
  const parts = [
    columns(
      `Push throughput per provider stand-in (the push service in its own process with the embedded job store, ${p.users} users with one device each, ${p.window} notifications open, collapse off; stand-ins verifying every request in the bench process):`,
      [
        "provider",
        "sent",
        "seconds",
        "notifications/s",
        "push core",
        "push µs/notif",
        "stand-in core",
        "stand-in µs/notif",
        "other",
        "drain ms",
        "verdict",
      ],
      p.throughput.map((t) => [
        t.provider,
        String(t.notifications),
        f(t.seconds),
        String(t.per_second),
        f(t.service_cores),
        us(t.cpu_us_per_notification),
        f(t.stand_in_cores),
        us(t.stand_in_cpu_us_per_notification),
        f(t.other_cores),
        String(t.drain_ms),
        t.verdict,
      ]),
    ),
  ];
  const l = p.latency;
  if (l)
    parts.push(
      columns(
        `Push latency on the server process, ms from the sender's ack to the provider stand-in's receipt of the request (${l.rate} msgs/s for ${l.seconds} s to an offline user, ${l.acked}/${l.messages} acked, ack p50/p99 ${f(l.ack.p50_ms)}/${f(l.ack.p99_ms)} ms from the scheduled send; server ${f(l.server_cores)} cores, other processes ${f(l.other_cores)}):`,
        [
          "provider",
          "expected",
          "received",
          "missing",
          "dup",
          "p50",
          "p90",
          "p99",
          "max",
          "send→provider p99",
        ],
        l.by_provider.map((x) => [
          x.provider,
          String(x.expected),
          String(x.received),
          String(x.missing),
          String(x.duplicates),
          f(x.ack_to_provider.p50_ms),
          f(x.ack_to_provider.p90_ms),
          f(x.ack_to_provider.p99_ms),
          f(x.ack_to_provider.max_ms),
          f(x.send_to_provider.p99_ms),
        ]),
      ) +
        (l.send_errors > 0 || l.violations.length > 0
          ? `\n  ${l.send_errors} sends failed; protocol violations: ${l.violations.join("; ") || "none"}`
          : ""),
    );
  return parts.join("\n\n");
}
