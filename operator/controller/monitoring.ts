/**
 * The Prometheus Operator PodMonitor of a ChatCluster (spec.observability.metrics.podMonitor): one
 * object that scrapes /metrics on the `internal` port (http.internalPort, which no Service exposes)
 * of every Pod of the cluster, whatever its role, and
 * turns the Pods' labels into the `role` and `chatcluster` labels that the dashboards and alerts group
 * by (Prometheus adds `namespace`, `pod` and `container` itself). The Prometheus Operator is optional:
 * the reconciler creates the PodMonitor only when the API server serves the kind.
 */
import type { KubernetesObject } from "@kubernetes/client-node";
import type { ChatCluster } from "../api/v1alpha1.js";
import { ownedMeta, selectorLabels } from "./names.js";

export const POD_MONITOR_GROUP_VERSION = "monitoring.coreos.com/v1";
export const POD_MONITOR_KIND = { apiVersion: POD_MONITOR_GROUP_VERSION, kind: "PodMonitor" } as const;
export const POD_MONITOR_PLURAL = "podmonitors";

export const podMonitorName = (cluster: ChatCluster) => `${cluster.metadata.name}-switchboard`;

/** The spec asks for a PodMonitor (and for the metrics it would scrape: the CRD insists on both). */
export function wantsPodMonitor(cluster: ChatCluster): boolean {
  const metrics = cluster.spec.observability.metrics;
  return metrics.enabled && (metrics.podMonitor?.enabled ?? false);
}

/** Prometheus' name for a Pod label in service discovery: every character not [a-zA-Z0-9_] becomes _. */
export const podLabelMeta = (label: string) =>
  `__meta_kubernetes_pod_label_${label.replace(/[^a-zA-Z0-9_]/g, "_")}`;

export interface PodMonitor extends KubernetesObject {
  spec: {
    selector: { matchLabels: Record<string, string> };
    podMetricsEndpoints: Array<{
      port: string;
      path: string;
      interval?: string;
      relabelings: Array<{ sourceLabels: string[]; targetLabel: string; action: "replace" }>;
    }>;
  };
}

export function desiredPodMonitor(cluster: ChatCluster): PodMonitor {
  const spec = cluster.spec.observability.metrics.podMonitor;
  const meta = ownedMeta(cluster, podMonitorName(cluster));
  return {
    ...POD_MONITOR_KIND,
    // The user's labels first: the operator's own (instance, managed-by: how it finds what it owns) win.
    metadata: { ...meta, labels: { ...spec?.labels, ...meta.labels } },
    spec: {
      // Every role: no component label. The PodMonitor lives in the cluster's namespace, where
      // the Prometheus Operator looks for the Pods when no namespaceSelector is given.
      selector: { matchLabels: selectorLabels(cluster) },
      podMetricsEndpoints: [
        {
          port: "internal",
          path: "/metrics",
          ...(spec?.interval ? { interval: spec.interval } : {}),
          relabelings: [
            {
              sourceLabels: [podLabelMeta("app.kubernetes.io/component")],
              targetLabel: "role",
              action: "replace",
            },
            {
              sourceLabels: [podLabelMeta("app.kubernetes.io/instance")],
              targetLabel: "chatcluster",
              action: "replace",
            },
          ],
        },
      ],
    },
  };
}
