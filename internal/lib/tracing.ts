/**
 * OpenTelemetry traces of the message path (tracing.enabled). One trace follows a message from the
 * client's send through the gateway, the log, the sequencer, the inbox owner and the router to every
 * gateway that delivers it; the W3C trace context travels in Kafka record headers and in the router's
 * Deliver requests. Where one batch serves many messages, the batch's span links to each message's.
 *
 * Off (the default), the SDK is never loaded and `tracing.on` is false: hot paths check it before
 * making anything, so tracing off costs one branch.
 */
import {
  type Attributes,
  type Context,
  context,
  type Link,
  propagation,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  TraceFlags,
  trace,
} from "@opentelemetry/api";
import { BUILD_VERSION } from "./build-info.js";
import type { Config } from "./config.js";
import type { Logger } from "./log.js";

/** W3C trace context as carried between processes: `traceparent` (and `tracestate`, if any). */
export type TraceCarrier = Record<string, string>;

/** Whether spans are made (tracing.enabled and the SDK started). */
export const tracing = { on: false };

const tracer = trace.getTracer("switchboard");

/**
 * Starts the OpenTelemetry SDK when tracing.enabled: OTLP export as the OTEL_EXPORTER_OTLP_*
 * variables say, parent-based sampling at tracing.sampleRatio. Returns what flushes and stops it.
 */
export async function startTracing(
  config: Pick<Config, "tracing">,
  role: string,
  log: Logger,
): Promise<{ close(): Promise<void> } | undefined> {
  if (!config.tracing.enabled) return undefined;
  const [{ NodeSDK }, { ParentBasedSampler, TraceIdRatioBasedSampler }, { resourceFromAttributes }] =
    await Promise.all([
      import("@opentelemetry/sdk-node"),
      import("@opentelemetry/sdk-trace-base"),
      import("@opentelemetry/resources"),
    ]);
  const sdk = new NodeSDK({
    // One service per role, so that a trace backend's service graph shows the hops between them.
    serviceName: process.env.OTEL_SERVICE_NAME ?? (role === "all" ? "switchboard" : `switchboard-${role}`),
    resource: resourceFromAttributes({ "service.version": BUILD_VERSION, "switchboard.role": role }),
    sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(config.tracing.sampleRatio) }),
    // Spans are made by hand on the message path; automatic instrumentation of every library call
    // (HTTP, gRPC, the drivers) would cost more than it tells.
    instrumentations: [],
  });
  sdk.start();
  tracing.on = true;
  log.info("tracing on", {
    endpoint: process.env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? process.env.OTEL_EXPORTER_OTLP_ENDPOINT,
    sampleRatio: config.tracing.sampleRatio,
  });
  return {
    close: async () => {
      tracing.on = false;
      await sdk.shutdown();
    },
  };
}

/** The context a carrier describes (ROOT_CONTEXT when it carries none). */
export function extractTrace(carrier: TraceCarrier | undefined): Context {
  if (!carrier) return ROOT_CONTEXT;
  return propagation.extract(ROOT_CONTEXT, carrier);
}

/**
 * The carrier of `span`: undefined when its trace is not sampled (nothing to join). A span that is
 * not recorded here but stands for a sampled one elsewhere (a caller's context, as an in-process gRPC
 * call passes it on) has one.
 */
export function carrierOf(span: Span): TraceCarrier | undefined {
  const sc = span.spanContext();
  if (!trace.isSpanContextValid(sc) || (sc.traceFlags & TraceFlags.SAMPLED) === 0) return undefined;
  const carrier: TraceCarrier = {};
  propagation.inject(trace.setSpan(ROOT_CONTEXT, span), carrier);
  return carrier;
}

/** The carrier of the active span, if any. */
export function activeCarrier(): TraceCarrier | undefined {
  const span = trace.getSpan(context.active());
  return span ? carrierOf(span) : undefined;
}

/** A span under `parent` (a context or a carrier); the caller ends it. */
export function startSpan(
  name: string,
  parent: Context | TraceCarrier | undefined,
  options: { kind?: SpanKind; attributes?: Attributes; links?: Link[] } = {},
): Span {
  const ctx = parent === undefined || isContext(parent) ? (parent ?? context.active()) : extractTrace(parent);
  return tracer.startSpan(name, options, ctx);
}

function isContext(x: Context | TraceCarrier): x is Context {
  return typeof (x as Context).getValue === "function";
}

/** Links to the spans of `carriers` (one batch span serving many messages). */
export function linksTo(carriers: Iterable<TraceCarrier | undefined>): Link[] {
  const links: Link[] = [];
  for (const c of carriers) {
    if (!c) continue;
    const spanContext = trace.getSpanContext(extractTrace(c));
    if (spanContext) links.push({ context: spanContext });
  }
  return links;
}

/**
 * gRPC status codes that are the server's failure (OpenTelemetry's gRPC conventions): UNKNOWN,
 * DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS. The others (NOT_FOUND,
 * PERMISSION_DENIED, INVALID_ARGUMENT, RESOURCE_EXHAUSTED...) are the caller's, not a span error of
 * a server span.
 */
const SERVER_FAULT_CODES = new Set([2, 4, 12, 13, 14, 15]);

/**
 * Marks `span` as failed by `err` (OpenTelemetry's conventions): an `exception` event whose type is
 * the error's class name (the SDK would take a numeric `code` instead), `error.type` a class of
 * failure that a backend can group by (a SwitchboardError's reason, such as NOT_MEMBER; otherwise
 * the error's class name), and, unless `status` is false, the ERROR status.
 */
export function recordFailure(span: Span, err: unknown, status = true): void {
  const e = err instanceof Error ? err : new Error(String(err));
  span.recordException({ name: e.name, message: e.message, ...(e.stack ? { stack: e.stack } : {}) });
  const reason = (err as { reason?: unknown } | null)?.reason;
  span.setAttribute("error.type", typeof reason === "string" && reason !== "" ? reason : e.name);
  if (status) span.setStatus({ code: SpanStatusCode.ERROR, message: e.message });
}

/**
 * Runs `fn` in a span that ends with it, recording a thrown error (recordFailure). A gRPC span (its
 * `rpc.system` is grpc) carries `rpc.grpc.status_code`: 0 when `fn` returns, the error's code when
 * it throws one (SwitchboardError). A server span is an error only when the code is the server's
 * fault; a caller's fault (NOT_FOUND, INVALID_ARGUMENT...) keeps it unset, with `error.type`.
 */
export async function inSpan<T>(
  name: string,
  options: { kind?: SpanKind; attributes?: Attributes; links?: Link[]; parent?: Context | TraceCarrier },
  fn: (span: Span) => Promise<T>,
): Promise<T> {
  const span = startSpan(name, options.parent, options);
  const grpcSpan = options.attributes?.["rpc.system"] === "grpc";
  try {
    const out = await context.with(trace.setSpan(context.active(), span), () => fn(span));
    if (grpcSpan) span.setAttribute("rpc.grpc.status_code", 0);
    return out;
  } catch (err) {
    const code = (err as { code?: unknown } | null)?.code;
    const grpcCode = typeof code === "number" ? code : undefined;
    if (grpcSpan) span.setAttribute("rpc.grpc.status_code", grpcCode ?? 2); // UNKNOWN, as grpc-js answers
    const callersFault =
      options.kind === SpanKind.SERVER && grpcCode !== undefined && !SERVER_FAULT_CODES.has(grpcCode);
    recordFailure(span, err, !callersFault);
    throw err;
  } finally {
    span.end();
  }
}

/**
 * One span per message of a batch, each a child of its message's own trace (messages sent untraced
 * get none), ended together with the batch's outcome. Their carriers go on with the messages.
 */
export class MessageSpans<K> {
  private readonly spans = new Map<K, Span>();

  constructor(private readonly name: string) {}

  start(key: K, carrier: TraceCarrier | undefined, attributes?: Attributes): void {
    if (!carrier) return;
    this.spans.set(key, startSpan(this.name, carrier, attributes ? { attributes } : {}));
  }

  get(key: K): Span | undefined {
    return this.spans.get(key);
  }

  carrier(key: K): TraceCarrier | undefined {
    const span = this.spans.get(key);
    return span ? carrierOf(span) : undefined;
  }

  /** Ends every span, as failed when `err` is given. */
  end(err?: unknown): void {
    for (const span of this.spans.values()) {
      if (err !== undefined) recordFailure(span, err);
      span.end();
    }
    this.spans.clear();
  }
}

/** trace_id and span_id of the active span, for log lines. */
export function activeTraceFields(): { trace_id: string; span_id: string } | undefined {
  const sc = trace.getSpanContext(context.active());
  return sc && trace.isSpanContextValid(sc) ? { trace_id: sc.traceId, span_id: sc.spanId } : undefined;
}

export { context, ROOT_CONTEXT, type Span, SpanKind, SpanStatusCode, trace };
