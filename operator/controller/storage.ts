/**
 * A ChatCluster's storage settings resolved for the operator's own clients: Kafka (for provisioning
 * and gateway-gone records) and Cassandra (for provisioning), with credentials read from the
 * Secrets the spec names. Secrets are read with `get` only (the chart grants nothing more).
 */
import type { V1Secret } from "@kubernetes/client-node";
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
}

async function secretData(
  kube: KubeClient,
  namespace: string,
  name: string,
): Promise<Record<string, string>> {
  const secret = await kube.get<V1Secret>({ apiVersion: "v1", kind: "Secret", namespace, name });
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(secret.data ?? {})) out[k] = Buffer.from(v, "base64").toString("utf8");
  return out;
}

function required(data: Record<string, string>, key: string, secret: string): string {
  const v = data[key];
  if (v === undefined) throw new Error(`Secret ${secret} has no key ${JSON.stringify(key)}`);
  return v;
}

export async function kafkaTarget(kube: KubeClient, cluster: ChatCluster): Promise<KafkaTarget> {
  const k = cluster.spec.kafka;
  const ns = cluster.metadata.namespace ?? "default";
  const target: KafkaTarget = { brokers: k.bootstrapServers, topicPrefix: k.topicPrefix };
  if (k.tls?.enabled) {
    if (k.tls.secretRef) {
      const d = await secretData(kube, ns, k.tls.secretRef.name);
      target.ssl = {
        ...(d["ca.crt"] ? { ca: [d["ca.crt"]] } : {}),
        ...(d["tls.crt"] ? { cert: d["tls.crt"] } : {}),
        ...(d["tls.key"] ? { key: d["tls.key"] } : {}),
      };
    } else target.ssl = true;
  }
  if (k.sasl) {
    const d = await secretData(kube, ns, k.sasl.secretRef.name);
    const username = required(d, "username", k.sasl.secretRef.name);
    const password = required(d, "password", k.sasl.secretRef.name);
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
  if (c.credentialsSecretRef) {
    const ns = cluster.metadata.namespace ?? "default";
    const d = await secretData(kube, ns, c.credentialsSecretRef.name);
    target.credentials = {
      username: required(d, "username", c.credentialsSecretRef.name),
      password: required(d, "password", c.credentialsSecretRef.name),
    };
  }
  return target;
}
