/**
 * Everything a ChatCluster should own, as a pure function of its spec and the gateway replica count
 * the autoscaler chose. The reconciler applies these objects and deletes owned objects that are no
 * longer desired (a PodDisruptionBudget when a component drops to one replica).
 */
import type { KubernetesObject } from "@kubernetes/client-node";
import { type ChatCluster, COMPONENTS } from "../api/v1alpha1.js";
import { configHash, desiredConfigMap } from "./config.js";
import {
  desiredNetworkPolicy,
  desiredPodDisruptionBudget,
  desiredService,
  desiredServiceAccount,
} from "./network.js";
import { desiredDeployment, desiredStatefulSet } from "./workloads.js";

/** Kinds the operator owns, for listing and pruning: apiVersion and kind. */
export const OWNED_KINDS = [
  { apiVersion: "v1", kind: "ServiceAccount" },
  { apiVersion: "v1", kind: "ConfigMap" },
  { apiVersion: "v1", kind: "Service" },
  { apiVersion: "apps/v1", kind: "Deployment" },
  { apiVersion: "apps/v1", kind: "StatefulSet" },
  { apiVersion: "policy/v1", kind: "PodDisruptionBudget" },
  { apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy" },
] as const;

export function desiredObjects(cluster: ChatCluster, gatewayReplicas: number): KubernetesObject[] {
  const config = desiredConfigMap(cluster);
  const hash = configHash({ ...(config.data ?? {}), authSecret: cluster.spec.auth.secretRef?.name ?? "" });
  const objects: KubernetesObject[] = [desiredServiceAccount(cluster), config];
  for (const component of COMPONENTS) {
    const replicas = component === "gateway" ? gatewayReplicas : cluster.spec[component].replicas;
    objects.push(
      component === "id"
        ? desiredStatefulSet(cluster, hash)
        : desiredDeployment(cluster, component, replicas, hash),
      desiredService(cluster, component),
      desiredNetworkPolicy(cluster, component),
    );
    const pdb = desiredPodDisruptionBudget(cluster, component, replicas);
    if (pdb) objects.push(pdb);
  }
  return objects;
}
