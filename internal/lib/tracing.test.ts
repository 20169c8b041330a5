import { context, propagation, SpanKind, SpanStatusCode, TraceFlags, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import { IdService } from "../../gen/switchboard/id/v1/id_pb.js";
import { Code, SwitchboardError } from "./errors.js";
import { createLogger } from "./log.js";
import { grpcClient, targetAttributes } from "./rpc.js";
import { carrierOf, extractTrace, inSpan, linksTo, MessageSpans, startSpan, tracing } from "./tracing.js";

const exporter = new InMemorySpanExporter();

beforeAll(() => {
  // What startTracing's NodeSDK sets up, without an exporter to a network: spans land in memory.
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  trace.setGlobalTracerProvider(
    new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }),
  );
  tracing.on = true;
});
afterAll(() => {
  tracing.on = false;
});
beforeEach(() => exporter.reset());

describe("tracing helpers", () => {
  it("carry a span's context to another span through a W3C carrier", () => {
    const parent = startSpan("send", undefined);
    const carrier = carrierOf(parent)!;
    expect(carrier.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    const child = startSpan("route", carrier);
    child.end();
    parent.end();
    const [route, send] = exporter.getFinishedSpans();
    expect(route!.spanContext().traceId).toBe(send!.spanContext().traceId);
    expect(route!.parentSpanContext?.spanId).toBe(send!.spanContext().spanId);
    // A carrier without a valid traceparent is no parent: a new trace starts.
    const orphan = startSpan("send", extractTrace({ traceparent: "not-a-traceparent" }));
    orphan.end();
    expect(orphan.spanContext().traceId).not.toBe(send!.spanContext().traceId);
  });

  it("carry a sampled context that is not recorded here (a caller's), and no unsampled one", () => {
    const context = { traceId: "a".repeat(32), spanId: "b".repeat(16), isRemote: true };
    const sampled = trace.wrapSpanContext({ ...context, traceFlags: TraceFlags.SAMPLED });
    expect(sampled.isRecording()).toBe(false);
    expect(carrierOf(sampled)?.traceparent).toBe(`00-${"a".repeat(32)}-${"b".repeat(16)}-01`);
    expect(carrierOf(trace.wrapSpanContext({ ...context, traceFlags: TraceFlags.NONE }))).toBeUndefined();
  });

  it("give each message of a batch a span in its own trace, and the batch's span links to them", async () => {
    const a = startSpan("send", undefined);
    const b = startSpan("send", undefined);
    const traces = [carrierOf(a), undefined, carrierOf(b)];
    const spans = new MessageSpans<number>("sequence");
    await inSpan("process drafts", { links: linksTo(traces) }, async () => {
      traces.forEach((t, i) => {
        spans.start(i, t);
      });
      expect(spans.carrier(1)).toBeUndefined(); // sent untraced: nothing to continue
      spans.end(new Error("fenced"));
    });
    a.end();
    b.end();
    const finished = exporter.getFinishedSpans();
    const sequence = finished.filter((s) => s.name === "sequence");
    expect(sequence.map((s) => s.spanContext().traceId).sort()).toEqual(
      [a.spanContext().traceId, b.spanContext().traceId].sort(),
    );
    expect(sequence.every((s) => s.status.code === SpanStatusCode.ERROR)).toBe(true);
    const batch = finished.find((s) => s.name === "process drafts")!;
    expect(batch.links.map((l) => l.context.spanId).sort()).toEqual(
      [a.spanContext().spanId, b.spanContext().spanId].sort(),
    );
  });

  it("mark a span failed when its work throws, and end it", async () => {
    await expect(inSpan("history", {}, async () => Promise.reject(new Error("boom")))).rejects.toThrow(
      "boom",
    );
    const [span] = exporter.getFinishedSpans();
    expect(span!.status).toMatchObject({ code: SpanStatusCode.ERROR, message: "boom" });
  });

  it("on a server span, count only the server's faults as errors, each with its error.type", async () => {
    const fail = (code: Code, reason: string) =>
      inSpan(reason, { kind: SpanKind.SERVER }, async () => {
        throw new SwitchboardError(code, reason, reason);
      }).catch(() => undefined);
    await fail(Code.PERMISSION_DENIED, "NOT_MEMBER");
    await fail(Code.UNAVAILABLE, "STORAGE_UNAVAILABLE");
    const byName = new Map(exporter.getFinishedSpans().map((s) => [s.name, s]));
    const notMember = byName.get("NOT_MEMBER")!;
    expect(notMember.status.code).toBe(SpanStatusCode.UNSET);
    expect(notMember.attributes["error.type"]).toBe("NOT_MEMBER");
    // Not a gRPC span (no rpc.system): no gRPC status code on it.
    expect(notMember.attributes["rpc.grpc.status_code"]).toBeUndefined();
    // The exception's type is its class, not the numeric code the SDK would take from `code`.
    expect(notMember.events[0]!.attributes!["exception.type"]).toBe("SwitchboardError");
    expect(byName.get("STORAGE_UNAVAILABLE")!.status.code).toBe(SpanStatusCode.ERROR);
    expect(byName.get("STORAGE_UNAVAILABLE")!.attributes["error.type"]).toBe("STORAGE_UNAVAILABLE");
  });

  it("put rpc.grpc.status_code on every gRPC span, 0 when the call succeeds", async () => {
    const rpc = { "rpc.system": "grpc", "rpc.service": "s.v1.S", "rpc.method": "M" };
    await inSpan("ok", { kind: SpanKind.SERVER, attributes: rpc }, async () => 1);
    await inSpan("denied", { kind: SpanKind.SERVER, attributes: rpc }, async () => {
      throw new SwitchboardError(Code.PERMISSION_DENIED, "NOT_MEMBER", "no");
    }).catch(() => undefined);
    await inSpan("plain", { kind: SpanKind.CLIENT, attributes: rpc }, async () => {
      throw new TypeError("bug");
    }).catch(() => undefined);
    const byName = new Map(exporter.getFinishedSpans().map((s) => [s.name, s]));
    expect(byName.get("ok")!.attributes["rpc.grpc.status_code"]).toBe(0);
    expect(byName.get("denied")!.attributes["rpc.grpc.status_code"]).toBe(Code.PERMISSION_DENIED);
    expect(byName.get("denied")!.status.code).toBe(SpanStatusCode.UNSET);
    // An error without a code fails the call with UNKNOWN; its error.type is its class.
    expect(byName.get("plain")!.attributes).toMatchObject({
      "rpc.grpc.status_code": 2,
      "error.type": "TypeError",
    });
    expect(byName.get("plain")!.status.code).toBe(SpanStatusCode.ERROR);
  });

  it("name the server a gRPC client span calls, as its target names it", async () => {
    expect(targetAttributes("id.sb.svc:7001")).toEqual({
      "server.address": "id.sb.svc",
      "server.port": 7001,
    });
    expect(targetAttributes("dns:///switchboard-id.prod.svc.cluster.local:7001")).toEqual({
      "server.address": "switchboard-id.prod.svc.cluster.local",
      "server.port": 7001,
    });
    expect(targetAttributes("dns:id:7001")).toEqual({ "server.address": "id", "server.port": 7001 });
    expect(targetAttributes("ipv4:10.0.0.7:7001")).toEqual({
      "server.address": "10.0.0.7",
      "server.port": 7001,
    });
    expect(targetAttributes("[::1]:7001")).toEqual({ "server.address": "::1", "server.port": 7001 });
    expect(targetAttributes("ipv4:10.0.0.7:7001,10.0.0.8:7001")).toEqual({});
    expect(targetAttributes("unix:/run/sb.sock")).toEqual({});
    // The span a call within a trace makes carries them (here a call that finds nobody listening).
    const client = grpcClient(IdService, "127.0.0.1:9");
    try {
      await inSpan("caller", {}, () => client.allocateIds({ count: 1 }, { timeoutMs: 200 })).catch(
        () => undefined,
      );
    } finally {
      client.close();
    }
    const call = exporter.getFinishedSpans().find((s) => s.kind === SpanKind.CLIENT)!;
    expect(call.attributes).toMatchObject({
      "rpc.system": "grpc",
      "server.address": "127.0.0.1",
      "server.port": 9,
    });
  });

  it("put the active span's trace_id and span_id on log lines, and nothing outside a span", async () => {
    const lines: string[] = [];
    const write = vi.spyOn(process.stderr, "write").mockImplementation((chunk: string | Uint8Array) => {
      lines.push(String(chunk));
      return true;
    });
    try {
      const log = createLogger({ service: "test" });
      let ids: { traceId: string; spanId: string } | undefined;
      await inSpan("send", {}, async (span) => {
        ids = span.spanContext();
        log.warn("inside");
      });
      log.warn("outside");
      const [inside, outside] = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(inside).toMatchObject({ msg: "inside", trace_id: ids!.traceId, span_id: ids!.spanId });
      expect(outside!.trace_id).toBeUndefined();
    } finally {
      write.mockRestore();
    }
  });
});
