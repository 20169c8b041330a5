/**
 * Metrics of the operator's runtime: work queue, reconciles, watches, leadership. One registry per
 * operator instance (tests run several in a process), names switchboard_operator_<what>_<unit|total>.
 */
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { registerBuildInfo } from "../../internal/lib/build-info.js";

export interface OperatorRuntimeMetrics {
  registry: Registry;
  /** Keys waiting (not delayed, not being processed), label queue. */
  queueDepth: Gauge;
  /** Calls of add() that queued a key, label queue. */
  queueAddsTotal: Counter;
  /** Keys requeued with backoff after a failed reconcile, label queue. */
  queueRetriesTotal: Counter;
  /** Labels controller (the queue's name) and result (success, error). */
  reconcileDurationSeconds: Histogram;
  /** Label controller. */
  reconcileErrorsTotal: Counter;
  /** Label informer; computed on collect() from the time of each informer's last watch event. */
  watchLastEventTimestampSeconds: Gauge;
  /** Labels informer and reason (ended, error, gone, silent). */
  watchRestartsTotal: Counter;
  /** Labels informer and reason (start, periodic, silent, gone). */
  relistsTotal: Counter;
  /** 1 while this replica holds the leader Lease. */
  leader: Gauge;
  /**
   * Per ChatCluster (labels chatcluster_namespace, chatcluster): 1 while its Ready condition is True,
   * 0 otherwise; set by the leader after each reconcile, removed when the ChatCluster is gone.
   */
  chatclusterReady: Gauge;
}

export function createOperatorRuntimeMetrics(registry = new Registry()): OperatorRuntimeMetrics {
  const registers = [registry];
  const metrics: OperatorRuntimeMetrics = {
    registry,
    queueDepth: new Gauge({
      name: "switchboard_operator_workqueue_depth",
      help: "Keys waiting in the work queue (not delayed, not being processed).",
      labelNames: ["queue"],
      registers,
    }),
    queueAddsTotal: new Counter({
      name: "switchboard_operator_workqueue_adds_total",
      help: "Keys added to the work queue (duplicates of a waiting key not counted).",
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
      help: "Time of one reconcile, by controller and result (success, error).",
      labelNames: ["controller", "result"],
      buckets: [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    }),
    reconcileErrorsTotal: new Counter({
      name: "switchboard_operator_reconcile_errors_total",
      help: "Reconciles that failed, by controller.",
      labelNames: ["controller"],
      registers,
    }),
    watchLastEventTimestampSeconds: new Gauge({
      name: "switchboard_operator_watch_last_event_timestamp_seconds",
      help: "When the informer's watch last delivered an event (bookmarks included), in Unix seconds; time() minus it is how long the watch has been silent. informer: the resource (chatclusters, deployments, gateway-pods, ...), with --watch-namespaces one per namespace (deployments/<namespace>).",
      labelNames: ["informer"],
      registers,
    }),
    watchRestartsTotal: new Counter({
      name: "switchboard_operator_watch_restarts_total",
      help: "Watches restarted, by reason: ended (closed by the server), error, gone (410), silent (watchdog).",
      labelNames: ["informer", "reason"],
      registers,
    }),
    relistsTotal: new Counter({
      name: "switchboard_operator_relists_total",
      help: "Full lists of an informer, by reason: start, periodic, silent, gone.",
      labelNames: ["informer", "reason"],
      registers,
    }),
    leader: new Gauge({
      name: "switchboard_operator_leader",
      help: "1 while this replica holds the leader Lease.",
      registers,
    }),
    // Not `namespace`: a scrape's target labels carry the operator's own namespace under that name.
    chatclusterReady: new Gauge({
      name: "switchboard_operator_chatcluster_ready",
      help: "1 while the ChatCluster's Ready condition is True, 0 otherwise (exported by the leader).",
      labelNames: ["chatcluster_namespace", "chatcluster"],
      registers,
    }),
  };
  registerBuildInfo(
    registry,
    "switchboard_operator_build_info",
    "Always 1: the version of Switchboard this operator runs and its Node.js version, as labels.",
  );
  return metrics;
}

/** Records that `informer` heard from its watch at `atMs` (epoch ms). */
export function recordWatchEvent(metrics: OperatorRuntimeMetrics, informer: string, atMs: number): void {
  metrics.watchLastEventTimestampSeconds.set({ informer }, atMs / 1000);
}

/** Drops a stopped informer's series, so a deliberately stopped watch does not look stalled. */
export function forgetWatch(metrics: OperatorRuntimeMetrics, informer: string): void {
  metrics.watchLastEventTimestampSeconds.remove({ informer });
}

/** Sets (or, with undefined: the ChatCluster is gone, removes) a ChatCluster's readiness series. */
export function recordChatClusterReady(
  metrics: OperatorRuntimeMetrics,
  namespace: string,
  name: string,
  ready: boolean | undefined,
): void {
  const labels = { chatcluster_namespace: namespace, chatcluster: name };
  if (ready === undefined) metrics.chatclusterReady.remove(labels);
  else metrics.chatclusterReady.set(labels, ready ? 1 : 0);
}
