import type { V1ConfigMap, V1Deployment, V1Service } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import { exampleSpec } from "../../test/kube/example-spec.js";
import type { ChatCluster, PodMonitorSpec } from "../api/v1alpha1.js";
import { desiredObjects } from "./desired.js";
import { desiredPodMonitor, podLabelMeta, wantsPodMonitor } from "./monitoring.js";

function withMonitoring(metricsEnabled: boolean, podMonitor?: PodMonitorSpec): ChatCluster {
  return {
    apiVersion: "switchboard.dev/v1alpha1",
    kind: "ChatCluster",
    metadata: { name: "chat", namespace: "prod", uid: "uid-1", generation: 1 },
    spec: {
      ...exampleSpec,
      observability: {
        metrics: { enabled: metricsEnabled, ...(podMonitor === undefined ? {} : { podMonitor }) },
      },
    },
  };
}

const podMonitors = (cluster: ChatCluster, podMonitorServed: boolean) =>
  desiredObjects(cluster, { gatewayReplicas: 1, podMonitorServed }).filter((o) => o.kind === "PodMonitor");

describe("the PodMonitor", () => {
  it("is desired only when the spec asks for it, metrics are on, and the API server serves the kind", () => {
    const on = withMonitoring(true, { enabled: true });
    expect(wantsPodMonitor(on)).toBe(true);
    expect(podMonitors(on, true).map((o) => o.metadata?.name)).toEqual(["chat-switchboard"]);
    // No Prometheus Operator CRDs: nothing to create (the reconciler says so in a condition).
    expect(podMonitors(on, false)).toEqual([]);
    // Off by default, and off when the CRD is older than the operator (no podMonitor field at all).
    for (const off of [
      withMonitoring(true, { enabled: false }),
      withMonitoring(true),
      withMonitoring(false, { enabled: true }),
    ]) {
      expect(wantsPodMonitor(off)).toBe(false);
      expect(podMonitors(off, true)).toEqual([]);
    }
  });

  it("selects every Pod of the cluster on its internal port's /metrics, owned by the ChatCluster", () => {
    const pm = desiredPodMonitor(withMonitoring(true, { enabled: true }));
    expect(pm.apiVersion).toBe("monitoring.coreos.com/v1");
    expect(pm.kind).toBe("PodMonitor");
    expect(pm.metadata?.namespace).toBe("prod");
    expect(pm.metadata?.ownerReferences).toEqual([
      {
        apiVersion: "switchboard.dev/v1alpha1",
        kind: "ChatCluster",
        name: "chat",
        uid: "uid-1",
        controller: true,
        blockOwnerDeletion: true,
      },
    ]);
    // No component label: gateway, router, presence, push, id and sequencer alike.
    expect(pm.spec.selector).toEqual({
      matchLabels: { "app.kubernetes.io/name": "switchboard", "app.kubernetes.io/instance": "chat" },
    });
    expect(pm.spec.podMetricsEndpoints).toHaveLength(1);
    const endpoint = pm.spec.podMetricsEndpoints[0]!;
    expect(endpoint).toMatchObject({ port: "internal", path: "/metrics" });
    expect(endpoint.interval).toBeUndefined();
  });

  it("scrapes a port every Pod names, where its process serves /metrics, and no Service exposes", () => {
    const cluster = withMonitoring(true, { enabled: true });
    const objects = desiredObjects(cluster, { gatewayReplicas: 1, podMonitorServed: true });
    const port = desiredPodMonitor(cluster).spec.podMetricsEndpoints[0]!.port;
    const env = (objects.find((o) => o.kind === "ConfigMap") as V1ConfigMap).data;
    const workloads = objects.filter(
      (o) => o.kind === "Deployment" || o.kind === "StatefulSet",
    ) as V1Deployment[];
    expect(workloads).toHaveLength(6);
    for (const w of workloads) {
      const named = w.spec?.template.spec?.containers[0]?.ports?.find((p) => p.name === port);
      expect(named?.containerPort, w.metadata?.name).toBe(9091);
      expect(env?.SWITCHBOARD_HTTP_INTERNAL_PORT).toBe(String(named?.containerPort));
    }
    for (const svc of objects.filter((o) => o.kind === "Service") as V1Service[])
      expect(svc.spec?.ports?.some((p) => p.targetPort === port || p.port === 9091)).toBe(false);
  });

  it("relabels the Pods' component into role and instance into chatcluster", () => {
    const endpoint = desiredPodMonitor(withMonitoring(true, { enabled: true })).spec.podMetricsEndpoints[0]!;
    expect(endpoint.relabelings).toEqual([
      {
        sourceLabels: ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
        targetLabel: "role",
        action: "replace",
      },
      {
        sourceLabels: ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
        targetLabel: "chatcluster",
        action: "replace",
      },
    ]);
    expect(podLabelMeta("apps.kubernetes.io/pod-index")).toBe(
      "__meta_kubernetes_pod_label_apps_kubernetes_io_pod_index",
    );
  });

  it("carries the spec's labels and interval, never in place of the labels the operator prunes by", () => {
    const pm = desiredPodMonitor(
      withMonitoring(true, {
        enabled: true,
        interval: "15s",
        labels: {
          release: "kube-prometheus-stack",
          "app.kubernetes.io/instance": "someone-else",
          "app.kubernetes.io/managed-by": "helm",
        },
      }),
    );
    expect(pm.metadata?.labels).toEqual({
      release: "kube-prometheus-stack",
      "app.kubernetes.io/name": "switchboard",
      "app.kubernetes.io/instance": "chat",
      "app.kubernetes.io/managed-by": "switchboard-operator",
      "app.kubernetes.io/version": "0.1.0",
    });
    expect(pm.spec.podMetricsEndpoints[0]?.interval).toBe("15s");
  });
});
