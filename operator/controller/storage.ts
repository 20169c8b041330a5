/**
 * A ChatCluster's storage settings resolved for the operator's own clients: Kafka (for provisioning
 * and gateway-gone records) and Cassandra (for provisioning), with credentials read from the
 * Secrets the spec names. Secrets are read with `get` only (the chart grants nothing more). A missing
 * or incomplete Secret is an error naming the Secret and the spec field: the reconciler reports it in
 * the Degraded condition.
 */
import type { ConnectionOptions } from "node:tls";
import type { V1Secret } from "@kubernetes/client-node";
import { cassandraTls } from "../../internal/lib/cassandra-tls.js";
import type { ChatCluster } from "../api/v1alpha1.js";
import type { KubeClient } from "../kube/client.js";
import type { KafkaTarget } from "./gone-records.js";

export interface CassandraTarget {
  contactPoints: string[];
  localDataCenter: string;
  keyspace: string;
  replication:
    | { class: "SimpleStrategy"; replication_factor: number }
    | { class: "NetworkTopologyStrategy"; datacenters: Record<string, number> };
  credentials?: { username: string; password: string };
  /** TLS to the nodes (spec.cassandra.tls): their certificates checked against the Secret's CAs. */
  ssl?: ConnectionOptions;
}

/** The key of the Cassandra TLS Secret (`spec.cassandra.tls.secretRef`): the nodes' CAs. */
export const CASSANDRA_TLS_CA_KEY = "ca.crt";

/**
 * The keys of a Kafka TLS Secret (`spec.kafka.tls.secretRef`, the kubernetes.io/tls layout plus the
 * CA) and the file settings of the services that name them once the Secret is mounted.
 */
export const KAFKA_TLS_FILES = [
  { key: "ca.crt", setting: "tlsCaFile" },
  { key: "tls.crt", setting: "tlsCertFile" },
  { key: "tls.key", setting: "tlsKeyFile" },
] as const;

/** The KAFKA_TLS_FILES keys the cluster's Kafka TLS Secret has, as kafkaTarget read them. */
export function kafkaTlsKeys(target: KafkaTarget): string[] {
  const ssl = target.ssl;
  if (typeof ssl !== "object" || ssl === null) return [];
  const present = {
    "ca.crt": ssl.ca !== undefined,
    "tls.crt": ssl.cert !== undefined,
    "tls.key": ssl.key !== undefined,
  };
  return KAFKA_TLS_FILES.filter((f) => present[f.key]).map((f) => f.key);
}

/** A Secret's keys, decoded; `field` (the spec field that names it) is in the error when it is missing. */
async function secretData(
  kube: KubeClient,
  namespace: string,
  name: string,
  field: string,
): Promise<Record<string, string>> {
  const secret = await kube.find<V1Secret>({ apiVersion: "v1", kind: "Secret", namespace, name });
  if (!secret) throw new Error(`Secret ${namespace}/${name} (${field}) not found`);
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(secret.data ?? {})) out[k] = Buffer.from(v, "base64").toString("utf8");
  return out;
}

function required(data: Record<string, string>, key: string, secret: string, field: string): string {
  const v = data[key];
  if (v === undefined) throw new Error(`Secret ${secret} (${field}) has no key ${JSON.stringify(key)}`);
  return v;
}

export async function kafkaTarget(kube: KubeClient, cluster: ChatCluster): Promise<KafkaTarget> {
  const k = cluster.spec.kafka;
  const ns = cluster.metadata.namespace ?? "default";
  const target: KafkaTarget = { brokers: k.bootstrapServers, topicPrefix: k.topicPrefix };
  if (k.tls?.enabled) {
    if (k.tls.secretRef) {
      const d = await secretData(kube, ns, k.tls.secretRef.name, "spec.kafka.tls.secretRef");
      const [ca, cert, key] = KAFKA_TLS_FILES.map((f) => d[f.key]);
      target.ssl = {
        ...(ca ? { ca: [ca] } : {}),
        ...(cert ? { cert } : {}),
        ...(key ? { key } : {}),
      };
    } else target.ssl = true;
  }
  if (k.sasl) {
    const field = "spec.kafka.sasl.secretRef";
    const d = await secretData(kube, ns, k.sasl.secretRef.name, field);
    const username = required(d, "username", k.sasl.secretRef.name, field);
    const password = required(d, "password", k.sasl.secretRef.name, field);
    target.sasl =
      k.sasl.mechanism === "plain"
        ? { mechanism: "plain", username, password }
        : k.sasl.mechanism === "scram-sha-256"
          ? { mechanism: "scram-sha-256", username, password }
          : { mechanism: "scram-sha-512", username, password };
  }
  return target;
}

export async function cassandraTarget(kube: KubeClient, cluster: ChatCluster): Promise<CassandraTarget> {
  const c = cluster.spec.cassandra;
  const replication: CassandraTarget["replication"] =
    c.replication.class === "SimpleStrategy"
      ? { class: "SimpleStrategy", replication_factor: c.replication.factor }
      : { class: "NetworkTopologyStrategy", datacenters: { [c.datacenter]: c.replication.factor } };
  const target: CassandraTarget = {
    contactPoints: c.contactPoints,
    localDataCenter: c.datacenter,
    keyspace: c.keyspace,
    replication,
  };
  if (c.tls?.enabled) {
    const ref = c.tls.secretRef;
    if (ref) {
      const field = "spec.cassandra.tls.secretRef";
      const d = await secretData(kube, cluster.metadata.namespace ?? "default", ref.name, field);
      target.ssl = cassandraTls([required(d, CASSANDRA_TLS_CA_KEY, ref.name, field)]);
    } else target.ssl = cassandraTls();
  }
  if (c.credentialsSecretRef) {
    const ns = cluster.metadata.namespace ?? "default";
    const field = "spec.cassandra.credentialsSecretRef";
    const d = await secretData(kube, ns, c.credentialsSecretRef.name, field);
    target.credentials = {
      username: required(d, "username", c.credentialsSecretRef.name, field),
      password: required(d, "password", c.credentialsSecretRef.name, field),
    };
  }
  return target;
}
