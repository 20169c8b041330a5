/**
 * The Deployments (gateway, router, presence, push) and the StatefulSet (id: its Snowflake worker id
 * is the Pod's ordinal) of a ChatCluster. Every Pod meets the `restricted` Pod Security Standard:
 * non-root, read-only root filesystem, no privilege escalation, all capabilities dropped, seccomp
 * RuntimeDefault; only /tmp is writable.
 */
import type {
  V1Container,
  V1Deployment,
  V1PodSpec,
  V1PodTemplateSpec,
  V1StatefulSet,
  V1Volume,
} from "@kubernetes/client-node";
import { envName } from "../../internal/lib/config.js";
import type { ChatCluster, ComponentName, ComponentSpec } from "../api/v1alpha1.js";
import {
  CONFIG_HASH_ANNOTATION,
  componentName,
  configMapName,
  GRPC_PORT,
  HTTP_PORT,
  labels,
  ownedMeta,
  selectorLabels,
  serviceAccountName,
} from "./names.js";

/** Where the HS256 secret of `spec.auth.secretRef` is mounted (the services read it from their data dir). */
const AUTH_DIR = "/etc/switchboard/auth";
const AUTH_SECRET_FILE = "dev-jwt-secret";

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

function container(cluster: ChatCluster, component: ComponentName, spec: ComponentSpec): V1Container {
  const env: V1Container["env"] = [
    { name: "POD_NAME", valueFrom: { fieldRef: { fieldPath: "metadata.name" } } },
    { name: "POD_NAMESPACE", valueFrom: { fieldRef: { fieldPath: "metadata.namespace" } } },
  ];
  // The routing table names a gateway by its Pod, so the operator's gateway-gone record matches it.
  if (component === "gateway")
    env.push({ name: envName(["gateway", "id"]), valueFrom: { fieldRef: { fieldPath: "metadata.name" } } });
  // Snowflake worker ids must be unique: the StatefulSet ordinal is (the pod-index label, k8s >= 1.28).
  if (component === "id")
    env.push({
      name: envName(["id", "workerId"]),
      valueFrom: { fieldRef: { fieldPath: "metadata.labels['apps.kubernetes.io/pod-index']" } },
    });
  if (cluster.spec.auth.secretRef) env.push({ name: envName(["dataDir"]), value: AUTH_DIR });
  return {
    name: component,
    image: `${cluster.spec.image}:${cluster.spec.version}`,
    imagePullPolicy: cluster.spec.imagePullPolicy,
    args: ["start", "--role", component],
    envFrom: [{ configMapRef: { name: configMapName(cluster) } }],
    env,
    ports: [
      { name: "http", containerPort: HTTP_PORT, protocol: "TCP" },
      { name: "grpc", containerPort: GRPC_PORT, protocol: "TCP" },
    ],
    readinessProbe: { httpGet: { path: "/readyz", port: "http" }, periodSeconds: 5, failureThreshold: 2 },
    livenessProbe: { httpGet: { path: "/healthz", port: "http" }, periodSeconds: 10, failureThreshold: 3 },
    ...(spec.resources ? { resources: spec.resources } : {}),
    securityContext: { ...RESTRICTED_CONTAINER_SECURITY, capabilities: { drop: ["ALL"] } },
    volumeMounts: [
      { name: "tmp", mountPath: "/tmp" },
      ...(cluster.spec.auth.secretRef ? [{ name: "auth", mountPath: AUTH_DIR, readOnly: true }] : []),
    ],
  };
}

function podTemplate(
  cluster: ChatCluster,
  component: ComponentName,
  spec: ComponentSpec,
  configHash: string,
  terminationGracePeriodSeconds?: number,
): V1PodTemplateSpec {
  const volumes: V1Volume[] = [{ name: "tmp", emptyDir: { sizeLimit: "256Mi" } }];
  const ref = cluster.spec.auth.secretRef;
  if (ref)
    volumes.push({
      name: "auth",
      secret: { secretName: ref.name, items: [{ key: ref.key ?? "secret", path: AUTH_SECRET_FILE }] },
    });
  const sched = spec.scheduling ?? {};
  return {
    metadata: { labels: labels(cluster, component), annotations: { [CONFIG_HASH_ANNOTATION]: configHash } },
    spec: {
      serviceAccountName: serviceAccountName(cluster),
      automountServiceAccountToken: false,
      securityContext: { ...RESTRICTED_POD_SECURITY, seccompProfile: { type: "RuntimeDefault" } },
      containers: [container(cluster, component, spec)],
      volumes,
      ...(cluster.spec.imagePullSecrets ? { imagePullSecrets: cluster.spec.imagePullSecrets } : {}),
      ...(sched.nodeSelector ? { nodeSelector: sched.nodeSelector } : {}),
      ...(sched.tolerations
        ? { tolerations: sched.tolerations as NonNullable<V1PodSpec["tolerations"]> }
        : {}),
      ...(sched.affinity ? { affinity: sched.affinity as NonNullable<V1PodSpec["affinity"]> } : {}),
      ...(sched.topologySpreadConstraints
        ? {
            topologySpreadConstraints: sched.topologySpreadConstraints as NonNullable<
              V1PodSpec["topologySpreadConstraints"]
            >,
          }
        : {}),
      ...(sched.priorityClassName ? { priorityClassName: sched.priorityClassName } : {}),
      ...(terminationGracePeriodSeconds === undefined ? {} : { terminationGracePeriodSeconds }),
    },
  };
}

export type DeploymentComponent = Exclude<ComponentName, "id">;

/** `replicas` is the gateway autoscaler's choice for the gateway, the spec's for the others. */
export function desiredDeployment(
  cluster: ChatCluster,
  component: DeploymentComponent,
  replicas: number,
  configHash: string,
): V1Deployment {
  const spec = cluster.spec[component];
  const gateway = component === "gateway";
  return {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: ownedMeta(cluster, componentName(cluster, component), component),
    spec: {
      replicas,
      selector: { matchLabels: selectorLabels(cluster, component) },
      // A gateway going away costs its clients a reconnect: add the new Pod before removing an old one.
      strategy: { type: "RollingUpdate", rollingUpdate: { maxSurge: 1, maxUnavailable: gateway ? 0 : 1 } },
      template: podTemplate(
        cluster,
        component,
        spec,
        configHash,
        // Time for a gateway to close its connections and the kubelet to stop it after a drain.
        gateway ? cluster.spec.gateway.autoscaling.drainTimeoutSeconds + 30 : undefined,
      ),
    },
  };
}

export function desiredStatefulSet(cluster: ChatCluster, configHash: string): V1StatefulSet {
  return {
    apiVersion: "apps/v1",
    kind: "StatefulSet",
    metadata: ownedMeta(cluster, componentName(cluster, "id"), "id"),
    spec: {
      replicas: cluster.spec.id.replicas,
      serviceName: componentName(cluster, "id"),
      // Worker ids only need to be unique, not ordered: start and stop the Pods in parallel.
      podManagementPolicy: "Parallel",
      selector: { matchLabels: selectorLabels(cluster, "id") },
      template: podTemplate(cluster, "id", cluster.spec.id, configHash),
    },
  };
}
