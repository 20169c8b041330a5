/** Services, NetworkPolicies, PodDisruptionBudgets and the ServiceAccount of a ChatCluster. */
import type {
  V1NetworkPolicy,
  V1PodDisruptionBudget,
  V1Service,
  V1ServiceAccount,
} from "@kubernetes/client-node";
import type { ChatCluster, ComponentName } from "../api/v1alpha1.js";
import {
  componentName,
  GRPC_PORT,
  HTTP_PORT,
  ownedMeta,
  selectorLabels,
  serviceAccountName,
} from "./names.js";

export function desiredServiceAccount(cluster: ChatCluster): V1ServiceAccount {
  return {
    apiVersion: "v1",
    kind: "ServiceAccount",
    metadata: ownedMeta(cluster, serviceAccountName(cluster)),
    // The services never call the Kubernetes API.
    automountServiceAccountToken: false,
  };
}

export function desiredService(cluster: ChatCluster, component: ComponentName): V1Service {
  const meta = ownedMeta(cluster, componentName(cluster, component), component);
  const ports = [
    { name: "http", port: HTTP_PORT, targetPort: "http", protocol: "TCP" },
    { name: "grpc", port: GRPC_PORT, targetPort: "grpc", protocol: "TCP" },
  ];
  if (component === "gateway") {
    const svc = cluster.spec.gateway.service;
    return {
      apiVersion: "v1",
      kind: "Service",
      metadata: { ...meta, ...(svc.annotations ? { annotations: svc.annotations } : {}) },
      spec: {
        type: svc.type,
        selector: selectorLabels(cluster, component),
        // Clients reach the gateways over WebSocket on port 80; gRPC stays inside the cluster.
        ports: [{ name: "http", port: 80, targetPort: "http", protocol: "TCP" }, ports[1]!],
      },
    };
  }
  return {
    apiVersion: "v1",
    kind: "Service",
    metadata: meta,
    spec: {
      // The id service is headless: its StatefulSet Pods get stable DNS names.
      ...(component === "id" ? { clusterIP: "None" } : { type: "ClusterIP" }),
      selector: selectorLabels(cluster, component),
      ports,
    },
  };
}

/** One Pod of a component may be evicted at a time; none for components of a single replica. */
export function desiredPodDisruptionBudget(
  cluster: ChatCluster,
  component: ComponentName,
  replicas: number,
): V1PodDisruptionBudget | undefined {
  if (replicas < 2) return undefined;
  return {
    apiVersion: "policy/v1",
    kind: "PodDisruptionBudget",
    metadata: ownedMeta(cluster, componentName(cluster, component), component),
    spec: { maxUnavailable: 1, selector: { matchLabels: selectorLabels(cluster, component) } },
  };
}

/**
 * Ingress: gateways take WebSocket/HTTP from anywhere and gRPC from the cluster's own Pods and the
 * operator (Stats, Drain); every other component takes gRPC only from the cluster's own Pods, and
 * HTTP (probes, /metrics) from anywhere.
 */
export function desiredNetworkPolicy(cluster: ChatCluster, component: ComponentName): V1NetworkPolicy {
  const peers: Array<Record<string, unknown>> = [{ podSelector: { matchLabels: selectorLabels(cluster) } }];
  if (component === "gateway")
    peers.push({
      namespaceSelector: {},
      podSelector: { matchLabels: { "app.kubernetes.io/name": "switchboard-operator" } },
    });
  return {
    apiVersion: "networking.k8s.io/v1",
    kind: "NetworkPolicy",
    metadata: ownedMeta(cluster, componentName(cluster, component), component),
    spec: {
      podSelector: { matchLabels: selectorLabels(cluster, component) },
      policyTypes: ["Ingress"],
      ingress: [
        { ports: [{ port: HTTP_PORT, protocol: "TCP" }] },
        { from: peers, ports: [{ port: GRPC_PORT, protocol: "TCP" }] },
      ],
    },
  } as V1NetworkPolicy;
}
