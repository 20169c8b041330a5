/** Services, NetworkPolicies and PodDisruptionBudgets of a ChatCluster. */
import type { V1NetworkPolicy, V1PodDisruptionBudget, V1Service } from "@kubernetes/client-node";
import type { ChatCluster, ComponentName } from "../api/v1alpha1.js";
import {
  componentName,
  GRPC_PORT,
  HTTP_PORT,
  INTERNAL_PORT,
  ownedMeta,
  selectorLabels,
  servesGrpc,
} from "./names.js";

/**
 * The Service of a component that serves gRPC (the sequencer serves none, and nothing dials it: no
 * Service). Every Service but the gateway's client-facing one is headless (clusterIP None): its DNS
 * name resolves to every ready Pod, so grpc-js (`dns:///` targets) spreads calls over all of them
 * instead of pinning one connection to one Pod behind a virtual IP; the StatefulSets' Pods (id,
 * presence) get their stable names from it.
 *
 * The gateway's Service is the clients' (often a LoadBalancer): HTTP only, which serves no /metrics
 * (those are on the internal port, which no Service exposes: the PodMonitor scrapes the Pods). Nothing
 * dials the gateways' gRPC through a Service: routers open each gateway's Deliver stream on the Pod IP it advertises in
 * the routing table, and the operator calls Stats and Drain on each Pod's IP (gateway-client.ts).
 */
export function desiredService(cluster: ChatCluster, component: ComponentName): V1Service | undefined {
  if (!servesGrpc(component)) return undefined;
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
      // The user's annotations (e.g. for a load balancer); the operator's own win a clash.
      metadata: { ...meta, annotations: { ...svc.annotations, ...meta.annotations } },
      spec: {
        type: svc.type,
        selector: selectorLabels(cluster, component),
        // Clients reach the gateways over WebSocket on port 80. gRPC (9090) and the internal port
        // (9091, /metrics) are not exposed here: they would be on the load balancer; routers and the
        // operator dial the Pod IPs instead, and Prometheus scrapes them.
        ports: [{ name: "http", port: 80, targetPort: "http", protocol: "TCP" }],
      },
    };
  }
  return {
    apiVersion: "v1",
    kind: "Service",
    metadata: meta,
    spec: { clusterIP: "None", selector: selectorLabels(cluster, component), ports },
  };
}

/**
 * One Pod of a component may be evicted at a time; none for components of a single replica.
 * `unhealthyPodEvictionPolicy: AlwaysAllow`: a Pod that is not ready (e.g. every Pod during a storage
 * outage) protects nothing by staying, so a drain may evict it; with the default (IfHealthyBudget) a
 * budget with no healthy Pod would block every node drain until the outage ends.
 */
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
    spec: {
      maxUnavailable: 1,
      selector: { matchLabels: selectorLabels(cluster, component) },
      unhealthyPodEvictionPolicy: "AlwaysAllow",
    },
  };
}

/** Who calls whom over gRPC: the components whose Pods may reach each component's gRPC port. */
export const GRPC_CALLERS: Readonly<Record<ComponentName, readonly ComponentName[]>> = {
  // Routers open each gateway's Deliver stream (the operator's Stats and Drain are added below).
  gateway: ["router"],
  // Gateways allocate ids (and routers, for the sends of the server API), send heartbeats to
  // presence and relay typing and receipts to routers; presence relays presence events to routers,
  // and routers relay the server API's group changes through the router their conversation is
  // pinned to; routers read presence for the server API's GetPresence; routers notify offline
  // members through push, and gateways register devices' push tokens with it (ADR 0005). Keep in
  // step with the callers of each method in internal/grpc-auth/policy.ts (METHOD_RULES).
  id: ["gateway", "router"],
  presence: ["gateway", "router"],
  router: ["gateway", "presence", "router"],
  push: ["gateway", "router"],
  sequencer: [],
};

/**
 * Ingress, least privilege: HTTP (WebSocket on the gateways; probes everywhere) and the internal port
 * (/metrics, /healthz, /readyz) from anywhere, as the scraper may run in any namespace, with any
 * labels, or outside the Pod network; gRPC only from the components that call it (GRPC_CALLERS), and
 * on the gateways from the operator too (Stats, Drain): from its own namespace when it knows it (its
 * ServiceAccount's), as a Pod label alone is anyone's to set. The sequencer serves no gRPC: HTTP
 * only. The internal port is kept from the internet by no Service exposing it, not by this policy.
 */
export function desiredNetworkPolicy(
  cluster: ChatCluster,
  component: ComponentName,
  operatorNamespace?: string,
): V1NetworkPolicy {
  const peers: Array<Record<string, unknown>> = GRPC_CALLERS[component].map((caller) => ({
    podSelector: { matchLabels: selectorLabels(cluster, caller) },
  }));
  if (component === "gateway")
    peers.push({
      namespaceSelector: operatorNamespace
        ? { matchLabels: { "kubernetes.io/metadata.name": operatorNamespace } }
        : {},
      podSelector: { matchLabels: { "app.kubernetes.io/name": "switchboard-operator" } },
    });
  // The server API's backend clients (spec.api.clients) call the routers: a ServiceAccount's from its
  // namespace; one with a certificate from wherever it runs (its certificate admits it, not its place).
  if (component === "router") peers.push(...apiClientPeers(cluster));
  const ingress: Array<Record<string, unknown>> = [
    {
      ports: [
        { port: HTTP_PORT, protocol: "TCP" },
        { port: INTERNAL_PORT, protocol: "TCP" },
      ],
    },
  ];
  if (peers.length > 0) ingress.push({ from: peers, ports: [{ port: GRPC_PORT, protocol: "TCP" }] });
  return {
    apiVersion: "networking.k8s.io/v1",
    kind: "NetworkPolicy",
    metadata: ownedMeta(cluster, componentName(cluster, component), component),
    spec: {
      podSelector: { matchLabels: selectorLabels(cluster, component) },
      policyTypes: ["Ingress"],
      ingress,
    },
  } as V1NetworkPolicy;
}

/** Where the server API's clients may reach the routers' gRPC port from. */
function apiClientPeers(cluster: ChatCluster): Array<Record<string, unknown>> {
  const clients = cluster.spec.api?.clients ?? [];
  if (clients.some((c) => c.certificate !== undefined)) return [{ namespaceSelector: {} }];
  const namespaces = [
    ...new Set(clients.flatMap((c) => (c.serviceAccount ? [c.serviceAccount.namespace] : []))),
  ];
  return namespaces.sort().map((namespace) => ({
    namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": namespace } },
  }));
}
