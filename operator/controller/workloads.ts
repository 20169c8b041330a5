/**
 * The Deployments (gateway, router, push, sequencer) and StatefulSets (id: its Snowflake worker id is
 * the Pod's ordinal; presence: its shard number is) of a ChatCluster. Every Pod meets the `restricted`
 * Pod Security Standard: non-root, read-only root filesystem, no privilege escalation, all
 * capabilities dropped, seccomp RuntimeDefault; only /tmp is writable.
 */
import type {
  V1Container,
  V1Deployment,
  V1EnvVar,
  V1Lifecycle,
  V1PodSpec,
  V1PodTemplateSpec,
  V1ResourceRequirements,
  V1StatefulSet,
  V1TopologySpreadConstraint,
  V1Volume,
  V1VolumeMount,
} from "@kubernetes/client-node";
import { envName, schema } from "../../internal/lib/config.js";
import type { ChatCluster, ComponentName, ComponentSpec } from "../api/v1alpha1.js";
import { grpcIdentityPod } from "./grpc-identity.js";
import { grpcTlsPod } from "./grpc-tls.js";
import {
  CONFIG_HASH_ANNOTATION,
  componentName,
  configMapName,
  GRPC_PORT,
  HTTP_PORT,
  INTERNAL_PORT,
  imageReference,
  labels,
  ownedMeta,
  roleServiceAccountName,
  selectorLabels,
  servesGrpc,
  usesStorage,
} from "./names.js";
import { pushCredentialsPod } from "./push-credentials.js";
import { CASSANDRA_TLS_CA_KEY, KAFKA_TLS_FILES } from "./storage.js";

/** Where the HS256 secret of `spec.auth.secretRef` is mounted (the services read it from their data dir). */
const AUTH_DIR = "/etc/switchboard/auth";
const AUTH_SECRET_FILE = "dev-jwt-secret";
/** Where the Kafka TLS Secret (`spec.kafka.tls.secretRef`) is mounted. */
export const KAFKA_TLS_DIR = "/etc/switchboard/kafka-tls";
/** Where the Cassandra TLS Secret (`spec.cassandra.tls.secretRef`) is mounted. */
export const CASSANDRA_TLS_DIR = "/etc/switchboard/cassandra-tls";

/** The components that run as StatefulSets: their Pods' ordinals are their identities. */
export const STATEFUL_COMPONENTS = ["id", "presence"] as const;
export type StatefulComponent = (typeof STATEFUL_COMPONENTS)[number];
export type DeploymentComponent = Exclude<ComponentName, StatefulComponent>;

export const isStateful = (component: ComponentName): component is StatefulComponent =>
  (STATEFUL_COMPONENTS as readonly string[]).includes(component);

/** What the Pods depend on besides the spec. */
export interface WorkloadInputs {
  /** Pod template annotation: a changed ConfigMap rolls the Pods. */
  configHash: string;
  /** The keys of the Kafka TLS Secret among KAFKA_TLS_FILES (the operator reads the Secret). */
  kafkaTlsKeys: readonly string[];
}

export const RESTRICTED_CONTAINER_SECURITY = {
  runAsNonRoot: true,
  allowPrivilegeEscalation: false,
  readOnlyRootFilesystem: true,
  capabilities: { drop: ["ALL"] },
  seccompProfile: { type: "RuntimeDefault" },
} as const;

export const RESTRICTED_POD_SECURITY = {
  runAsNonRoot: true,
  runAsUser: 65532,
  runAsGroup: 65532,
  fsGroup: 65532,
  seccompProfile: { type: "RuntimeDefault" },
} as const;

const fieldEnv = (name: string, fieldPath: string): V1EnvVar => ({
  name,
  valueFrom: { fieldRef: { fieldPath } },
});
const secretEnv = (path: string[], secret: string, key: string): V1EnvVar => ({
  name: envName(path),
  valueFrom: { secretKeyRef: { name: secret, key } },
});
/** The StatefulSet ordinal of the Pod (the pod-index label, Kubernetes >= 1.28). */
const ORDINAL_FIELD = "metadata.labels['apps.kubernetes.io/pod-index']";

/**
 * Kafka and Cassandra credentials of a component that uses them: user names and passwords as
 * references to their Secrets (never in the ConfigMap), the Kafka TLS files of the keys the Secret
 * has, and the Cassandra nodes' CAs, mounted from theirs.
 */
function storageEnv(cluster: ChatCluster, inputs: WorkloadInputs): V1EnvVar[] {
  const { kafka, cassandra } = cluster.spec;
  const env: V1EnvVar[] = [];
  if (kafka.tls?.enabled && kafka.tls.secretRef)
    for (const f of KAFKA_TLS_FILES)
      if (inputs.kafkaTlsKeys.includes(f.key))
        env.push({ name: envName(["kafka", f.setting]), value: `${KAFKA_TLS_DIR}/${f.key}` });
  if (kafka.sasl) {
    const secret = kafka.sasl.secretRef.name;
    env.push(
      secretEnv(["kafka", "saslUsername"], secret, "username"),
      secretEnv(["kafka", "saslPassword"], secret, "password"),
    );
  }
  if (cassandra.credentialsSecretRef) {
    const secret = cassandra.credentialsSecretRef.name;
    env.push(
      secretEnv(["cassandra", "username"], secret, "username"),
      secretEnv(["cassandra", "password"], secret, "password"),
    );
  }
  if (cassandra.tls?.enabled && cassandra.tls.secretRef)
    env.push({
      name: envName(["cassandra", "tlsCaFile"]),
      value: `${CASSANDRA_TLS_DIR}/${CASSANDRA_TLS_CA_KEY}`,
    });
  return env;
}

const mountsKafkaTls = (cluster: ChatCluster, component: ComponentName): boolean =>
  usesStorage(component) && !!cluster.spec.kafka.tls?.enabled && !!cluster.spec.kafka.tls.secretRef;
const mountsCassandraTls = (cluster: ChatCluster, component: ComponentName): boolean =>
  usesStorage(component) && !!cluster.spec.cassandra.tls?.enabled && !!cluster.spec.cassandra.tls.secretRef;

function container(
  cluster: ChatCluster,
  component: ComponentName,
  spec: ComponentSpec,
  inputs: WorkloadInputs,
): V1Container {
  // POD_IP comes before the variables that expand it: $(VAR) only sees variables declared earlier.
  const env: V1EnvVar[] = [
    fieldEnv("POD_NAME", "metadata.name"),
    fieldEnv("POD_NAMESPACE", "metadata.namespace"),
    fieldEnv("POD_IP", "status.podIP"),
  ];
  if (component === "gateway")
    env.push(
      // The routing table names a gateway by its Pod, so the operator's gateway-gone record matches it.
      fieldEnv(envName(["gateway", "id"]), "metadata.name"),
      // Routers dial this Pod itself for its Deliver stream (not a Service: each gateway is distinct).
      { name: envName(["gateway", "advertiseAddress"]), value: `$(POD_IP):${GRPC_PORT}` },
    );
  // Snowflake worker ids must be unique: the StatefulSet ordinal is.
  if (component === "id") env.push(fieldEnv(envName(["id", "workerId"]), ORDINAL_FIELD));
  // Presence shard i is Pod i: the gateways' shard list names the Pods by ordinal.
  if (component === "presence") env.push(fieldEnv(envName(["cluster", "presenceShard"]), ORDINAL_FIELD));
  if (usesStorage(component)) env.push(...storageEnv(cluster, inputs));
  // The key named as such (auth.secretFile): a gateway on the Pod IP then knows it is meant, not the
  // data dir's dev secret picked up by default.
  if (cluster.spec.auth.secretRef)
    env.push(
      { name: envName(["dataDir"]), value: AUTH_DIR },
      { name: envName(["auth", "secretFile"]), value: `${AUTH_DIR}/${AUTH_SECRET_FILE}` },
    );
  const mounts: V1VolumeMount[] = [{ name: "tmp", mountPath: "/tmp" }];
  if (cluster.spec.auth.secretRef) mounts.push({ name: "auth", mountPath: AUTH_DIR, readOnly: true });
  if (mountsKafkaTls(cluster, component))
    mounts.push({ name: "kafka-tls", mountPath: KAFKA_TLS_DIR, readOnly: true });
  if (mountsCassandraTls(cluster, component))
    mounts.push({ name: "cassandra-tls", mountPath: CASSANDRA_TLS_DIR, readOnly: true });
  const identity = grpcIdentityPod(cluster, component);
  const tls = grpcTlsPod(cluster, component);
  const pushCredentials = pushCredentialsPod(cluster, component);
  env.push(...identity.env, ...tls.env, ...pushCredentials.env);
  mounts.push(...identity.mounts, ...tls.mounts, ...pushCredentials.mounts);
  return {
    name: component,
    image: imageReference(cluster.spec.image, cluster.spec.version),
    imagePullPolicy: cluster.spec.imagePullPolicy,
    args: ["start", "--role", component],
    envFrom: [{ configMapRef: { name: configMapName(cluster) } }],
    env,
    ports: [
      { name: "http", containerPort: HTTP_PORT, protocol: "TCP" },
      ...(servesGrpc(component) ? [{ name: "grpc", containerPort: GRPC_PORT, protocol: "TCP" }] : []),
      { name: "internal", containerPort: INTERNAL_PORT, protocol: "TCP" },
    ],
    ...PROBES,
    resources: spec.resources ?? defaultResources(component),
    ...(component === "gateway" ? { lifecycle: GATEWAY_LIFECYCLE } : {}),
    securityContext: { ...RESTRICTED_CONTAINER_SECURITY, capabilities: { drop: ["ALL"] } },
    volumeMounts: mounts,
  };
}

/**
 * What each role's container requests when spec.<role>.resources is unset (the CRD's description
 * says so): enough for a small cluster, so that the scheduler places the Pods by what they use and
 * they are not the first evicted (BestEffort) under node pressure. A spec that sets resources, even
 * only limits, replaces these whole (`{}`: none at all).
 *
 * Memory: limit = request. Memory cannot be taken back from a process, so a Pod using more than it
 * was scheduled for would push the node into pressure and get others evicted; with the limit at the
 * request, the scheduler's accounting is what the node sees, and a Pod that outgrows it is OOM-killed
 * alone (and should get a larger spec.<role>.resources). CPU: a request and no limit. CPU is
 * compressible: a busy Pod borrows idle CPU, and a CFS quota would only throttle an event loop into
 * latency spikes (a gateway's reconnect storm, a router's fan-out) while the node has CPU to spare.
 */
const DEFAULT_RESOURCES: Readonly<Record<ComponentName, { cpu: string; memory: string }>> = {
  // WebSocket connections: memory per connection, CPU per frame.
  gateway: { cpu: "250m", memory: "512Mi" },
  // Fan-out, history and membership reads: the busiest of the back end.
  router: { cpu: "250m", memory: "512Mi" },
  // Presence state of its shard, in memory.
  presence: { cpu: "100m", memory: "256Mi" },
  push: { cpu: "100m", memory: "256Mi" },
  // Snowflake ids: no storage, little state.
  id: { cpu: "50m", memory: "128Mi" },
  sequencer: { cpu: "250m", memory: "384Mi" },
};

export function defaultResources(component: ComponentName): V1ResourceRequirements {
  const { cpu, memory } = DEFAULT_RESOURCES[component];
  return { requests: { cpu, memory }, limits: { memory } };
}

/**
 * A gateway told to stop (SIGTERM) refuses new WebSocket connections at once, but its Pod leaves the
 * Service's endpoints, and the load balancers and kube-proxies behind them, only a moment after its
 * deletion: connections sent there in between would be refused. The kubelet's own sleep (no shell in
 * the distroless image, so no `exec` of sleep) delays the SIGTERM until they have caught up. The
 * `sleep` action is beta and on by default from Kubernetes 1.30, the chart's minimum (GA in 1.34).
 * The grace period (terminationGraceSeconds) counts the sleep too.
 */
export const GATEWAY_PRE_STOP_SECONDS = 5;

const GATEWAY_LIFECYCLE: V1Lifecycle = { preStop: { sleep: { seconds: GATEWAY_PRE_STOP_SECONDS } } };

/**
 * A process may take its shutdownTimeoutMs to stop (the default: the operator owns the setting and
 * leaves it unset), a gateway its drain first; the kubelet's SIGKILL comes this long after either
 * could end, not at the moment a slow stop would have finished (the default grace is 30 s, the
 * default stop bound too).
 */
const STOP_MARGIN_SECONDS = 10;
const STOP_SECONDS = schema.shutdownTimeoutMs.default / 1000;

/** A Pod's grace period: a gateway's counts its sleep, its drain, and a scale-down drain's wait. */
export function terminationGraceSeconds(cluster: ChatCluster, component: ComponentName): number {
  if (component !== "gateway") return STOP_SECONDS + STOP_MARGIN_SECONDS;
  const drainTimeout = cluster.spec.gateway.autoscaling.drainTimeoutSeconds;
  const ownStop = GATEWAY_PRE_STOP_SECONDS + gatewayShutdownDrainMs(cluster) / 1000 + STOP_SECONDS;
  return Math.max(drainTimeout + 30, Math.ceil(ownStop) + STOP_MARGIN_SECONDS);
}

/**
 * How long a gateway told to stop spreads its clients' reconnects (gateway.shutdownDrainMs): like a
 * scale-down drain, within half its timeout and at most 10 s.
 */
export function gatewayShutdownDrainMs(cluster: ChatCluster): number {
  return Math.min(10_000, (cluster.spec.gateway.autoscaling.drainTimeoutSeconds * 1000) / 2);
}

/**
 * Spread every role's Pods over the nodes when the spec says nothing about spreading
 * (spec.<role>.scheduling.topologySpreadConstraints unset; an empty list opts out): one node's loss
 * then takes at most a share of each role. Soft (ScheduleAnyway): with fewer nodes than Pods, or
 * nodes full, the Pods still schedule.
 */
function defaultTopologySpread(cluster: ChatCluster, component: ComponentName): V1TopologySpreadConstraint[] {
  return [
    {
      maxSkew: 1,
      topologyKey: "kubernetes.io/hostname",
      whenUnsatisfiable: "ScheduleAnyway",
      labelSelector: { matchLabels: selectorLabels(cluster, component) },
    },
  ];
}

/**
 * The probes of every role's container. /healthz answers as soon as the process's HTTP server
 * listens, before its storage sessions open: the startup probe covers only that boot (module loading
 * on a loaded node: up to two minutes), and liveness counts only once the process has answered.
 * Opening storage and joining consumer groups (many seconds, or as long as the storage is down) is
 * readiness's business: /readyz fails until they are done, with no deadline and no restart, since a
 * restart would not bring the storage back. Liveness is for a hung process, not a busy one: a
 * gateway taking a reconnect storm may leave a probe unanswered for a second or two, and killing it
 * then would push its clients onto the others and spread the storm (seen as gateways restarted in
 * turn under load). So it needs three checks in a row, each unanswered for 5 s. Readiness reacts in
 * about 10 s. The probes ask the `http` port, the one the Service sends clients to, not `internal`
 * (which answers /healthz and /readyz too): a Pod is ready when the port its clients use answers.
 */
const PROBES: Pick<V1Container, "startupProbe" | "livenessProbe" | "readinessProbe"> = {
  startupProbe: { httpGet: { path: "/healthz", port: "http" }, periodSeconds: 1, failureThreshold: 120 },
  livenessProbe: {
    httpGet: { path: "/healthz", port: "http" },
    periodSeconds: 10,
    timeoutSeconds: 5,
    failureThreshold: 3,
  },
  readinessProbe: {
    httpGet: { path: "/readyz", port: "http" },
    periodSeconds: 5,
    timeoutSeconds: 2,
    failureThreshold: 2,
  },
};

function podTemplate(
  cluster: ChatCluster,
  component: ComponentName,
  spec: ComponentSpec,
  inputs: WorkloadInputs,
): V1PodTemplateSpec {
  const volumes: V1Volume[] = [{ name: "tmp", emptyDir: { sizeLimit: "256Mi" } }];
  const ref = cluster.spec.auth.secretRef;
  if (ref)
    volumes.push({
      name: "auth",
      secret: { secretName: ref.name, items: [{ key: ref.key ?? "secret", path: AUTH_SECRET_FILE }] },
    });
  // The whole Secret, not items: an item whose key the Secret lost would keep the Pod from starting.
  // Mounted without subPath, the files follow the Secret when it is rotated.
  const kafkaTls = cluster.spec.kafka.tls?.secretRef;
  if (kafkaTls && mountsKafkaTls(cluster, component))
    volumes.push({ name: "kafka-tls", secret: { secretName: kafkaTls.name } });
  const cassandraTls = cluster.spec.cassandra.tls?.secretRef;
  if (cassandraTls && mountsCassandraTls(cluster, component))
    volumes.push({ name: "cassandra-tls", secret: { secretName: cassandraTls.name } });
  volumes.push(
    ...grpcIdentityPod(cluster, component).volumes,
    ...grpcTlsPod(cluster, component).volumes,
    ...pushCredentialsPod(cluster, component).volumes,
  );
  const sched = spec.scheduling ?? {};
  return {
    metadata: {
      labels: labels(cluster, component),
      annotations: { [CONFIG_HASH_ANNOTATION]: inputs.configHash },
    },
    spec: {
      // Its own ServiceAccount (its gRPC principal); its tokens come only through projected volumes.
      serviceAccountName: roleServiceAccountName(cluster, component),
      automountServiceAccountToken: false,
      securityContext: { ...RESTRICTED_POD_SECURITY, seccompProfile: { type: "RuntimeDefault" } },
      containers: [container(cluster, component, spec, inputs)],
      volumes,
      ...(cluster.spec.imagePullSecrets ? { imagePullSecrets: cluster.spec.imagePullSecrets } : {}),
      ...(sched.nodeSelector ? { nodeSelector: sched.nodeSelector } : {}),
      ...(sched.tolerations
        ? { tolerations: sched.tolerations as NonNullable<V1PodSpec["tolerations"]> }
        : {}),
      ...(sched.affinity ? { affinity: sched.affinity as NonNullable<V1PodSpec["affinity"]> } : {}),
      topologySpreadConstraints:
        (sched.topologySpreadConstraints as V1PodSpec["topologySpreadConstraints"]) ??
        defaultTopologySpread(cluster, component),
      ...(sched.priorityClassName ? { priorityClassName: sched.priorityClassName } : {}),
      terminationGracePeriodSeconds: terminationGraceSeconds(cluster, component),
    },
  };
}

/** `replicas` is the gateway autoscaler's choice for the gateway, the spec's for the others. */
export function desiredDeployment(
  cluster: ChatCluster,
  component: DeploymentComponent,
  replicas: number,
  inputs: WorkloadInputs,
): V1Deployment {
  const spec = cluster.spec[component];
  return {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: ownedMeta(cluster, componentName(cluster, component), component),
    spec: {
      replicas,
      selector: { matchLabels: selectorLabels(cluster, component) },
      // New before old, for every role: a gateway going away costs its clients a reconnect, and a role
      // of one replica (push, by default) would otherwise have none ready while the new Pod starts
      // (the router gives a notification up after 0.2, 1 and 5 s).
      strategy: { type: "RollingUpdate", rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } },
      template: podTemplate(cluster, component, spec, inputs),
    },
  };
}

/** The StatefulSet of id or presence; its Pods get stable names through the headless Service. */
export function desiredStatefulSet(
  cluster: ChatCluster,
  component: StatefulComponent,
  inputs: WorkloadInputs,
): V1StatefulSet {
  return {
    apiVersion: "apps/v1",
    kind: "StatefulSet",
    metadata: ownedMeta(cluster, componentName(cluster, component), component),
    spec: {
      replicas: cluster.spec[component].replicas,
      serviceName: componentName(cluster, component),
      // Ordinals only need to exist, not to start in order (an id's worker id, a presence shard):
      // start and stop the Pods in parallel. Updates still replace one Pod at a time.
      podManagementPolicy: "Parallel",
      selector: { matchLabels: selectorLabels(cluster, component) },
      template: podTemplate(cluster, component, cluster.spec[component], inputs),
    },
  };
}
