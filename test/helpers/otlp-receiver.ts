/**
 * An OTLP/HTTP trace receiver for tests (JSON encoding: start the exporter with
 * OTEL_EXPORTER_OTLP_PROTOCOL=http/json): collects every span posted to /v1/traces, as a collector
 * would receive them.
 */
import { createServer, type Server } from "node:http";

export interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind?: number;
  links?: Array<{ traceId: string; spanId: string }>;
  /** Absent or code 0: unset; 1: OK; 2: ERROR. */
  status?: { code?: number; message?: string };
  attributes?: Array<{ key: string; value: { intValue?: string | number; stringValue?: string } }>;
  /** The attributes of the resource (process) that made the span (added by the receiver). */
  resource?: OtlpSpan["attributes"];
}

export class OtlpReceiver {
  private constructor(
    private readonly server: Server,
    readonly port: number,
    /** Every span received so far, in arrival order. */
    readonly spans: OtlpSpan[],
  ) {}

  static async start(): Promise<OtlpReceiver> {
    const spans: OtlpSpan[] = [];
    const server = createServer((req, res) => {
      let body = "";
      req.on("data", (d: Buffer) => {
        body += d.toString();
      });
      req.on("end", () => {
        if (req.url === "/v1/traces") {
          const request = JSON.parse(body) as {
            resourceSpans?: Array<{
              resource?: { attributes?: OtlpSpan["attributes"] };
              scopeSpans?: Array<{ spans?: OtlpSpan[] }>;
            }>;
          };
          for (const rs of request.resourceSpans ?? [])
            for (const ss of rs.scopeSpans ?? [])
              for (const span of ss.spans ?? [])
                spans.push({ ...span, resource: rs.resource?.attributes ?? [] });
        }
        res.writeHead(200, { "content-type": "application/json" }).end("{}");
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    return new OtlpReceiver(server, (server.address() as { port: number }).port, spans);
  }

  /** The environment that points an exporting process here, flushing spans every 100 ms. */
  get env(): Record<string, string> {
    return {
      SWITCHBOARD_TRACING_ENABLED: "true",
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${this.port}`,
      OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
      OTEL_BSP_SCHEDULE_DELAY: "100",
    };
  }

  close(): void {
    this.server.close();
  }
}

/** A span attribute's value (numbers as numbers). */
export function spanAttribute(s: OtlpSpan, key: string): string | number | undefined {
  const v = s.attributes?.find((a) => a.key === key)?.value;
  return v?.intValue !== undefined ? Number(v.intValue) : v?.stringValue;
}

/** A resource attribute of the process that made the span. */
export function resourceAttribute(s: OtlpSpan, key: string): string | undefined {
  const v = s.resource?.find((a) => a.key === key)?.value;
  return v?.stringValue ?? (v?.intValue === undefined ? undefined : String(v.intValue));
}
