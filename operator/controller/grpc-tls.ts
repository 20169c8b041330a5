/**
 * mTLS on a ChatCluster's gRPC ports (spec.grpc.tls; ADR 0007). Every serving component's Pods mount
 * the Secret `<cluster>-<component>-grpc-tls` in cert-manager's layout (tls.crt, tls.key, ca.crt) as
 * grpc.tls.dir, which the services re-read when it changes (renewal restarts nothing), and run with
 * grpc.tls.clientCertificate=optional: certificate clients are admitted, and in-cluster callers that
 * present only their ServiceAccount token (the components themselves do present their certificate;
 * the operator's Drain and Stats do not) keep working over TLS.
 *
 * With spec.grpc.tls.issuerRef the operator creates one cert-manager Certificate per component that
 * fills the Secret: URI SAN `switchboard://role:<component>` (the identity the other roles' clients
 * check instead of a host name), usages server and client auth (the same key pair serves the port and
 * makes the component's own calls), the DNS names of its Service for callers that dial it by name.
 * Without an issuerRef the Secrets are the user's to provide. Pure functions of the spec, like every
 * builder of desired objects.
 */
import type { KubernetesObject, V1EnvVar, V1Volume, V1VolumeMount } from "@kubernetes/client-node";
import { envName } from "../../internal/lib/config.js";
import { type ChatCluster, COMPONENTS, type ComponentName } from "../api/v1alpha1.js";
import { componentName, grpcTlsSecretName, ownedMeta, servesGrpc, serviceHost } from "./names.js";

export const CERTIFICATE_GROUP_VERSION = "cert-manager.io/v1";
export const CERTIFICATE_KIND = "Certificate";
export const CERTIFICATE_PLURAL = "certificates";
/** Where a component's gRPC TLS Secret is mounted; the directory is grpc.tls.dir. */
export const GRPC_TLS_DIR = "/etc/switchboard/grpc-tls";
/** The keys of cert-manager's Secret layout, all of which grpc.tls.dir needs. */
export const GRPC_TLS_KEYS = ["tls.crt", "tls.key", "ca.crt"] as const;

/** A cert-manager Certificate, as much of it as the operator writes and reads. */
export interface Certificate extends KubernetesObject {
  spec: {
    secretName: string;
    uris: string[];
    dnsNames: string[];
    usages: string[];
    privateKey: { algorithm: string; size: number; rotationPolicy: string };
    issuerRef: { name: string; kind: string; group: string };
  };
  status?: { conditions?: { type: string; status: string; reason?: string; message?: string }[] };
}

export const wantsGrpcTls = (cluster: ChatCluster): boolean => cluster.spec.grpc?.tls.enabled === true;

/** The operator creates the Certificates (an issuer is named); otherwise the Secrets are provided. */
export const wantsCertificates = (cluster: ChatCluster): boolean =>
  wantsGrpcTls(cluster) && cluster.spec.grpc?.tls.issuerRef !== undefined;

/** The components that get a gRPC certificate: those that serve gRPC (every caller serves too). */
export const GRPC_TLS_COMPONENTS: readonly ComponentName[] = COMPONENTS.filter(servesGrpc);

/** The identity a component's certificate names, which the other roles' clients check. */
export const roleIdentityUri = (component: ComponentName) => `switchboard://role:${component}`;

/**
 * The names a caller may dial the component by: its Service, short and qualified, and for the
 * StatefulSets' headless Services each Pod's stable name under it (the presence shards are dialled so).
 */
export function grpcDnsNames(cluster: ChatCluster, component: ComponentName): string[] {
  const name = componentName(cluster, component);
  const namespace = cluster.metadata.namespace ?? "default";
  const names = [name, `${name}.${namespace}`, `${name}.${namespace}.svc`, serviceHost(cluster, component)];
  if (component === "id" || component === "presence") names.push(`*.${serviceHost(cluster, component)}`);
  return names;
}

export function desiredCertificates(cluster: ChatCluster): Certificate[] {
  const issuer = cluster.spec.grpc?.tls.issuerRef;
  if (!wantsGrpcTls(cluster) || !issuer) return [];
  return GRPC_TLS_COMPONENTS.map((component) => ({
    apiVersion: CERTIFICATE_GROUP_VERSION,
    kind: CERTIFICATE_KIND,
    metadata: ownedMeta(cluster, grpcTlsSecretName(cluster, component), component),
    spec: {
      secretName: grpcTlsSecretName(cluster, component),
      uris: [roleIdentityUri(component)],
      dnsNames: grpcDnsNames(cluster, component),
      // One key pair serves the port and makes the component's own calls to the other roles.
      usages: ["digital signature", "server auth", "client auth"],
      // A new key with every renewal: a leaked key dies with its certificate.
      privateKey: { algorithm: "ECDSA", size: 256, rotationPolicy: "Always" },
      issuerRef: { name: issuer.name, kind: issuer.kind, group: issuer.group },
    },
  }));
}

/** What a component's Pod adds for gRPC TLS: its Secret's volume and mount, and the settings. */
export interface GrpcTlsPod {
  volumes: V1Volume[];
  mounts: V1VolumeMount[];
  env: V1EnvVar[];
}

export function grpcTlsPod(cluster: ChatCluster, component: ComponentName): GrpcTlsPod {
  if (!wantsGrpcTls(cluster) || !servesGrpc(component)) return { volumes: [], mounts: [], env: [] };
  return {
    // The whole Secret, mounted without subPath: the files follow the Secret when it is renewed. Until
    // the Secret exists (cert-manager has not issued yet) the kubelet keeps the Pod from starting:
    // never a plaintext port by accident.
    volumes: [{ name: "grpc-tls", secret: { secretName: grpcTlsSecretName(cluster, component) } }],
    mounts: [{ name: "grpc-tls", mountPath: GRPC_TLS_DIR, readOnly: true }],
    env: [
      { name: envName(["grpc", "tls", "dir"]), value: GRPC_TLS_DIR },
      // Bearer callers without a certificate (ServiceAccount tokens: the operator, in-cluster clients)
      // are still admitted; a certificate, when presented, must verify.
      { name: envName(["grpc", "tls", "clientCertificate"]), value: "optional" },
    ],
  };
}

export type GrpcTlsState =
  /** The operator's Certificates all report Ready, or every provided Secret has the three keys. */
  | { kind: "Ready" }
  /** Certificates not Ready yet (or not readable), by component, with cert-manager's reason. */
  | { kind: "CertificatesNotReady"; notReady: string[] }
  /** The API server serves no cert-manager.io/v1 Certificate: cert-manager is not installed. */
  | { kind: "CertManagerNotInstalled" }
  /** Provided Secrets missing, or lacking one of the keys. */
  | { kind: "SecretsMissing"; missing: string[] }
  /** Not applied yet (storage not provisioned, or the apply failed). */
  | { kind: "Pending" };

/** Whether a Certificate reports Ready=True; otherwise why not, for the condition's message. */
export function certificateNotReady(certificate: Certificate): string | undefined {
  const ready = certificate.status?.conditions?.find((c) => c.type === "Ready");
  if (ready?.status === "True") return undefined;
  const why = ready
    ? `${ready.reason ?? "NotReady"}${ready.message ? `: ${ready.message}` : ""}`
    : "not issued yet";
  return `${certificate.metadata?.name} (${why})`;
}

/** The keys of GRPC_TLS_KEYS a Secret's data lacks (all of them when there is no Secret). */
export function missingTlsKeys(data: Record<string, string> | undefined): string[] {
  return GRPC_TLS_KEYS.filter((key) => !data?.[key]);
}
