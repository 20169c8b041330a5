/**
 * Switchboard's figures as ratios of a peer's, measured in the same run with the same generator and
 * pinning (the comparison issue 12 asks the bench to print): p50 and p99 at each rate both measured,
 * the highest rate held with p99 ≤ 10 ms and ≤ 50 ms, server CPU µs per message, RSS per idle
 * connection, and the connect rate with the server's CPU per connect. A ratio is Switchboard ÷ peer: above 1, Switchboard needs more (latency, CPU, memory),
 * or for rates holds more.
 */
import type { PeerIdleResult } from "./centrifugo.js";
import type { IdleResult } from "./idle.js";
import type { StepResult } from "./loadgen.js";
import { f } from "./report.js";

type Step = StepResult & { verdict: string };
interface MaxRate {
  max_rate: number | null;
}

/** One peer configuration's run, as the phase records it. */
export interface PeerRun {
  name: string;
  ladder: Step[];
  max_rate_p99_10ms: MaxRate;
  max_rate_p99_50ms: MaxRate;
  idle_connections?: PeerIdleResult;
}

interface Pair {
  ours: number | null;
  theirs: number | null;
  ratio: number | null;
}

export interface PeerRatios {
  peer: string;
  per_rate: Array<{ rate: number; p50_ms: Pair; p99_ms: Pair; server_cpu_us_per_msg: Pair }>;
  max_rate_p99_10ms: Pair;
  max_rate_p99_50ms: Pair;
  /** As found (no forced collection on either side). */
  idle_rss_per_conn_kb: Pair | null;
  connects_per_second: Pair | null;
  server_cpu_us_per_connect: Pair | null;
}

const pair = (ours: number | null | undefined, theirs: number | null | undefined): Pair => ({
  ours: ours ?? null,
  theirs: theirs ?? null,
  ratio: ours != null && theirs != null && theirs > 0 ? Math.round((100 * ours) / theirs) / 100 : null,
});

export function peerRatios(summary: Record<string, unknown>, peers: Record<string, PeerRun>): PeerRatios[] {
  const ours = (summary.ladder as Step[] | undefined) ?? [];
  const ourIdle = summary.idle_connections as IdleResult | undefined;
  return Object.values(peers).map((peer) => ({
    peer: peer.name,
    per_rate: peer.ladder.flatMap((theirs) => {
      const x = ours.find((o) => o.rate === theirs.rate);
      return x
        ? [
            {
              rate: theirs.rate,
              p50_ms: pair(x.latency.p50_ms, theirs.latency.p50_ms),
              p99_ms: pair(x.latency.p99_ms, theirs.latency.p99_ms),
              server_cpu_us_per_msg: pair(x.server_cpu_us_per_msg, theirs.server_cpu_us_per_msg),
            },
          ]
        : [];
    }),
    max_rate_p99_10ms: pair(
      (summary.max_rate_p99_10ms as MaxRate | undefined)?.max_rate,
      peer.max_rate_p99_10ms.max_rate,
    ),
    max_rate_p99_50ms: pair(
      (summary.max_rate_p99_50ms as MaxRate | undefined)?.max_rate,
      peer.max_rate_p99_50ms.max_rate,
    ),
    idle_rss_per_conn_kb:
      ourIdle && peer.idle_connections
        ? pair(ourIdle.rss_per_conn_kb, peer.idle_connections.rss_per_conn_kb)
        : null,
    connects_per_second:
      ourIdle && peer.idle_connections
        ? pair(ourIdle.connects_per_second, peer.idle_connections.connects_per_second)
        : null,
    server_cpu_us_per_connect:
      ourIdle && peer.idle_connections
        ? pair(ourIdle.server_cpu_us_per_connect, peer.idle_connections.server_cpu_us_per_connect)
        : null,
  }));
}

const shown = (p: Pair, digits = 2) => `${f(p.ours, digits)} vs ${f(p.theirs, digits)} (×${f(p.ratio)})`;

export function ratioReport(all: PeerRatios[]): string {
  const lines = [
    "Switchboard vs each peer configuration, Switchboard ÷ peer (same run, generator and pinning):",
  ];
  for (const r of all) {
    lines.push(`  ${r.peer}:`);
    lines.push(`    highest rate held, p99 ≤ 10 ms: ${shown(r.max_rate_p99_10ms, 0)} msgs/s`);
    lines.push(`    highest rate held, p99 ≤ 50 ms: ${shown(r.max_rate_p99_50ms, 0)} msgs/s`);
    for (const x of r.per_rate)
      lines.push(
        `    at ${x.rate}/s: p50 ${shown(x.p50_ms)} ms, p99 ${shown(x.p99_ms)} ms, server CPU ${shown(x.server_cpu_us_per_msg, 0)} µs per message`,
      );
    if (r.idle_rss_per_conn_kb)
      lines.push(`    RSS per idle connection: ${shown(r.idle_rss_per_conn_kb)} KB`);
    if (r.connects_per_second && r.server_cpu_us_per_connect)
      lines.push(
        `    connects: ${shown(r.connects_per_second, 0)} per second, server CPU ${shown(r.server_cpu_us_per_connect, 0)} µs per connect`,
      );
  }
  return lines.join("\n");
}
