/**
 * Everything a ChatCluster should own, as a pure function of its spec, the gateway replica count the
 * autoscaler chose and the keys of the Kafka TLS Secret. The reconciler applies these objects and
 * deletes owned objects that are no longer desired (a PodDisruptionBudget when a component drops to
 * one replica; the presence Deployment of operators before presence was a StatefulSet; the PodMonitor
 * when the spec stops asking for it; the gRPC Certificates when spec.grpc.tls stops naming an issuer).
 */
import type { KubernetesObject } from "@kubernetes/client-node";
import { type ChatCluster, COMPONENTS } from "../api/v1alpha1.js";
import { configHash, desiredConfigMap } from "./config.js";
import { type AccountRef, desiredGrpcPolicyConfigMap, desiredRoleServiceAccounts } from "./grpc-identity.js";
import { desiredCertificates } from "./grpc-tls.js";
import { desiredPodMonitor, wantsPodMonitor } from "./monitoring.js";
import { desiredNetworkPolicy, desiredPodDisruptionBudget, desiredService } from "./network.js";
import { desiredDeployment, desiredStatefulSet, isStateful } from "./workloads.js";

/** What the desired objects depend on besides the spec, read from the cluster by the reconciler. */
export interface DesiredInputs {
  /** The gateway replicas the autoscaler chose (the spec's without autoscaling). */
  gatewayReplicas: number;
  /** The keys of the Kafka TLS Secret among ca.crt, tls.crt, tls.key (storage.ts kafkaTlsKeys). */
  kafkaTlsKeys?: readonly string[];
  /** The API server serves monitoring.coreos.com/v1 PodMonitors (the Prometheus Operator's CRDs). */
  podMonitorServed?: boolean;
  /** The operator's own ServiceAccount: its token is the `operator` principal (Drain, Stats). */
  operatorAccount?: AccountRef | undefined;
  /** The API server serves cert-manager.io/v1 Certificates (cert-manager's CRDs). */
  certificatesServed?: boolean;
  /** The cluster's ConfigMap's data as it is (its spec settings stay while new ones are refused). */
  currentConfig?: Readonly<Record<string, string>>;
}

/**
 * Kinds the operator owns, for listing and pruning: apiVersion and kind. Besides these, the PodMonitor
 * (monitoring.ts) and the cert-manager Certificates (grpc-tls.ts), listed and pruned only where the API
 * server serves them.
 */
export const OWNED_KINDS = [
  { apiVersion: "v1", kind: "ServiceAccount" },
  { apiVersion: "v1", kind: "ConfigMap" },
  { apiVersion: "v1", kind: "Service" },
  { apiVersion: "apps/v1", kind: "Deployment" },
  { apiVersion: "apps/v1", kind: "StatefulSet" },
  { apiVersion: "policy/v1", kind: "PodDisruptionBudget" },
  { apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy" },
] as const;

export function desiredObjects(cluster: ChatCluster, inputs: DesiredInputs): KubernetesObject[] {
  const config = desiredConfigMap(cluster, inputs.currentConfig);
  const workload = {
    configHash: configHash({ ...(config.data ?? {}), authSecret: cluster.spec.auth.secretRef?.name ?? "" }),
    kafkaTlsKeys: inputs.kafkaTlsKeys ?? [],
  };
  const objects: KubernetesObject[] = [
    ...desiredRoleServiceAccounts(cluster),
    config,
    desiredGrpcPolicyConfigMap(cluster, inputs.operatorAccount),
  ];
  for (const component of COMPONENTS) {
    const replicas = component === "gateway" ? inputs.gatewayReplicas : cluster.spec[component].replicas;
    objects.push(
      isStateful(component)
        ? desiredStatefulSet(cluster, component, workload)
        : desiredDeployment(cluster, component, replicas, workload),
    );
    const service = desiredService(cluster, component);
    if (service) objects.push(service);
    objects.push(desiredNetworkPolicy(cluster, component, inputs.operatorAccount?.namespace));
    const pdb = desiredPodDisruptionBudget(cluster, component, replicas);
    if (pdb) objects.push(pdb);
  }
  if (inputs.podMonitorServed && wantsPodMonitor(cluster)) objects.push(desiredPodMonitor(cluster));
  // Where cert-manager is missing the Pods still mount their Secrets (and wait for them): a TLS spec
  // never falls back to plaintext. The GrpcTLS condition says why nothing is issued.
  if (inputs.certificatesServed) objects.push(...desiredCertificates(cluster));
  return objects;
}
