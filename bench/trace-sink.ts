/**
 * Where the servers of a `--tracing` run export their spans: an OTLP/HTTP endpoint (JSON encoding) in
 * the generator's process. It counts exports and bytes (so the run shows what the export weighed) and
 * keeps, per span name, when the span started after its trace's root and how long it took: where a
 * traced message's time goes, stage by stage (send → sequence → inbox → route → deliver, and the
 * storage and Kafka requests made on its behalf).
 */
import { createServer } from "node:http";
import { nearestRank } from "./hist.js";

interface JsonSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  startTimeUnixNano: string;
  endTimeUnixNano: string;
}

/** One span name's figures, in ms: start after the trace's root span started, and duration. */
export interface StageFigures {
  name: string;
  spans: number;
  start_p50_ms: number;
  start_p99_ms: number;
  duration_p50_ms: number;
  duration_p99_ms: number;
}

export interface TraceSink {
  readonly env: Record<string, string>;
  stats(): { exports: number; bytes: number; spans: number };
  /** Per span name, over the traces whose root arrived (sorted by median start). */
  stages(): StageFigures[];
  close(): void;
}

/** Spans kept for the stage table at most (the oldest traces are what a run's table is made of). */
const SPANS_KEPT_MAX = 500_000;

export async function startTraceSink(sampleRatio: number): Promise<TraceSink> {
  let exports = 0;
  let bytes = 0;
  const spans: JsonSpan[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (d: Buffer) => {
      bytes += d.length;
      chunks.push(d);
    });
    req.on("end", () => {
      exports++;
      if (req.url === "/v1/traces" && spans.length < SPANS_KEPT_MAX) collect(Buffer.concat(chunks), spans);
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as { port: number };
  return {
    env: {
      SWITCHBOARD_TRACING_ENABLED: "true",
      SWITCHBOARD_TRACING_SAMPLE_RATIO: String(sampleRatio),
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
      OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
    },
    stats: () => ({ exports, bytes, spans: spans.length }),
    stages: () => stageFigures(spans),
    close: () => server.close(),
  };
}

function collect(body: Buffer, into: JsonSpan[]): void {
  let request: { resourceSpans?: Array<{ scopeSpans?: Array<{ spans?: JsonSpan[] }> }> };
  try {
    request = JSON.parse(body.toString()) as typeof request;
  } catch {
    return; // not an OTLP/JSON export: counted in bytes, nothing to learn from
  }
  for (const rs of request.resourceSpans ?? [])
    for (const ss of rs.scopeSpans ?? []) for (const span of ss.spans ?? []) into.push(span);
}

/** Per span name: start after the root of its trace, and duration (ms), for traces with a root. */
export function stageFigures(spans: readonly JsonSpan[]): StageFigures[] {
  const rootStart = new Map<string, bigint>();
  for (const s of spans) if (!s.parentSpanId) rootStart.set(s.traceId, BigInt(s.startTimeUnixNano));
  const byName = new Map<string, { starts: number[]; durations: number[] }>();
  for (const s of spans) {
    const root = rootStart.get(s.traceId);
    if (root === undefined) continue;
    const start = BigInt(s.startTimeUnixNano);
    let f = byName.get(s.name);
    if (!f) {
      f = { starts: [], durations: [] };
      byName.set(s.name, f);
    }
    f.starts.push(Number(start - root) / 1e6);
    f.durations.push(Number(BigInt(s.endTimeUnixNano) - start) / 1e6);
  }
  const round = (ms: number) => Math.round(ms * 100) / 100;
  return [...byName]
    .map(([name, f]) => {
      f.starts.sort((a, b) => a - b);
      f.durations.sort((a, b) => a - b);
      return {
        name,
        spans: f.starts.length,
        start_p50_ms: round(nearestRank(f.starts, 50)),
        start_p99_ms: round(nearestRank(f.starts, 99)),
        duration_p50_ms: round(nearestRank(f.durations, 50)),
        duration_p99_ms: round(nearestRank(f.durations, 99)),
      };
    })
    .sort((a, b) => a.start_p50_ms - b.start_p50_ms);
}
