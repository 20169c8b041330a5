/**
 * The ChatCluster reconciler: level-based and idempotent. Each call reads the ChatCluster and what it
 * owns and moves the cluster one step toward the spec:
 *
 *   deletion?  → write gateway-gone records for the gateways in its status (best effort: given up
 *                FINALIZE_GONE_DEADLINE_MS after the deletion, with a Warning Event, when Kafka or its
 *                Secret is gone; skipped when there is no gateway), delete its token-review
 *                ClusterRoleBinding (cluster-scoped: no owner), drop the finalizer (owner references
 *                let the garbage collector remove everything else; Kafka and Cassandra data stay).
 *   finalizer  → added first, so a deletion always runs the cleanup.
 *   provision  → the Kafka topics and Cassandra schema, once per generation (idempotent).
 *   gateways   → live counts, gateway-gone records, autoscaling with drain (gateways.ts).
 *   apply      → the token-review ClusterRoleBinding of its ServiceAccounts (ADR 0007), then
 *                every desired object by server-side apply (one field manager), then prune owned
 *                objects that are no longer desired. The PodMonitor and the gRPC Certificates
 *                (cert-manager) the spec may ask for are desired only where the API server serves
 *                their kinds (discovery, every reconcile).
 *   status     → components, gateways, conditions with observedGeneration, by server-side apply to
 *                the status subresource.
 * A failure of one step, a Secret the spec names that is missing or incomplete included, is reported
 * in the Degraded condition (with observedGeneration) and an Event, and the key is retried with backoff.
 */
import { createHash } from "node:crypto";
import type {
  KubernetesObject,
  V1ConfigMap,
  V1Deployment,
  V1Pod,
  V1Secret,
  V1Service,
  V1StatefulSet,
} from "@kubernetes/client-node";
import type { ProvisionResult } from "../../internal/backends/distributed/provision.js";
import type { Logger } from "../../internal/lib/log.js";
import {
  API_VERSION,
  type ChatCluster,
  type ChatClusterStatus,
  COMPONENTS,
  type ComponentName,
  KIND,
} from "../api/v1alpha1.js";
import { KubeApiError, type KubeClient, refOf } from "../kube/client.js";
import type { ReconcileResult } from "../runtime/workqueue.js";
import {
  type ComponentObservation,
  computeConditions,
  type Observation,
  observeWorkload,
  rollingOut,
} from "./conditions.js";
import { refusedSettings } from "./config.js";
import { desiredObjects, OWNED_KINDS } from "./desired.js";
import type { EventRecorder } from "./events.js";
import type { GatewayClients } from "./gateway-client.js";
import { type GatewayMemory, type GatewayStep, reconcileGateways } from "./gateways.js";
import { type GoneRecordPublisher, type KafkaTarget, routingTopic } from "./gone-records.js";
import { type AccountRef, desiredTokenReviewBinding, tokenReviewBindingName } from "./grpc-identity.js";
import {
  CERTIFICATE_GROUP_VERSION,
  CERTIFICATE_KIND,
  CERTIFICATE_PLURAL,
  type Certificate,
  certificateNotReady,
  GRPC_TLS_COMPONENTS,
  type GrpcTlsState,
  missingTlsKeys,
  wantsCertificates,
  wantsGrpcTls,
} from "./grpc-tls.js";
import {
  POD_MONITOR_GROUP_VERSION,
  POD_MONITOR_KIND,
  POD_MONITOR_PLURAL,
  podMonitorName,
  wantsPodMonitor,
} from "./monitoring.js";
import {
  componentName,
  configMapName,
  FINALIZER,
  grpcTlsSecretName,
  ownedObjectsSelector,
  selectorLabels,
  selectorString,
} from "./names.js";
import { type CassandraTarget, cassandraTarget, kafkaTarget, kafkaTlsKeys } from "./storage.js";
import { isStateful } from "./workloads.js";

export interface ReconcilerDeps {
  kube: KubeClient;
  gateways: GatewayClients;
  gone: GoneRecordPublisher;
  events: EventRecorder;
  provision: (
    kafka: KafkaTarget,
    cassandra: CassandraTarget,
    cluster: ChatCluster,
  ) => Promise<ProvisionResult>;
  /**
   * The Cassandra schema version `provision` brings a keyspace to: a cluster provisioned by an older
   * operator (a lower version in its status) is provisioned again, without waiting for a spec change.
   */
  schemaVersion: number;
  log: Logger;
  now?: () => number;
  /** Live gateway counts are polled this often while autoscaling (default 10 s). */
  pollIntervalMs?: number;
  /**
   * The operator's own ServiceAccount (the `operator` principal of the roles' policy), and the
   * ClusterRole (`tokenreviews: create`) the serving components are bound to (ADR 0007).
   */
  grpcIdentity?: { operatorAccount?: AccountRef | undefined; tokenReviewClusterRole: string };
  /**
   * Told each ChatCluster's Ready condition after every status write (true: Ready=True), and
   * undefined once it is gone: the operator exports it as a gauge.
   */
  onReady?: (namespace: string, name: string, ready: boolean | undefined) => void;
}

/** The chart's token-review ClusterRole when the operator is not told another. */
export const DEFAULT_TOKEN_REVIEW_CLUSTER_ROLE = "switchboard-tokenreview";

/**
 * How often every cluster is reconciled without an event: its live counts (status.connections,
 * status.gateways) read again without autoscaling, and what no watch reports repaired.
 */
const STATUS_REFRESH_MS = 60_000;
/** Requeue while anything is still converging, so status catches up without waiting for an event. */
const CONVERGING_REQUEUE_MS = 5_000;
/**
 * A cluster that asks for a PodMonitor where the API server serves none is looked at again this often:
 * nothing watches CRDs, and the Prometheus Operator is often installed after the platform.
 */
const POD_MONITOR_RECHECK_MS = 60_000;
/** Likewise for gRPC TLS waiting on cert-manager's CRDs or on provided Secrets (nothing watches them). */
const GRPC_TLS_RECHECK_MS = 30_000;
/**
 * A deleted ChatCluster's gateway-gone records are tried for this long after its deletionTimestamp
 * (each attempt bounded, retried every FINALIZE_RETRY_MS); then the finalizer goes on without them.
 */
const FINALIZE_GONE_DEADLINE_MS = 30_000;
const FINALIZE_RETRY_MS = 5_000;
const GONE_ATTEMPT_TIMEOUT_MS = 10_000;

export class ChatClusterReconciler {
  private readonly memory = new Map<string, GatewayMemory>();
  /** Per ChatCluster, the uid, schema version and storage inputs this process provisioned last. */
  private readonly provisionedHere = new Map<string, string>();
  private readonly now: () => number;

  constructor(private readonly deps: ReconcilerDeps) {
    this.now = deps.now ?? Date.now;
  }

  /** `key` is "namespace/name". */
  async reconcile(key: string): Promise<ReconcileResult> {
    const [namespace, name] = splitKey(key);
    const { kube } = this.deps;
    const cluster = await kube.find<ChatCluster>({ apiVersion: API_VERSION, kind: KIND, namespace, name });
    if (!cluster) {
      this.memory.delete(key);
      this.provisionedHere.delete(key);
      this.deps.onReady?.(namespace, name, undefined);
      return;
    }
    if (cluster.metadata.deletionTimestamp) return this.finalize(key, cluster);
    if (!cluster.metadata.finalizers?.includes(FINALIZER)) await this.addFinalizer(cluster);

    const log = this.deps.log.child({ chatcluster: key, generation: cluster.metadata.generation });
    const generation = cluster.metadata.generation ?? 0;
    const status: ChatClusterStatus = { ...cluster.status };

    // --- provision -----------------------------------------------------------------------
    // The storage credentials are read within each step that needs them: a Secret that is missing or
    // incomplete fails that step, which the status and an Event report like any other failure.
    let provisionError: string | undefined;
    // Each generation, and each cluster last provisioned by an older operator (whose migrations an
    // image of this one's time may need): so after `helm upgrade` of the operator, the new schema is
    // in place (a Provisioned Event says so) before anyone changes spec.version.
    // (Also remembered here: under a CRD older than the operator the API server drops
    // provisionedSchemaVersion, which must not make every reconcile provision again.)
    // A generation that changes nothing provisioning reads (replicas, resources, configuration) is not
    // provisioned again: a slow Cassandra would hold every such change for its DDL timeout, and
    // report the cluster not Ready meanwhile.
    const provisioning = `${cluster.metadata.uid}/${this.deps.schemaVersion}/${storageInputs(cluster)}`;
    // The status keeps the digest of what was provisioned, so an operator that restarted (a `helm
    // upgrade`, a failover) knows it too; the memory covers a CRD older than the operator, whose API
    // server drops the field.
    const storage = storageDigest(cluster);
    const provisionedAlready =
      this.provisionedHere.get(key) === provisioning ||
      (status.provisionedStorage === storage && status.provisionedSchemaVersion === this.deps.schemaVersion);
    if (
      (status.provisionedGeneration !== generation ||
        status.provisionedSchemaVersion !== this.deps.schemaVersion) &&
      !provisionedAlready
    ) {
      // A new cluster says what it is doing before the topics and the schema are made (a slow
      // Cassandra can take its DDL timeout, 30 s, per attempt): Ready=False, Progressing, Provisioning.
      if (cluster.status?.observedGeneration === undefined)
        await this.applyStatus(namespace, name, {
          observedGeneration: generation,
          conditions: computeConditions(
            undefined,
            { generation, provisioned: false, components: {}, drainingGateways: 0 },
            new Date(this.now()),
          ),
        });
      try {
        const result = await this.deps.provision(
          await kafkaTarget(kube, cluster),
          await cassandraTarget(kube, cluster),
          cluster,
        );
        status.provisionedGeneration = generation;
        status.provisionedSchemaVersion = result.schemaVersion;
        status.provisionedVersion = cluster.spec.version;
        status.provisionedStorage = storage;
        this.provisionedHere.set(key, provisioning);
        this.deps.events.record(
          cluster,
          "Normal",
          "Provisioned",
          "Provision",
          `Kafka topics ${result.topics.join(", ")}; Cassandra schema version ${result.schemaVersion}` +
            (result.migrationsApplied.length ? ` (applied ${result.migrationsApplied.join(", ")})` : ""),
        );
      } catch (err) {
        provisionError = message(err);
        this.deps.events.record(cluster, "Warning", "ProvisioningFailed", "Provision", provisionError);
        log.warn("provisioning failed", { err });
      }
    }
    // A generation whose storage could not be provisioned is applied with the version of the last one
    // that was: its image is not rolled out onto a schema it may not find (Degraded and Ready=False,
    // ProvisioningFailed, until provisioning succeeds), while everything else goes on (replicas, the
    // gateways' drains, gone records and autoscaling, configuration).
    if (provisionedAlready) status.provisionedGeneration = generation;
    const provisioned = status.provisionedGeneration === generation;
    const deployable = status.provisionedGeneration !== undefined;
    const rendered: ChatCluster =
      provisioned || status.provisionedVersion === undefined
        ? cluster
        : { ...cluster, spec: { ...cluster.spec, version: status.provisionedVersion } };

    // --- gateways, apply, prune -----------------------------------------------------------
    let applyError: string | undefined;
    let step: GatewayStep | undefined;
    const workloads = new Map<string, KubernetesObject>();
    let podMonitor: Observation["podMonitor"] = wantsPodMonitor(cluster) ? "Pending" : undefined;
    let grpcTls: GrpcTlsState | undefined = wantsGrpcTls(cluster) ? { kind: "Pending" } : undefined;
    // Until the storage exists the services could only crash-loop: deploy them after it.
    if (deployable) {
      try {
        const kafka = await kafkaTarget(kube, cluster);
        const gatewayDeployment = await kube.find<V1Deployment>({
          apiVersion: "apps/v1",
          kind: "Deployment",
          namespace,
          name: componentName(cluster, "gateway"),
        });
        step = await reconcileGateways(
          { ...this.deps, now: this.now, pollIntervalMs: this.deps.pollIntervalMs ?? 10_000 },
          cluster,
          gatewayDeployment,
          kafka,
          this.memoryOf(key),
        );
        // Asked every time: the Prometheus Operator's CRDs may come and go while the operator runs.
        const podMonitorServed = await kube.serves(POD_MONITOR_GROUP_VERSION, POD_MONITOR_PLURAL);
        // Likewise cert-manager's; asked even without TLS, so that Certificates no longer wanted are pruned.
        const certificatesServed = await kube.serves(CERTIFICATE_GROUP_VERSION, CERTIFICATE_PLURAL);
        // Before the Pods: a serving component verifies tokens from its first call.
        await kube.apply(
          desiredTokenReviewBinding(
            cluster,
            this.deps.grpcIdentity?.tokenReviewClusterRole ?? DEFAULT_TOKEN_REVIEW_CLUSTER_ROLE,
          ),
        );
        // Its spec settings stay while the spec's new ones are refused (settings.ts). Listed, not
        // read by name: the operator's Role lists and watches ConfigMaps but does not get them.
        const { items: configMaps } = await kube.list<V1ConfigMap>(
          { apiVersion: "v1", kind: "ConfigMap", namespace },
          ownedObjectsSelector(cluster),
        );
        const currentConfig = configMaps.find((c) => c.metadata?.name === configMapName(cluster));
        const desired = desiredObjects(rendered, {
          currentConfig: currentConfig?.data ?? {},
          gatewayReplicas: step.replicas,
          kafkaTlsKeys: kafkaTlsKeys(kafka),
          podMonitorServed,
          operatorAccount: this.deps.grpcIdentity?.operatorAccount,
          certificatesServed,
        });
        const certificatesNotReady: string[] = [];
        // Each object on its own: one the API server refuses (a bad value in one component's spec)
        // holds back none of the others, the gateways' replicas above all.
        const refused: string[] = [];
        for (const obj of desired) {
          let applied: KubernetesObject;
          try {
            applied = await this.applyOwned(obj);
          } catch (err) {
            refused.push(`${obj.kind} ${obj.metadata?.name}: ${refusal(err)}`);
            continue;
          }
          if (
            step.committed &&
            obj.kind === "Deployment" &&
            obj.metadata?.name === componentName(cluster, "gateway")
          )
            await step.committed().catch((err: unknown) => {
              refused.push(`the gateways' new replica count, applied, not yet marked: ${refusal(err)}`);
            });
          if (obj.kind === "Deployment" || obj.kind === "StatefulSet")
            workloads.set(obj.metadata?.name ?? "", applied);
          if (obj.kind === CERTIFICATE_KIND) {
            const notReady = certificateNotReady(applied as Certificate);
            if (notReady) certificatesNotReady.push(notReady);
          }
        }
        await this.prune(cluster, desired, [
          ...(podMonitorServed ? [POD_MONITOR_KIND] : []),
          ...(certificatesServed ? [{ apiVersion: CERTIFICATE_GROUP_VERSION, kind: CERTIFICATE_KIND }] : []),
        ]);
        if (grpcTls) grpcTls = await this.grpcTlsState(cluster, certificatesServed, certificatesNotReady);
        if (grpcTls?.kind === "CertManagerNotInstalled")
          this.deps.events.record(
            cluster,
            "Warning",
            "CertManagerUnavailable",
            "Apply",
            `spec.grpc.tls.issuerRef is set, but the cluster serves no ${CERTIFICATE_GROUP_VERSION} Certificate (install cert-manager): the Pods wait for their gRPC TLS Secrets`,
          );
        if (podMonitor && !podMonitorServed) {
          podMonitor = "CRDNotInstalled";
          this.deps.events.record(
            cluster,
            "Warning",
            "PodMonitorUnavailable",
            "Apply",
            `spec.observability.metrics.podMonitor is enabled, but the cluster serves no ${POD_MONITOR_GROUP_VERSION} PodMonitor (install the Prometheus Operator's CRDs): ${podMonitorName(cluster)} not created`,
          );
        } else if (podMonitor) podMonitor = "Created";
        if (refused.length) {
          this.deps.events.record(cluster, "Warning", "ApplyFailed", "Apply", refused.join("; "));
          log.warn("objects refused", { refused });
        }
        const problems = [...refused, ...step.errors];
        if (problems.length) applyError = problems.join("; ");
      } catch (err) {
        applyError = message(err);
        this.deps.events.record(cluster, "Warning", "ApplyFailed", "Apply", applyError);
        log.warn("apply failed", { err });
      }
    }

    const settingsRefused = refusedSettings(cluster);
    if (settingsRefused.length)
      this.deps.events.record(cluster, "Warning", "SettingsRefused", "Apply", settingsRefused.join("; "));

    // --- status ------------------------------------------------------------------------------
    const components: Partial<Record<ComponentName, ComponentObservation>> = {};
    if (deployable && !applyError)
      for (const component of COMPONENTS) {
        const workload = workloads.get(componentName(cluster, component)) as
          | V1Deployment
          | V1StatefulSet
          | undefined;
        components[component] = observeWorkload(
          workload,
          isStateful(component) && workload && rollingOut(workload)
            ? { pods: await this.podsOf(cluster, component), now: new Date(this.now()) }
            : undefined,
        );
      }
    const newStatus: ChatClusterStatus = {
      observedGeneration: generation,
      conditions: computeConditions(
        cluster.status?.conditions,
        {
          generation,
          provisioned,
          ...(provisionError === undefined ? {} : { provisionError }),
          ...(applyError === undefined ? {} : { applyError }),
          ...(settingsRefused.length ? { settingsRefused } : {}),
          components,
          drainingGateways: step?.draining ?? 0,
          ...(podMonitor === undefined ? {} : { podMonitor }),
          ...(grpcTls === undefined ? {} : { grpcTls }),
        },
        new Date(this.now()),
      ),
      ...(status.provisionedGeneration === undefined
        ? {}
        : { provisionedGeneration: status.provisionedGeneration }),
      ...(status.provisionedSchemaVersion === undefined
        ? {}
        : { provisionedSchemaVersion: status.provisionedSchemaVersion }),
      ...(status.provisionedVersion === undefined ? {} : { provisionedVersion: status.provisionedVersion }),
      ...(status.provisionedStorage === undefined ? {} : { provisionedStorage: status.provisionedStorage }),
    };
    if (Object.keys(components).length > 0)
      newStatus.components = Object.fromEntries(
        Object.entries(components).map(([c, o]) => [
          c,
          { replicas: o.desired, readyReplicas: o.readyReplicas },
        ]),
      );
    else if (cluster.status?.components) newStatus.components = cluster.status.components;
    // Without a fresh gateway step, keep the list: it is how a gateway's disappearance is noticed.
    newStatus.gateways = step?.gateways ?? cluster.status?.gateways ?? [];
    // Left out (shown as none) while a gateway's count is unknown; server-side apply then removes it.
    const connections = step ? step.connections : (cluster.status?.connections ?? 0);
    if (connections !== undefined) newStatus.connections = connections;
    if (cluster.spec.gateway.autoscaling.enabled && step) newStatus.gatewayDesiredReplicas = step.replicas;
    await this.applyStatus(namespace, name, newStatus);

    const converging = newStatus.conditions?.some((c) => c.type === "Ready" && c.status !== "True");
    this.deps.onReady?.(namespace, name, !converging);
    if (provisionError || applyError) throw new Error(provisionError ?? applyError);
    const requeue = Math.min(
      step?.requeueAfterMs ?? Infinity,
      converging ? CONVERGING_REQUEUE_MS : Infinity,
      podMonitor === "CRDNotInstalled" ? POD_MONITOR_RECHECK_MS : Infinity,
      grpcTls && grpcTls.kind !== "Ready" ? GRPC_TLS_RECHECK_MS : Infinity,
      // The status's live counts (its own writes trigger no reconcile), and what no watch reports
      // (the token-review ClusterRoleBinding, PodMonitors, Certificates): refreshed here.
      STATUS_REFRESH_MS,
    );
    return Number.isFinite(requeue) ? { requeueAfterMs: requeue } : undefined;
  }

  /** The cluster's status, by server-side apply on the status subresource. */
  private async applyStatus(namespace: string, name: string, status: ChatClusterStatus): Promise<void> {
    await this.deps.kube.apply(
      { apiVersion: API_VERSION, kind: KIND, metadata: { name, namespace }, status },
      "status",
    );
  }

  /** A component's Pods (its selector's), to tell a StatefulSet's stuck rollout (observeWorkload). */
  private async podsOf(cluster: ChatCluster, component: ComponentName): Promise<V1Pod[]> {
    const list = await this.deps.kube.list<V1Pod>(
      { apiVersion: "v1", kind: "Pod", namespace: cluster.metadata.namespace ?? "default" },
      selectorString(selectorLabels(cluster, component)),
    );
    return list.items;
  }

  /**
   * The gRPC certificates of a TLS cluster: cert-manager's readiness of the Certificates just applied,
   * or, for provided Secrets, whether each exists with the three keys (`get` only, by name).
   */
  private async grpcTlsState(
    cluster: ChatCluster,
    certificatesServed: boolean,
    certificatesNotReady: string[],
  ): Promise<GrpcTlsState> {
    if (wantsCertificates(cluster)) {
      if (!certificatesServed) return { kind: "CertManagerNotInstalled" };
      return certificatesNotReady.length
        ? { kind: "CertificatesNotReady", notReady: certificatesNotReady }
        : { kind: "Ready" };
    }
    const missing: string[] = [];
    for (const component of GRPC_TLS_COMPONENTS) {
      const name = grpcTlsSecretName(cluster, component);
      const secret = await this.deps.kube.find<V1Secret>({
        apiVersion: "v1",
        kind: "Secret",
        namespace: cluster.metadata.namespace ?? "default",
        name,
      });
      const lacking = missingTlsKeys(secret?.data);
      if (!secret) missing.push(`${name} (not found)`);
      else if (lacking.length) missing.push(`${name} (no ${lacking.join(", ")})`);
    }
    return missing.length ? { kind: "SecretsMissing", missing } : { kind: "Ready" };
  }

  private memoryOf(key: string): GatewayMemory {
    let m = this.memory.get(key);
    if (!m) {
      m = { sinceMs: this.now(), history: [], epochs: new Map() };
      this.memory.set(key, m);
    }
    return m;
  }

  private async addFinalizer(cluster: ChatCluster): Promise<void> {
    const ref = refOf(cluster);
    const test = { op: "test", path: "/metadata/resourceVersion", value: cluster.metadata.resourceVersion };
    const add = cluster.metadata.finalizers
      ? { op: "add", path: "/metadata/finalizers/-", value: FINALIZER }
      : { op: "add", path: "/metadata/finalizers", value: [FINALIZER] };
    const updated = await this.deps.kube.jsonPatch<ChatCluster>(ref, [test, add]);
    cluster.metadata = updated.metadata;
  }

  /**
   * The finalizer's cleanup. The gateway-gone records are best effort: the deletion must not hang on
   * Kafka or on its Secret, which may be gone first (a namespace's deletion removes the Secrets too).
   * What the finalizer owns (the token-review binding) is always removed, and so is the finalizer.
   */
  private async finalize(key: string, cluster: ChatCluster): Promise<ReconcileResult> {
    const index = cluster.metadata.finalizers?.indexOf(FINALIZER) ?? -1;
    if (index < 0) return;
    const retryAfterMs = await this.publishGoneOnDeletion(key, cluster);
    if (retryAfterMs !== undefined) return { requeueAfterMs: retryAfterMs };
    // Cluster-scoped, so not owned by the ChatCluster: the garbage collector would not remove it.
    await this.deps.kube.delete({
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "ClusterRoleBinding",
      name: tokenReviewBindingName(cluster),
    });
    await this.deps.kube.jsonPatch(refOf(cluster), [
      { op: "test", path: `/metadata/finalizers/${index}`, value: FINALIZER },
      { op: "remove", path: `/metadata/finalizers/${index}` },
    ]);
    this.memory.delete(key);
    this.provisionedHere.delete(key);
    this.deps.onReady?.(cluster.metadata.namespace ?? "default", cluster.metadata.name ?? "", undefined);
    this.deps.log.info("chatcluster deleted; owned objects go with it", { chatcluster: key });
    return;
  }

  /**
   * Gateway-gone records for the gateways the status last listed (none: Kafka is not needed). One
   * attempt is bounded by GONE_ATTEMPT_TIMEOUT_MS; a failed one is retried every FINALIZE_RETRY_MS
   * until FINALIZE_GONE_DEADLINE_MS after the deletion, then given up with a Warning Event. Returns
   * the delay before the next attempt, or undefined when the finalizer can go on.
   */
  private async publishGoneOnDeletion(key: string, cluster: ChatCluster): Promise<number | undefined> {
    const gateways = cluster.status?.gateways ?? [];
    if (gateways.length === 0) return undefined;
    const memory = this.memoryOf(key);
    const pods = gateways.map((g) => g.pod).join(", ");
    try {
      await withTimeout(
        (async () => {
          const kafka = await kafkaTarget(this.deps.kube, cluster);
          for (const g of gateways) {
            const epoch = Math.max(memory.epochs.get(g.pod) ?? 0, this.now());
            await this.deps.gone.publish(kafka, g.pod, epoch);
          }
        })(),
        GONE_ATTEMPT_TIMEOUT_MS,
        "writing the gateway-gone records",
      );
      return undefined;
    } catch (err) {
      const deadline = deletedAtMs(cluster, this.now()) + FINALIZE_GONE_DEADLINE_MS;
      const remaining = deadline - this.now();
      if (remaining > 0) {
        this.deps.events.record(
          cluster,
          "Warning",
          "GatewayGoneFailed",
          "Finalize",
          `gateway-gone records for ${pods} not written (${message(err)}); retrying until ${new Date(deadline).toISOString()}, then deleting without them`,
        );
        return Math.min(FINALIZE_RETRY_MS, remaining);
      }
      this.deps.events.record(
        cluster,
        "Warning",
        "GatewayGoneSkipped",
        "Finalize",
        `deleting without the gateway-gone records for ${pods} (${message(err)}): ${routingTopic(cluster.spec.kafka.topicPrefix)} keeps their sessions, which a cluster re-created on these topics would read`,
      );
      this.deps.log.warn("gateway-gone records given up; finalizing without them", {
        chatcluster: key,
        err,
      });
      return undefined;
    }
  }

  /**
   * Applies an owned object. A Service whose clusterIP must change (the Services other than the
   * gateway's became headless; the API server refuses to change a clusterIP once set) is deleted and
   * created again: its name resolves to nothing for that moment, and then to every Pod.
   */
  private async applyOwned(obj: KubernetesObject): Promise<KubernetesObject> {
    try {
      return await this.deps.kube.apply(obj);
    } catch (err) {
      const wanted = (obj as V1Service).spec?.clusterIP;
      if (!(obj.kind === "Service" && wanted && err instanceof KubeApiError && err.status === 422)) throw err;
      const current = await this.deps.kube.find<V1Service>(refOf(obj));
      if (!current || current.spec?.clusterIP === wanted) throw err;
      this.deps.log.info("recreating a Service to change its clusterIP", {
        service: obj.metadata?.name,
        from: current.spec?.clusterIP,
        to: wanted,
      });
      await this.deps.kube.delete(refOf(obj));
      return this.deps.kube.apply(obj);
    }
  }

  /**
   * Deletes owned objects of this cluster that the desired set no longer has; the kinds of CRDs
   * (PodMonitors, Certificates) only when the API server serves them (where it does not, none exist).
   */
  private async prune(
    cluster: ChatCluster,
    desired: KubernetesObject[],
    servedOptionalKinds: { apiVersion: string; kind: string }[],
  ): Promise<void> {
    const keep = new Set(desired.map((o) => `${o.kind}/${o.metadata?.name}`));
    const selector = ownedObjectsSelector(cluster);
    for (const kind of [...OWNED_KINDS, ...servedOptionalKinds]) {
      const { items } = await this.deps.kube.list<KubernetesObject>(
        { ...kind, namespace: cluster.metadata.namespace },
        selector,
      );
      for (const obj of items) {
        const owned = obj.metadata?.ownerReferences?.some((r) => r.uid === cluster.metadata.uid);
        if (owned && !keep.has(`${kind.kind}/${obj.metadata?.name}`))
          await this.deps.kube.delete({
            ...kind,
            namespace: cluster.metadata.namespace,
            name: obj.metadata?.name ?? "",
          });
      }
    }
  }
}

/** When the ChatCluster was marked for deletion (now, if it is not, or the time does not parse). */
function deletedAtMs(cluster: ChatCluster, now: number): number {
  const at = cluster.metadata.deletionTimestamp;
  const ms = at === undefined ? Number.NaN : new Date(at).getTime();
  return Number.isFinite(ms) ? ms : now;
}

/** `work`, or a rejection once `ms` have passed (the work itself goes on, unawaited). */
function withTimeout<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  work.catch(() => undefined);
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}

function splitKey(key: string): [string, string] {
  const i = key.indexOf("/");
  if (i < 0) throw new Error(`bad key ${JSON.stringify(key)}: want namespace/name`);
  return [key.slice(0, i), key.slice(i + 1)];
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** What provisioning reads from a spec: the storage it creates, and the version whose schema it needs. */
function storageInputs(cluster: ChatCluster): string {
  const { kafka, cassandra, version } = cluster.spec;
  return JSON.stringify({ kafka, cassandra, version });
}

/** storageInputs as the status keeps it (a field of bounded length), with the cluster's uid. */
function storageDigest(cluster: ChatCluster): string {
  return createHash("sha256")
    .update(`${cluster.metadata.uid}/${storageInputs(cluster)}`)
    .digest("hex");
}

/** Why the API server refused an object, without the request (its path and the field manager). */
function refusal(err: unknown): string {
  return err instanceof KubeApiError ? `${err.status} ${err.reason}: ${err.detail}` : message(err);
}
