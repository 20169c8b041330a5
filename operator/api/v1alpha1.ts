/**
 * The ChatCluster API (switchboard.dev/v1alpha1) as the operator reads it. The CRD's OpenAPI schema
 * (k8s/crd/chatclusters.switchboard.dev.yaml) is the source of truth for validation and defaults: the
 * API server fills the defaults in, so by the time the operator sees a spec every defaulted field is
 * set. These types mirror that schema; `test/kube/crd.test.ts` checks the two agree.
 */
import type { V1Condition, V1ObjectMeta } from "@kubernetes/client-node";

export const GROUP = "switchboard.dev";
export const VERSION = "v1alpha1";
export const API_VERSION = `${GROUP}/${VERSION}`;
export const KIND = "ChatCluster";
export const PLURAL = "chatclusters";

/** The components the operator deploys, in the order they start. */
export const COMPONENTS = ["id", "router", "presence", "push", "sequencer", "gateway"] as const;
export type ComponentName = (typeof COMPONENTS)[number];

export interface SecretKeyRef {
  name: string;
  key?: string;
}

export interface LocalObjectRef {
  name: string;
}

export interface ResourceRequirements {
  requests?: Record<string, string>;
  limits?: Record<string, string>;
}

export interface Scheduling {
  nodeSelector?: Record<string, string>;
  tolerations?: unknown[];
  affinity?: unknown;
  topologySpreadConstraints?: unknown[];
  priorityClassName?: string;
}

export interface ComponentSpec {
  replicas: number;
  resources?: ResourceRequirements;
  scheduling?: Scheduling;
}

export interface GatewayAutoscaling {
  enabled: boolean;
  minReplicas: number;
  maxReplicas: number;
  targetConnectionsPerPod: number;
  stabilizationWindowSeconds: number;
  drainTimeoutSeconds: number;
}

export interface GatewaySpec extends ComponentSpec {
  autoscaling: GatewayAutoscaling;
  service: { type: "ClusterIP" | "NodePort" | "LoadBalancer"; annotations?: Record<string, string> };
}

export interface PresenceSpec extends ComponentSpec {
  heartbeatIntervalSeconds: number;
  offlineAfterSeconds: number;
}

export interface PushSpec extends ComponentSpec {
  webhook?: { url: string; secretRef?: SecretKeyRef };
  fcm?: { secretRef: SecretKeyRef };
  apns?: {
    /** The .p8 token-auth key (default key `AuthKey.p8`). */
    secretRef: SecretKeyRef;
    keyId: string;
    teamId: string;
    /** The app's bundle ID (apns-topic). */
    topic: string;
    environment: "production" | "development";
  };
  webpush?: {
    /** The VAPID private key (default key `vapid-private-key`). */
    secretRef: SecretKeyRef;
    vapidPublicKey: string;
    /** mailto: or https: contact for push services. */
    subject: string;
  };
}

export interface KafkaSpec {
  bootstrapServers: string[];
  topicPrefix: string;
  tls?: { enabled: boolean; secretRef?: LocalObjectRef };
  sasl?: { mechanism: "plain" | "scram-sha-256" | "scram-sha-512"; secretRef: LocalObjectRef };
  topics: { partitions: number; replicationFactor: number; retentionHours: number };
}

export interface CassandraSpec {
  contactPoints: string[];
  datacenter: string;
  keyspace: string;
  replication: { class: "SimpleStrategy" | "NetworkTopologyStrategy"; factor: number };
  consistency: "LOCAL_QUORUM" | "QUORUM" | "LOCAL_ONE" | "ONE" | "EACH_QUORUM" | "ALL";
  credentialsSecretRef?: LocalObjectRef;
  /** TLS to the nodes; the Secret's ca.crt holds the CAs of their certificates (unset: the system's). */
  tls?: { enabled: boolean; secretRef?: LocalObjectRef };
}

export interface AuthSpec {
  jwksUrl?: string;
  secretRef?: SecretKeyRef;
  /** Several issuers, each with the JWKS URL of its keys (the services' auth.issuers). */
  issuers?: Array<{ issuer: string; jwksUrl: string }>;
  issuer?: string;
  audience?: string;
  /** Leeway for nbf and exp between the issuer's clock and the services' (auth.clockSkewSeconds). */
  clockSkewSeconds?: number;
}

/** A Prometheus Operator PodMonitor (monitoring.coreos.com/v1) for every Pod of the cluster. */
export interface PodMonitorSpec {
  enabled: boolean;
  /** Extra labels on the PodMonitor, e.g. the one a Prometheus' podMonitorSelector matches. */
  labels?: Record<string, string>;
  /** Scrape interval, e.g. 30s (the Prometheus' own when unset). */
  interval?: string;
}

export interface ObservabilitySpec {
  metrics: {
    enabled: boolean;
    /**
     * Defaulted ({enabled: false}) by the CRD; absent only when the operator runs against a CRD
     * older than itself (Helm does not upgrade CRDs), which is read as disabled.
     */
    podMonitor?: PodMonitorSpec;
  };
  otlp?: { endpoint: string };
  /** Defaulted (info) by the CRD; absent only under a CRD older than the operator. */
  logLevel?: "debug" | "info" | "warn" | "error";
}

/**
 * A backend caller of the gRPC API (ADR 0007): how it authenticates (a ServiceAccount's projected
 * token, or a client certificate whose URI SAN is `switchboard://client:<name>`) and what it may do.
 */
export interface ApiClient {
  /** Its principal is `client:<name>`. */
  name: string;
  serviceAccount?: { namespace: string; name: string };
  certificate?: { uri: string };
  /** Permission names (internal/grpc-auth/policy.ts PERMISSIONS; the CRD's enum lists them). */
  permissions: string[];
  /** Every sender it may publish as, in place of its own bot:<name> (list that too to keep it); empty: bot:<name>. */
  sendAs?: string[];
  /** The conversations it may publish into or read: all, these, or (neither) those it is a member of. */
  conversations?: { all?: boolean; ids?: string[] };
}

export interface ApiSpec {
  clients: ApiClient[];
}

/** The cert-manager issuer that signs the components' gRPC certificates (a Certificate's issuerRef). */
export interface IssuerRef {
  name: string;
  /** Issuer (in the ChatCluster's namespace) or ClusterIssuer; defaulted to Issuer by the CRD. */
  kind: "Issuer" | "ClusterIssuer";
  /** The issuer's API group; defaulted to cert-manager.io (external issuers have their own). */
  group: string;
}

/**
 * mTLS on every component's gRPC port (ADR 0007): each serving component's Pods mount a Secret in
 * cert-manager's layout (tls.crt, tls.key, ca.crt) named `<cluster>-<component>-grpc-tls`. With an
 * issuerRef the operator creates cert-manager Certificates that fill those Secrets; without one the
 * Secrets are expected to exist (made by any other means).
 */
export interface GrpcTlsSpec {
  enabled: boolean;
  issuerRef?: IssuerRef;
}

export interface GrpcSpec {
  tls: GrpcTlsSpec;
}

export interface ChatClusterSpec {
  image: string;
  version: string;
  imagePullPolicy: "Always" | "IfNotPresent" | "Never";
  imagePullSecrets?: LocalObjectRef[];
  gateway: GatewaySpec;
  router: ComponentSpec;
  presence: PresenceSpec;
  push: PushSpec;
  id: ComponentSpec;
  /** The sequencers (ADR 0002): they assign each conversation's seq from the Kafka log. */
  sequencer: ComponentSpec;
  kafka: KafkaSpec;
  cassandra: CassandraSpec;
  auth: AuthSpec;
  observability: ObservabilitySpec;
  /**
   * The gRPC API's backend clients. Defaulted ({clients: []}) by the CRD; absent only under a CRD older
   * than the operator, read as no clients.
   */
  api?: ApiSpec;
  /**
   * The components' gRPC ports. Defaulted ({tls: {enabled: false}}) by the CRD; absent only under a CRD
   * older than the operator, read as no TLS.
   */
  grpc?: GrpcSpec;
  /**
   * Settings of the services the spec has no field for, by dotted name ("gateway.connectionsMax"), each
   * a string as its environment variable would hold it (controller/settings.ts).
   */
  settings?: Record<string, string>;
}

export interface ComponentStatus {
  replicas: number;
  readyReplicas: number;
}

export interface GatewayStatus {
  pod: string;
  /** Absent when the gateway's count could not be read. */
  connections?: number;
  draining: boolean;
}

export interface ChatClusterStatus {
  observedGeneration?: number;
  conditions?: V1Condition[];
  components?: Partial<Record<ComponentName, ComponentStatus>>;
  gateways?: GatewayStatus[];
  connections?: number;
  /** Replicas the autoscaler wants for the gateway (between min and max). */
  gatewayDesiredReplicas?: number;
  /** Whether the Kafka topics and the Cassandra schema were provisioned for this generation. */
  provisionedGeneration?: number;
  /** The Cassandra schema version the operator last brought the keyspace to. */
  provisionedSchemaVersion?: number;
  /** spec.version when provisioning last succeeded: the image a generation not provisioned keeps. */
  provisionedVersion?: string;
  /** Digest of what provisioning last read (storageInputs): kept so that a restart does not provision again. */
  provisionedStorage?: string;
}

export interface ChatCluster {
  apiVersion: typeof API_VERSION;
  kind: typeof KIND;
  metadata: V1ObjectMeta;
  spec: ChatClusterSpec;
  status?: ChatClusterStatus;
}
