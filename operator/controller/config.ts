/**
 * The ConfigMap every Switchboard container reads as its environment. The variable names come from
 * the services' one typed configuration tree (internal/lib/config.ts, envName), so a renamed setting
 * breaks the operator's build instead of silently dropping a value.
 */
import { createHash } from "node:crypto";
import type { V1ConfigMap } from "@kubernetes/client-node";
import { envName } from "../../internal/lib/config.js";
import { POLICY_FILE_NAME } from "../../internal/lib/grpc-policy-file.js";
import type { ChatCluster } from "../api/v1alpha1.js";
import { GRPC_POLICY_DIR } from "./grpc-identity.js";
import {
  configMapName,
  GRPC_PORT,
  grpcTarget,
  HTTP_PORT,
  INTERNAL_PORT,
  ownedMeta,
  presenceShardTargets,
  tokenAudience,
} from "./names.js";
import { clusterSettings } from "./settings.js";
import { gatewayShutdownDrainMs } from "./workloads.js";

/**
 * SWITCHBOARD_* values for a cluster. Secrets stay out: credentials reach the containers as env
 * references to their Secrets and files mounted from them (workloads.ts).
 */
export function clusterEnv(
  cluster: ChatCluster,
  current?: Readonly<Record<string, string>>,
): Record<string, string> {
  const env = operatorEnv(cluster);
  // The spec's settings for what it has no field for, if the services accept them all; else those
  // the ConfigMap holds now (`current`, its data) stay, and refusedSettings says why.
  return { ...env, ...clusterSettings(cluster, env, current).env };
}

/** Why the spec's settings were not taken (the Degraded condition and an Event); empty when they were. */
export function refusedSettings(cluster: ChatCluster): string[] {
  return clusterSettings(cluster, operatorEnv(cluster)).refused;
}

/** What the operator sets itself, from the spec's fields and how it runs the Pods. */
function operatorEnv(cluster: ChatCluster): Record<string, string> {
  const s = cluster.spec;
  const env: Record<string, string> = {};
  const set = (path: string, value: string | number | boolean | undefined) => {
    if (value !== undefined && value !== "") env[envName(path.split("."))] = String(value);
  };
  set("backend", "distributed");
  set("http.host", "0.0.0.0");
  set("http.port", HTTP_PORT);
  // /metrics on a port of its own, which the clients' Service (a load balancer) does not expose.
  set("http.internalPort", INTERNAL_PORT);
  set("grpc.port", GRPC_PORT);
  // Where each role finds the others: headless Services, so every Pod's address is resolved.
  set("cluster.idTarget", grpcTarget(cluster, "id"));
  set("cluster.routerTarget", grpcTarget(cluster, "router"));
  set("cluster.pushTarget", grpcTarget(cluster, "push"));
  // One target per presence shard, in shard order. The list is part of every Pod's configuration, so
  // changing presence replicas changes the config hash and rolls every Pod: gateways must agree on
  // the shard count (a user's shard is hash(user) mod count), and their clients reconnect and
  // resubscribe to the new shards. That is intended.
  set("cluster.presenceTargets", presenceShardTargets(cluster).join(","));
  set("auth.jwksUrl", s.auth.jwksUrl);
  if (s.auth.issuers?.length)
    set("auth.issuers", s.auth.issuers.map((i) => `${i.issuer}=${i.jwksUrl}`).join(","));
  set("auth.issuer", s.auth.issuer);
  set("auth.audience", s.auth.audience);
  set("auth.clockSkewSeconds", s.auth.clockSkewSeconds);
  set("auth.devTokens", false);
  // gRPC callers are the cluster's ServiceAccounts, verified by TokenReview, and mapped to principals
  // by the policy file (grpc-identity.ts); the calling components send their projected token.
  set("grpc.tokenAudience", tokenAudience(cluster));
  set("grpc.policyFile", `${GRPC_POLICY_DIR}/${POLICY_FILE_NAME}`);
  // A gateway Pod being replaced (rolling update, node drain) moves its clients before it stops,
  // spread like a scale-down drain; its terminationGracePeriodSeconds leaves room for it.
  set("gateway.shutdownDrainMs", gatewayShutdownDrainMs(cluster));
  set("presence.heartbeatIntervalMs", s.presence.heartbeatIntervalSeconds * 1000);
  set("presence.offlineAfterMs", s.presence.offlineAfterSeconds * 1000);
  set("push.webhookUrl", s.push.webhook?.url);
  // The providers' public settings; their keys are files from the Secrets (push-credentials.ts).
  if (s.push.apns) {
    set("push.apns.keyId", s.push.apns.keyId);
    set("push.apns.teamId", s.push.apns.teamId);
    set("push.apns.topic", s.push.apns.topic);
    set("push.apns.environment", s.push.apns.environment);
  }
  if (s.push.webpush) {
    set("push.webpush.vapidPublicKey", s.push.webpush.vapidPublicKey);
    set("push.webpush.subject", s.push.webpush.subject);
  }
  set("kafka.brokers", s.kafka.bootstrapServers.join(","));
  set("kafka.topicPrefix", s.kafka.topicPrefix);
  set("kafka.partitions", s.kafka.topics.partitions);
  set("kafka.replicationFactor", s.kafka.topics.replicationFactor);
  set("kafka.retentionHours", s.kafka.topics.retentionHours);
  set("kafka.tls", s.kafka.tls?.enabled ?? false);
  // The server API's event stream reads the sequenced log, which costs a produce per sequenced batch:
  // published only while a client may stream (granting `events` rolls the Pods once).
  set(
    "kafka.publishSequenced",
    (s.api?.clients ?? []).some((c) => c.permissions.includes("events")),
  );
  // /tmp is an emptyDir: it outlives a crashed container, so the restarted one rejoins its consumer
  // groups as the member it was instead of waiting out the dead member's session.
  set("kafka.memberFile", "/tmp/kafka-members.json");
  // The mechanism only: the user name and password come from the SASL Secret (workloads.ts).
  set("kafka.saslMechanism", s.kafka.sasl?.mechanism ?? "none");
  set("cassandra.contactPoints", s.cassandra.contactPoints.join(","));
  set("cassandra.datacenter", s.cassandra.datacenter);
  set("cassandra.keyspace", s.cassandra.keyspace);
  set("cassandra.consistency", s.cassandra.consistency);
  // The CA file, when the spec names a Secret, is mounted into the Pods (workloads.ts). Set only when
  // on: a key added to every ConfigMap would roll every cluster's Pods at the operator's upgrade.
  if (s.cassandra.tls?.enabled) set("cassandra.tls", true);
  set("metrics.enabled", s.observability.metrics.enabled);
  set("log.level", s.observability.logLevel ?? "info");
  if (s.observability.otlp) {
    env.OTEL_EXPORTER_OTLP_ENDPOINT = s.observability.otlp.endpoint;
    set("tracing.enabled", true);
  }
  return env;
}

/** `current`: the data of the ConfigMap as it is, whose settings stay if the spec's are refused. */
export function desiredConfigMap(
  cluster: ChatCluster,
  current?: Readonly<Record<string, string>>,
): V1ConfigMap {
  return {
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: ownedMeta(cluster, configMapName(cluster)),
    data: clusterEnv(cluster, current),
  };
}

/** A short hash of the data, put on pod templates so that a configuration change rolls the Pods. */
export function configHash(data: Record<string, string>): string {
  const canonical = JSON.stringify(Object.entries(data).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  return createHash("sha256").update(canonical).digest("hex").slice(0, 16);
}
