/** Metrics of the operator's runtime: work queue, reconciles, watches, leadership. */
import { Counter, Gauge, Histogram, Registry } from "prom-client";

export interface OperatorRuntimeMetrics {
  registry: Registry;
  queueDepth: Gauge;
  queueAddsTotal: Counter;
  queueRetriesTotal: Counter;
  reconcileDurationSeconds: Histogram;
  reconcileErrorsTotal: Counter;
  watchSecondsSinceLastEvent: Gauge;
  watchRestartsTotal: Counter;
  relistsTotal: Counter;
  leader: Gauge;
  /** Informers report the time of their last event here; the gauge is computed on collect. */
  lastEventAt: Map<string, number>;
}

export function createOperatorRuntimeMetrics(registry = new Registry()): OperatorRuntimeMetrics {
  const registers = [registry];
  const lastEventAt = new Map<string, number>();
  return {
    registry,
    lastEventAt,
    queueDepth: new Gauge({
      name: "switchboard_operator_workqueue_depth",
      help: "Keys waiting in the work queue.",
      labelNames: ["queue"],
      registers,
    }),
    queueAddsTotal: new Counter({
      name: "switchboard_operator_workqueue_adds_total",
      help: "Keys added to the work queue.",
      labelNames: ["queue"],
      registers,
    }),
    queueRetriesTotal: new Counter({
      name: "switchboard_operator_workqueue_retries_total",
      help: "Keys requeued with backoff after a failed reconcile.",
      labelNames: ["queue"],
      registers,
    }),
    reconcileDurationSeconds: new Histogram({
      name: "switchboard_operator_reconcile_duration_seconds",
      help: "Time of one reconcile, by controller and result.",
      labelNames: ["controller", "result"],
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    }),
    reconcileErrorsTotal: new Counter({
      name: "switchboard_operator_reconcile_errors_total",
      help: "Reconciles that failed, by controller.",
      labelNames: ["controller"],
      registers,
    }),
    watchSecondsSinceLastEvent: new Gauge({
      name: "switchboard_operator_watch_seconds_since_last_event",
      help: "Seconds since the informer's watch last delivered an event (bookmarks included).",
      labelNames: ["informer"],
      registers,
      collect() {
        const now = Date.now();
        for (const [informer, at] of lastEventAt) this.set({ informer }, (now - at) / 1000);
      },
    }),
    watchRestartsTotal: new Counter({
      name: "switchboard_operator_watch_restarts_total",
      help: "Watches restarted (ended, failed, or silent past the timeout).",
      labelNames: ["informer", "reason"],
      registers,
    }),
    relistsTotal: new Counter({
      name: "switchboard_operator_relists_total",
      help: "Full lists of an informer (start, period, after a watch failure).",
      labelNames: ["informer"],
      registers,
    }),
    leader: new Gauge({
      name: "switchboard_operator_leader",
      help: "1 while this replica holds the leader Lease.",
      registers,
    }),
  };
}
