/**
 * Prometheus metrics, one registry per platform instance (so tests can run several in a process).
 * Names follow Prometheus conventions: switchboard_<subsystem>_<what>_<unit|total>.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";

export function createMetrics() {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: "switchboard_process_" });
  const r = [registry];
  return {
    registry,
    connections: new Gauge({
      name: "switchboard_gateway_connections",
      help: "Open authenticated WebSocket connections.",
      registers: r,
    }),
    connectsTotal: new Counter({
      name: "switchboard_gateway_connects_total",
      help: "Connection attempts by result.",
      labelNames: ["result"],
      registers: r,
    }),
    framesTotal: new Counter({
      name: "switchboard_gateway_frames_total",
      help: "Client frames received by kind.",
      labelNames: ["kind"],
      registers: r,
    }),
    errorsTotal: new Counter({
      name: "switchboard_gateway_errors_total",
      help: "Error replies by reason.",
      labelNames: ["reason"],
      registers: r,
    }),
    closesTotal: new Counter({
      name: "switchboard_gateway_closes_total",
      help: "Connections closed by the server, by close code.",
      labelNames: ["code"],
      registers: r,
    }),
    messagesTotal: new Counter({
      name: "switchboard_messages_appended_total",
      help: "Messages made durable (acked).",
      registers: r,
    }),
    appendSeconds: new Histogram({
      name: "switchboard_message_append_seconds",
      help: "Time from a valid send to its durable append.",
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers: r,
    }),
    deliveriesTotal: new Counter({
      name: "switchboard_router_deliveries_total",
      help: "Message events handed to gateway sessions.",
      registers: r,
    }),
    routerBatchSeconds: new Histogram({
      name: "switchboard_router_batch_seconds",
      help: "Time to route one consumed batch (inbox write and fan-out).",
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers: r,
    }),
    gatewayStreams: new Gauge({
      name: "switchboard_router_gateway_streams",
      help: "Deliver streams this router holds open to gateways.",
      registers: r,
    }),
    gatewayStreamQueueBytes: new Gauge({
      name: "switchboard_router_gateway_stream_queue_bytes",
      help: "Bytes queued on this router's Deliver streams, not yet taken by gRPC (all gateways).",
      registers: r,
    }),
    deliveriesDroppedTotal: new Counter({
      name: "switchboard_router_deliveries_dropped_total",
      help: "Deliver events not handed to a gateway, by reason (queue_full: the stream's byte bound; unreachable: the gateway's stream is down). Message events stay in the inbox: clients recover them by gap catch-up or sync.",
      labelNames: ["reason"],
      registers: r,
    }),
    gatewayStreamFailuresTotal: new Counter({
      name: "switchboard_router_gateway_stream_failures_total",
      help: "Deliver streams to gateways that ended with an error (gateway gone, restarting or unreachable).",
      registers: r,
    }),
    pushNotifications: new Counter({
      name: "switchboard_push_notifications_total",
      help: "Push notifications by result.",
      labelNames: ["result"],
      registers: r,
    }),
    invariantViolations: new Counter({
      name: "switchboard_invariant_violations_total",
      help: "Assertions that failed in production; alert on any.",
      registers: r,
    }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
