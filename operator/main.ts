/**
 * `switchboard operator`: the ChatCluster operator, against the current KUBECONFIG (development and
 * tests, like a controller's `make run`) or in-cluster (the chart runs the same entrypoint).
 *
 * Wiring: informers on ChatClusters and on what the operator owns (Deployments, StatefulSets, gateway
 * Pods) only enqueue ChatCluster keys (a ChatCluster's own update only when its spec or metadata
 * changed, never for a status write); a keyed, rate-limited work queue feeds the reconciler; nothing
 * reconciles unless this replica holds the Lease. HTTP on --http-port serves /healthz, /readyz (the
 * caches are synced, or this replica is a standby) and /metrics.
 */
import { createServer, type Server } from "node:http";
import { hostname } from "node:os";
import { KubeConfig, type KubernetesObject } from "@kubernetes/client-node";
import { Registry } from "prom-client";
import { provisionDistributed, SCHEMA_VERSION } from "../internal/backends/distributed/provision.js";
import { BUILD_VERSION } from "../internal/lib/build-info.js";
import { loadConfig } from "../internal/lib/config.js";
import { createLogger, type Logger } from "../internal/lib/log.js";
import { inSpan, ROOT_CONTEXT, startTracing, tracing } from "../internal/lib/tracing.js";
import { API_VERSION, type ChatCluster, KIND } from "./api/v1alpha1.js";
import { OWNED_KINDS } from "./controller/desired.js";
import { EventRecorder } from "./controller/events.js";
import { createGatewayClients } from "./controller/gateway-client.js";
import { GoneRecordPublisher } from "./controller/gone-records.js";
import type { AccountRef } from "./controller/grpc-identity.js";
import { MANAGED_BY } from "./controller/names.js";
import { OperatorTokens } from "./controller/operator-token.js";
import { ChatClusterReconciler, DEFAULT_TOKEN_REVIEW_CLUSTER_ROLE } from "./controller/reconciler.js";
import { MAX_WORKERS, MIN_POLL_INTERVAL_MS, parseOperatorFlags } from "./flags.js";
import { KubeClient, type ListResult, resourcePath } from "./kube/client.js";
import {
  createOperatorRuntimeMetrics,
  Informer,
  LeaderElector,
  recordChatClusterReady,
  specOrMetadataChanged,
  WorkQueue,
} from "./runtime/index.js";

export interface OperatorOptions {
  kubeConfig: KubeConfig;
  /** Namespace of the leader-election Lease. */
  leaseNamespace: string;
  leaseName: string;
  identity: string;
  httpPort: number;
  httpHost: string;
  workers: number;
  pollIntervalMs: number;
  log: Logger;
  /**
   * The operator's own ServiceAccount, whose tokens (TokenRequest, per cluster audience) authenticate
   * its Drain and Stats calls as `operator`; without it they carry no credential (ADR 0007).
   */
  serviceAccount?: AccountRef | undefined;
  /** The ClusterRole (`tokenreviews: create`) the serving components are bound to. */
  tokenReviewClusterRole?: string | undefined;
  /**
   * Only these namespaces' ChatClusters (`--watch-namespaces`): every informer lists and watches in
   * each of them, never across the cluster, so Roles there are all the namespaced rights it needs.
   * Empty or absent: every namespace.
   */
  watchNamespaces?: string[] | undefined;
}

export interface RunningOperator {
  readonly port: number;
  stop(): Promise<void>;
  /** Rejects when the operator fails (e.g. it lost the Lease). */
  readonly done: Promise<void>;
}

const OWNED_SELECTOR = `app.kubernetes.io/managed-by=${MANAGED_BY}`;

export async function startOperator(o: OperatorOptions): Promise<RunningOperator> {
  // The flags are checked by parseOperatorFlags; these guard other callers the same way.
  if (!(o.pollIntervalMs >= MIN_POLL_INTERVAL_MS))
    throw new Error(`poll interval ${o.pollIntervalMs} ms: must be at least ${MIN_POLL_INTERVAL_MS} ms`);
  if (!Number.isSafeInteger(o.workers) || o.workers < 1 || o.workers > MAX_WORKERS)
    throw new Error(`workers ${o.workers}: want a whole number from 1 to ${MAX_WORKERS}`);
  const log = o.log;
  const registry = new Registry();
  const metrics = createOperatorRuntimeMetrics(registry);
  const kube = new KubeClient(o.kubeConfig);
  const queue = new WorkQueue({ name: "chatcluster", metrics });
  const tokens = o.serviceAccount && new OperatorTokens(kube, o.serviceAccount);
  if (!tokens)
    log.warn(
      "no operator ServiceAccount (--service-account namespace/name): Drain and Stats carry no credential, and gateways refuse them",
    );
  const gateways = createGatewayClients(tokens && ((audience) => tokens.token(audience)));
  const gone = new GoneRecordPublisher(`switchboard-operator-${o.identity}`, log);
  const reconciler = new ChatClusterReconciler({
    kube,
    gateways,
    gone,
    events: new EventRecorder(kube, o.identity, log),
    grpcIdentity: {
      operatorAccount: o.serviceAccount,
      tokenReviewClusterRole: o.tokenReviewClusterRole ?? DEFAULT_TOKEN_REVIEW_CLUSTER_ROLE,
    },
    provision: (kafka, cassandra, cluster) =>
      inSpan("provision storage", { attributes: { "switchboard.topic_prefix": kafka.topicPrefix } }, () =>
        provisionDistributed({
          kafka: {
            brokers: kafka.brokers,
            topicPrefix: kafka.topicPrefix,
            ...(kafka.ssl === undefined ? {} : { ssl: kafka.ssl }),
            ...(kafka.sasl === undefined ? {} : { sasl: kafka.sasl }),
            partitions: cluster.spec.kafka.topics.partitions,
            replicationFactor: cluster.spec.kafka.topics.replicationFactor,
            retentionHours: cluster.spec.kafka.topics.retentionHours,
          },
          cassandra,
          clientId: `switchboard-operator-${o.identity}`,
          log,
        }),
      ),
    schemaVersion: SCHEMA_VERSION,
    log,
    pollIntervalMs: o.pollIntervalMs,
    onReady: (namespace, name, ready) => recordChatClusterReady(metrics, namespace, name, ready),
  });

  // Across the cluster, or one informer per watched namespace (named <kind>/<namespace>).
  const scopes: Array<string | undefined> = o.watchNamespaces?.length ? o.watchNamespaces : [undefined];
  const informers = <T extends KubernetesObject>(
    name: string,
    kind: { apiVersion: string; kind: string },
    labelSelector?: string,
  ) =>
    scopes.map((namespace) => {
      const ref = { ...kind, namespace };
      const scoped = namespace === undefined ? name : `${name}/${namespace}`;
      return new Informer<T>({
        kubeConfig: o.kubeConfig,
        name: scoped,
        path: resourcePath(ref),
        list: () => kube.list<T>(ref, labelSelector) as Promise<ListResult<T>>,
        ...(labelSelector ? { labelSelector } : {}),
        log: log.child({ informer: scoped }),
        metrics,
      });
    });
  const clusters = informers<ChatCluster>("chatclusters", { apiVersion: API_VERSION, kind: KIND });
  // Every kind it owns (by its label): one deleted or changed by hand is repaired at once, not at
  // the next periodic reconcile. Its own applies that change nothing bump no resourceVersion, so
  // they wake nothing.
  const owned = [
    ...OWNED_KINDS.flatMap((ref) =>
      informers<KubernetesObject>(resourcePath(ref).split("/").at(-1) ?? ref.kind, ref, OWNED_SELECTOR),
    ),
    ...informers<KubernetesObject>(
      "gateway-pods",
      { apiVersion: "v1", kind: "Pod" },
      `${OWNED_SELECTOR},app.kubernetes.io/component=gateway`,
    ),
  ];
  const all = [...clusters, ...owned];
  // Not on status-only updates: every reconcile writes the status (live counts), which would run the
  // next one at once and defeat the queue's backoff; requeues (the poll) refresh the status instead.
  for (const inf of clusters)
    inf.on((event, obj, old) => {
      if (specOrMetadataChanged(event, obj, old)) queue.add(keyOf(obj));
    });
  for (const inf of owned)
    inf.on((_event, obj) => {
      const instance = obj.metadata?.labels?.["app.kubernetes.io/instance"];
      if (instance) queue.add(`${obj.metadata?.namespace}/${instance}`);
    });

  let synced = false;
  const stopController = new AbortController();
  const elector = new LeaderElector({
    kubeConfig: o.kubeConfig,
    namespace: o.leaseNamespace,
    name: o.leaseName,
    identity: o.identity,
    log,
    metrics,
  });

  const server = createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (path === "/healthz") return void res.writeHead(200).end("ok\n");
    if (path === "/readyz") {
      // A standby is ready (it serves metrics and waits); the leader once its caches are synced.
      const ready = !elector.isLeader || synced;
      return void res.writeHead(ready ? 200 : 503).end(ready ? "ok\n" : "caches not synced\n");
    }
    if (path === "/metrics")
      return void registry.metrics().then(
        (text) => res.writeHead(200, { "Content-Type": registry.contentType }).end(text),
        (err: unknown) => res.writeHead(500).end(String(err)),
      );
    res.writeHead(404).end();
  });
  const port = await listen(server, o.httpPort, o.httpHost);
  log.info("operator started", {
    version: BUILD_VERSION,
    identity: o.identity,
    port,
    lease: `${o.leaseNamespace}/${o.leaseName}`,
    namespaces: o.watchNamespaces?.length ? o.watchNamespaces : "all",
  });

  const done = elector.run(async (signal) => {
    log.info("leading: starting informers and workers");
    await Promise.all(all.map((i) => i.start()));
    synced = true;
    const workers = queue.run(o.workers, (key) => reconcileTraced(reconciler, key), log);
    await new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
    await Promise.all(all.map((i) => i.stop()));
    await queue.shutDown();
    await workers;
    // Only the leader reports the ChatClusters' readiness: a replica that stopped leading knows nothing.
    metrics.chatclusterReady.reset();
  }, stopController.signal);
  // The caller owns `done`; a lost Lease surfaces there. Nothing else awaits it here.
  done.catch(() => undefined);

  let stopping: Promise<void> | undefined;
  return {
    port,
    done,
    stop: () =>
      (stopping ??= (async () => {
        stopController.abort();
        await done.catch((err: unknown) => log.warn("operator stopped with an error", { err }));
        await Promise.all(all.map((i) => i.stop()));
        await queue.shutDown();
        gateways.close();
        await gone.close();
        await new Promise<void>((resolve) => server.close(() => resolve()));
      })()),
  };
}

function keyOf(obj: KubernetesObject): string {
  return `${obj.metadata?.namespace ?? "default"}/${obj.metadata?.name}`;
}

function listen(server: Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      const address = server.address();
      resolve(typeof address === "object" && address ? address.port : port);
    });
  });
}

/** `switchboard operator [--http-port N] [--lease-namespace NS] [--workers N] [--watch-namespaces a,b]` */
export async function runOperator(argv: string[]): Promise<number> {
  // Every flag is checked before anything starts (operator/flags.ts).
  const flags = parseOperatorFlags(argv);
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromDefault();
  const identity = process.env.POD_NAME ?? `${hostname()}-${process.pid}`;
  const log = createLogger({ service: "operator", identity });
  // The same switches as the platform's processes: SWITCHBOARD_TRACING_ENABLED and the OTEL_* variables.
  const tracer = await startTracing(loadConfig(), "operator", log);
  const operator = await startOperator({
    kubeConfig,
    leaseNamespace: flags.leaseNamespace ?? process.env.POD_NAMESPACE ?? "default",
    leaseName: flags.leaseName,
    identity,
    httpPort: flags.httpPort,
    httpHost: flags.httpHost,
    workers: flags.workers,
    pollIntervalMs: flags.pollIntervalMs,
    log,
    serviceAccount: flags.serviceAccount,
    tokenReviewClusterRole: flags.tokenReviewClusterRole,
    watchNamespaces: flags.watchNamespaces,
  });
  process.stdout.write(
    `${JSON.stringify({ status: "started", service: "operator", version: BUILD_VERSION, identity, port: operator.port })}\n`,
  );
  return new Promise<number>((resolve) => {
    const stop = (signal: string) => {
      log.info("stopping", { signal });
      operator
        .stop()
        .then(() => tracer?.close())
        .then(() => resolve(0));
    };
    process.once("SIGINT", () => stop("SIGINT"));
    process.once("SIGTERM", () => stop("SIGTERM"));
    // Lost the Lease: exit so the Deployment restarts us as a standby (never two leaders acting).
    operator.done.catch((err: unknown) => {
      log.error("operator failed", { err });
      operator.stop().then(() => resolve(1));
    });
  });
}

/** One trace per reconcile (tracing on): its Kubernetes, Kafka and Cassandra calls are its children. */
function reconcileTraced(
  reconciler: ChatClusterReconciler,
  key: string,
): ReturnType<ChatClusterReconciler["reconcile"]> {
  if (!tracing.on) return reconciler.reconcile(key);
  const [namespace, name] = key.split("/");
  return inSpan(
    "reconcile ChatCluster",
    {
      parent: ROOT_CONTEXT,
      attributes: { "k8s.namespace.name": namespace ?? "", "switchboard.chatcluster": name ?? "" },
    },
    () => reconciler.reconcile(key),
  );
}
