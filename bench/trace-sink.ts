/**
 * Where the servers of a `--tracing` run export their spans: an OTLP/HTTP endpoint in the generator's
 * process that reads each export and discards it, counting requests and bytes (so the run shows that
 * spans were made and sent, and what the export weighed).
 */
import { createServer } from "node:http";

export interface TraceSink {
  readonly env: Record<string, string>;
  stats(): { exports: number; bytes: number };
  close(): void;
}

export async function startTraceSink(sampleRatio: number): Promise<TraceSink> {
  let exports = 0;
  let bytes = 0;
  const server = createServer((req, res) => {
    req.on("data", (d: Buffer) => {
      bytes += d.length;
    });
    req.on("end", () => {
      exports++;
      res.writeHead(200, { "content-type": "application/x-protobuf" }).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as { port: number };
  return {
    env: {
      SWITCHBOARD_TRACING_ENABLED: "true",
      SWITCHBOARD_TRACING_SAMPLE_RATIO: String(sampleRatio),
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
    },
    stats: () => ({ exports, bytes }),
    close: () => server.close(),
  };
}
