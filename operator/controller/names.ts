/** Names and labels of the objects the operator owns for one ChatCluster. */
import { API_VERSION, type ChatCluster, type ComponentName, KIND } from "../api/v1alpha1.js";

export const FINALIZER = "switchboard.dev/cleanup";
export const MANAGED_BY = "switchboard-operator";
/** Pod annotations the operator writes on gateways it drains. */
export const DRAIN_STARTED_ANNOTATION = "switchboard.dev/drain-started-at";
/** Set on a drained gateway Pod when replicas were lowered for it (or could not be): it should go. */
export const DRAIN_DONE_ANNOTATION = "switchboard.dev/drain-done-at";
export const DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost";
/** Pod template annotation: a changed configuration rolls the Pods. */
export const CONFIG_HASH_ANNOTATION = "switchboard.dev/config-hash";

/**
 * Ports every Switchboard container serves: HTTP (clients, and /healthz and /readyz), gRPC (not the
 * sequencer), and the internal HTTP port (http.internalPort: /healthz, /readyz, /metrics), which no
 * Service exposes and the PodMonitor scrapes.
 */
export const HTTP_PORT = 8080;
export const GRPC_PORT = 9090;
export const INTERNAL_PORT = 9091;

export function componentName(cluster: ChatCluster, component: ComponentName): string {
  return `${cluster.metadata.name}-${component}`;
}

/** The sequencer serves no gRPC (it reads and writes Kafka and Cassandra); every other component does. */
export const servesGrpc = (component: ComponentName): boolean => component !== "sequencer";

/** Every component but id (Snowflake ids need no storage) reads or writes Kafka and Cassandra. */
export const usesStorage = (component: ComponentName): boolean => component !== "id";

/** The cluster's DNS domain (the Kubernetes default), in the Service names the services dial. */
export const CLUSTER_DOMAIN = "cluster.local";

/** `<cluster>-<component>.<namespace>.svc.cluster.local`: the component's (headless) Service. */
export function serviceHost(cluster: ChatCluster, component: ComponentName): string {
  return `${componentName(cluster, component)}.${cluster.metadata.namespace ?? "default"}.svc.${CLUSTER_DOMAIN}`;
}

/**
 * The gRPC target of a component: its headless Service through grpc-js's DNS resolver, which
 * resolves every ready Pod's IP and spreads calls over them (round robin).
 */
export function grpcTarget(cluster: ChatCluster, component: ComponentName): string {
  return `dns:///${serviceHost(cluster, component)}:${GRPC_PORT}`;
}

/** The gRPC target of each presence shard, in shard order: the stable DNS name of StatefulSet Pod i. */
export function presenceShardTargets(cluster: ChatCluster): string[] {
  const pod = componentName(cluster, "presence");
  const host = serviceHost(cluster, "presence");
  return Array.from(
    { length: cluster.spec.presence.replicas },
    (_, i) => `dns:///${pod}-${i}.${host}:${GRPC_PORT}`,
  );
}

export const configMapName = (cluster: ChatCluster) => `${cluster.metadata.name}-config`;
/** Each component's own ServiceAccount (ADR 0007): its principal is `role:<component>`. */
export const roleServiceAccountName = (cluster: ChatCluster, component: ComponentName) =>
  `${cluster.metadata.name}-${component}`;
/** The ConfigMap of the gRPC policy file (grpc.policyFile): outside the config hash, read on change. */
export const grpcPolicyConfigMapName = (cluster: ChatCluster) => `${cluster.metadata.name}-grpc-policy`;
/**
 * The Secret (cert-manager's layout) of a component's gRPC key pair and CA, and the cert-manager
 * Certificate that fills it when spec.grpc.tls.issuerRef is set (ADR 0007).
 */
export const grpcTlsSecretName = (cluster: ChatCluster, component: ComponentName) =>
  `${cluster.metadata.name}-${component}-grpc-tls`;
/** The audience the cluster's gRPC ServiceAccount tokens are bound to. */
export const tokenAudience = (cluster: ChatCluster) => `switchboard.dev/${cluster.metadata.name}`;
/** The components whose code calls other components over gRPC (the others need no token of their own). */
export const callsGrpc = (component: ComponentName): boolean =>
  component === "gateway" || component === "router" || component === "presence";

/** Annotation on every owned object: spec.version as written, which a label cannot always hold. */
export const VERSION_ANNOTATION = "switchboard.dev/version";

/** A label value: at most 63 characters, alphanumeric at both ends, `-_.` inside (or empty). */
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
export const isLabelValue = (value: string): boolean => value.length <= 63 && LABEL_VALUE.test(value);

/** `sha256:<hex>` (or `@sha256:<hex>`): a digest alone. A tag has no colon; `tag@digest` is a tag. */
const isDigest = (version: string): boolean =>
  version.startsWith("@") || (!version.includes("@") && version.includes(":"));

/**
 * The `app.kubernetes.io/version` label of a spec.version: the tag (`1.2.3`, or the tag part of
 * `1.2.3@sha256:…`) when it is a valid label value; none for a bare digest (`sha256:…`, the colon is
 * not allowed) or a tag longer than 63 characters, which a label cannot hold (the API server would
 * refuse every object with a 422). VERSION_ANNOTATION keeps the whole version.
 */
export function versionLabel(version: string): string | undefined {
  if (isDigest(version)) return undefined;
  const tag = version.split("@")[0] ?? "";
  return tag !== "" && isLabelValue(tag) ? tag : undefined;
}

/**
 * The image reference of spec.image at spec.version: `repo:tag`, `repo@sha256:…` for a digest, and
 * `repo:tag@sha256:…` for a tag pinned to a digest (the runtime pulls by the digest).
 */
export function imageReference(image: string, version: string): string {
  if (isDigest(version)) return `${image}@${version.replace(/^@/, "")}`;
  return `${image}:${version}`;
}

/** Labels on every owned object; the selector labels are the subset that never changes. */
export function labels(cluster: ChatCluster, component?: ComponentName): Record<string, string> {
  const version = versionLabel(cluster.spec.version);
  return {
    ...selectorLabels(cluster, component),
    "app.kubernetes.io/managed-by": MANAGED_BY,
    ...(version === undefined ? {} : { "app.kubernetes.io/version": version }),
  };
}

export function selectorLabels(cluster: ChatCluster, component?: ComponentName): Record<string, string> {
  const base: Record<string, string> = {
    "app.kubernetes.io/name": "switchboard",
    "app.kubernetes.io/instance": cluster.metadata.name ?? "",
  };
  if (component) base["app.kubernetes.io/component"] = component;
  return base;
}

/** The label selector of every object this operator made for `cluster` (its list calls and its prune). */
export function ownedObjectsSelector(cluster: ChatCluster): string {
  return selectorString({
    "app.kubernetes.io/instance": cluster.metadata.name ?? "",
    "app.kubernetes.io/managed-by": MANAGED_BY,
  });
}

/** `a=b,c=d` for list calls. */
export function selectorString(selector: Record<string, string>): string {
  return Object.entries(selector)
    .map(([k, v]) => `${k}=${v}`)
    .join(",");
}

export function ownerReference(cluster: ChatCluster) {
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    name: cluster.metadata.name ?? "",
    uid: cluster.metadata.uid ?? "",
    controller: true,
    blockOwnerDeletion: true,
  };
}

/** metadata for an owned object. */
export function ownedMeta(cluster: ChatCluster, name: string, component?: ComponentName) {
  return {
    name,
    namespace: cluster.metadata.namespace ?? "default",
    labels: labels(cluster, component),
    annotations: { [VERSION_ANNOTATION]: cluster.spec.version },
    ownerReferences: [ownerReference(cluster)],
  };
}
