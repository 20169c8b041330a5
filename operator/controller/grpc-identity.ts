/**
 * Who the ChatCluster's processes are on gRPC, and who may call them (ADR 0007):
 * - one ServiceAccount per component (`<cluster>-<component>`, principal `role:<component>`);
 * - each calling component mounts a projected token of its ServiceAccount bound to the cluster's
 *   audience (`switchboard.dev/<cluster>`, 1 h, rotated by the kubelet) and sends it with its calls;
 * - each serving component verifies tokens with TokenReview, for which it mounts an API token of its
 *   own (projected like the kubelet's automount, which stays off: the only thing RBAC lets that token
 *   do is create TokenReviews) and is bound to the token-review ClusterRole;
 * - the policy file (a ConfigMap every Pod mounts, re-read on change, outside the config hash:
 *   a new client rolls no Pod) maps those ServiceAccounts, the operator's and the clients' of
 *   `spec.api.clients` to principals and lists the clients' grants.
 * Pure functions of the spec, like every builder of desired objects.
 */
import type {
  V1ClusterRoleBinding,
  V1ConfigMap,
  V1EnvVar,
  V1ServiceAccount,
  V1Volume,
  V1VolumeMount,
} from "@kubernetes/client-node";
import { envName } from "../../internal/lib/config.js";
import { POLICY_FILE_NAME, type PolicyFile } from "../../internal/lib/grpc-policy-file.js";
import { type ChatCluster, COMPONENTS, type ComponentName } from "../api/v1alpha1.js";
import {
  callsGrpc,
  grpcPolicyConfigMapName,
  labels,
  ownedMeta,
  roleServiceAccountName,
  servesGrpc,
  tokenAudience,
} from "./names.js";

/** `namespace/name` of a ServiceAccount. */
export interface AccountRef {
  namespace: string;
  name: string;
}

/** Where the projected gRPC token is mounted; its file is grpc.credentialFile. */
export const GRPC_TOKEN_DIR = "/var/run/secrets/switchboard.dev/grpc";
/** Where the policy file's ConfigMap is mounted; its file is grpc.policyFile. */
export const GRPC_POLICY_DIR = "/etc/switchboard/grpc-policy";
/** Where in-cluster Kubernetes clients look for their token, CA and namespace. */
const KUBE_API_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";
/** Lifetime asked of both projected tokens; the kubelet renews them at 80 % of it. */
const TOKEN_SECONDS = 3600;

export function desiredRoleServiceAccounts(cluster: ChatCluster): V1ServiceAccount[] {
  return COMPONENTS.map((component) => ({
    apiVersion: "v1",
    kind: "ServiceAccount",
    metadata: ownedMeta(cluster, roleServiceAccountName(cluster, component), component),
    // Tokens reach the Pods only through the projected volumes below.
    automountServiceAccountToken: false,
  }));
}

/** The policy file: ServiceAccounts → principals, and the clients' grants. */
export function grpcPolicy(cluster: ChatCluster, operatorAccount: AccountRef | undefined): PolicyFile {
  const namespace = cluster.metadata.namespace ?? "default";
  const serviceAccounts: Record<string, string> = {};
  for (const component of COMPONENTS)
    if (callsGrpc(component))
      serviceAccounts[`${namespace}/${roleServiceAccountName(cluster, component)}`] = `role:${component}`;
  if (operatorAccount) serviceAccounts[`${operatorAccount.namespace}/${operatorAccount.name}`] = "operator";
  const clients = cluster.spec.api?.clients ?? [];
  for (const c of clients)
    if (c.serviceAccount)
      serviceAccounts[`${c.serviceAccount.namespace}/${c.serviceAccount.name}`] = `client:${c.name}`;
  return {
    serviceAccounts,
    clients: clients.map((c) => ({
      name: c.name,
      permissions: c.permissions,
      ...(c.sendAs ? { sendAs: c.sendAs } : {}),
      ...(c.conversations ? { conversations: c.conversations } : {}),
    })),
  };
}

export function desiredGrpcPolicyConfigMap(
  cluster: ChatCluster,
  operatorAccount: AccountRef | undefined,
): V1ConfigMap {
  return {
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: ownedMeta(cluster, grpcPolicyConfigMapName(cluster)),
    data: { [POLICY_FILE_NAME]: `${JSON.stringify(grpcPolicy(cluster, operatorAccount), null, 2)}\n` },
  };
}

/** Name of the cluster's token-review binding; `:` cannot occur in a namespace or a name. */
export const tokenReviewBindingName = (cluster: ChatCluster) =>
  `switchboard:tokenreview:${cluster.metadata.namespace ?? "default"}:${cluster.metadata.name}`;
/** Label naming the namespace of the ChatCluster of a cluster-scoped object (no owner reference). */
export const CLUSTER_NAMESPACE_LABEL = "switchboard.dev/chatcluster-namespace";

/**
 * Binds the serving components' ServiceAccounts to `clusterRole` (`tokenreviews: create`, from the
 * chart). TokenReviews are cluster-scoped, so the binding is too, and a cluster-scoped object cannot
 * be owned by a namespaced ChatCluster: the reconciler deletes it in its finalizer.
 */
export function desiredTokenReviewBinding(cluster: ChatCluster, clusterRole: string): V1ClusterRoleBinding {
  const namespace = cluster.metadata.namespace ?? "default";
  return {
    apiVersion: "rbac.authorization.k8s.io/v1",
    kind: "ClusterRoleBinding",
    metadata: {
      name: tokenReviewBindingName(cluster),
      labels: { ...labels(cluster), [CLUSTER_NAMESPACE_LABEL]: namespace },
    },
    roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: clusterRole },
    subjects: COMPONENTS.filter(servesGrpc).map((component) => ({
      kind: "ServiceAccount",
      name: roleServiceAccountName(cluster, component),
      namespace,
    })),
  };
}

/** What a component's Pod adds for its gRPC identity: volumes, their mounts, and env. */
export interface GrpcIdentityPod {
  volumes: V1Volume[];
  mounts: V1VolumeMount[];
  env: V1EnvVar[];
}

export function grpcIdentityPod(cluster: ChatCluster, component: ComponentName): GrpcIdentityPod {
  const pod: GrpcIdentityPod = { volumes: [], mounts: [], env: [] };
  if (callsGrpc(component)) {
    pod.volumes.push({
      name: "grpc-token",
      projected: {
        sources: [
          {
            serviceAccountToken: {
              audience: tokenAudience(cluster),
              expirationSeconds: TOKEN_SECONDS,
              path: "token",
            },
          },
        ],
      },
    });
    pod.mounts.push({ name: "grpc-token", mountPath: GRPC_TOKEN_DIR, readOnly: true });
    pod.env.push({ name: envName(["grpc", "credentialFile"]), value: `${GRPC_TOKEN_DIR}/token` });
  }
  if (servesGrpc(component)) {
    pod.volumes.push({
      name: "kube-api",
      projected: {
        sources: [
          { serviceAccountToken: { expirationSeconds: TOKEN_SECONDS, path: "token" } },
          { configMap: { name: "kube-root-ca.crt", items: [{ key: "ca.crt", path: "ca.crt" }] } },
          {
            downwardAPI: {
              items: [{ path: "namespace", fieldRef: { apiVersion: "v1", fieldPath: "metadata.namespace" } }],
            },
          },
        ],
      },
    });
    pod.mounts.push({ name: "kube-api", mountPath: KUBE_API_DIR, readOnly: true });
  }
  // Every component, the sequencer too: each process reads grpc.policyFile (the shared ConfigMap names
  // it) when it starts, whether it serves gRPC or not, and stops if the file is missing.
  pod.volumes.push({ name: "grpc-policy", configMap: { name: grpcPolicyConfigMapName(cluster) } });
  pod.mounts.push({ name: "grpc-policy", mountPath: GRPC_POLICY_DIR, readOnly: true });
  return pod;
}
