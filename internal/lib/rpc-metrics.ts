/**
 * Per-method gRPC meters (lib/metrics.ts `grpc`): label children resolved once per method, not per
 * call, because the Deliver streams count one message per delivery.
 */

import { performance } from "node:perf_hooks";
import type { DescMethod } from "@bufbuild/protobuf";
import type { Counter } from "prom-client";
import type { GrpcMetrics } from "./metrics.js";

/** grpc_code values, indexed by status code: the names the grpc-ecosystem interceptors use. */
const CODE_NAMES = [
  "OK",
  "Canceled",
  "Unknown",
  "InvalidArgument",
  "DeadlineExceeded",
  "NotFound",
  "AlreadyExists",
  "PermissionDenied",
  "ResourceExhausted",
  "FailedPrecondition",
  "Aborted",
  "OutOfRange",
  "Unimplemented",
  "Internal",
  "Unavailable",
  "DataLoss",
  "Unauthenticated",
] as const;

export function grpcCodeName(code: number): string {
  return CODE_NAMES[code] ?? `Code(${code})`;
}

const GRPC_TYPES = {
  unary: "unary",
  server_streaming: "server_stream",
  client_streaming: "client_stream",
  bidi_streaming: "bidi_stream",
} as const;

/** Meters of one method on one side (this process's server, or its clients). */
export interface MethodMeter {
  /** Counts a started call; the returned function records its status code, once. */
  start(): (code: number) => void;
  received(): void;
  sent(): void;
}

export function methodMeter(
  metrics: GrpcMetrics,
  side: "server" | "client",
  method: DescMethod,
): MethodMeter {
  const labels = [GRPC_TYPES[method.methodKind], method.parent.typeName, method.name];
  const started = (side === "server" ? metrics.serverStarted : metrics.clientStarted).labels(...labels);
  const handled = side === "server" ? metrics.serverHandled : metrics.clientHandled;
  const seconds = (side === "server" ? metrics.serverHandlingSeconds : metrics.clientHandlingSeconds).labels(
    ...labels,
  );
  const byCode = new Map<number, Counter.Internal>();
  const handledAs = (code: number): Counter.Internal => {
    let child = byCode.get(code);
    if (!child) {
      child = handled.labels(...labels, grpcCodeName(code));
      byCode.set(code, child);
    }
    return child;
  };
  // A method that was never called still shows up, at zero, so that rate() and dashboards see it.
  started.inc(0);
  handledAs(0).inc(0);
  // Messages are counted by servers only: a client-side count would repeat the serving side's.
  const received = side === "server" ? metrics.serverMsgReceived.labels(...labels) : undefined;
  const sent = side === "server" ? metrics.serverMsgSent.labels(...labels) : undefined;
  received?.inc(0);
  sent?.inc(0);
  return {
    start() {
      started.inc();
      const t0 = performance.now();
      let done = false;
      return (code) => {
        if (done) return;
        done = true;
        handledAs(code).inc();
        seconds.observe((performance.now() - t0) / 1000);
      };
    },
    received: () => received?.inc(),
    sent: () => sent?.inc(),
  };
}
