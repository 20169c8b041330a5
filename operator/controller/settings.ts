/**
 * `spec.settings`: the services' settings a ChatCluster has no field for (`gateway.connectionsMax`,
 * `auth.allowedOrigins`, `tracing.sampleRatio`, …), by their dotted names, each a string as its
 * environment variable would hold it. They go into the cluster's ConfigMap beside what the operator
 * sets, checked first with the services' own configuration loader, so that a Pod never starts on a
 * value it refuses. A setting the operator sets itself, from a field of the spec or from how it runs
 * the Pods (ports, identities, mounted files, the other roles' addresses), is not the spec's to set.
 */
import { envName, loadConfig, settingNames } from "../../internal/lib/config.js";
import type { ChatCluster } from "../api/v1alpha1.js";

/** At most this many settings (the CRD says the same). */
export const SETTINGS_MAX = 64;

/**
 * Settings the operator sets, or leaves unset on purpose, whatever the spec's settings say: those a
 * spec field stands for (set or not), those of how it runs the Pods, and the secrets' files. A
 * trailing `.` names every setting under it.
 */
const OWNED = [
  "backend",
  "dataDir",
  "http.host",
  "http.port",
  "http.internalPort",
  // The Pods' termination grace periods are the operator's, made to fit its own stop timing.
  "shutdownTimeoutMs",
  "grpc.",
  "cluster.",
  "auth.jwksUrl",
  "auth.issuers",
  "auth.issuer",
  "auth.audience",
  "auth.clockSkewSeconds",
  "auth.devTokens",
  "auth.secretFile",
  "gateway.id",
  "gateway.advertiseAddress",
  "gateway.shutdownDrainMs",
  "id.workerId",
  "presence.heartbeatIntervalMs",
  "presence.offlineAfterMs",
  "push.webhookUrl",
  "push.webhookSecretFile",
  "push.apns.",
  "push.fcm.",
  "push.webpush.",
  "kafka.brokers",
  "kafka.topicPrefix",
  "kafka.partitions",
  "kafka.replicationFactor",
  "kafka.retentionHours",
  "kafka.tls",
  "kafka.tlsCaFile",
  "kafka.tlsCertFile",
  "kafka.tlsKeyFile",
  "kafka.publishSequenced",
  "kafka.memberFile",
  "kafka.saslMechanism",
  "kafka.saslUsername",
  "kafka.saslPassword",
  "cassandra.contactPoints",
  "cassandra.datacenter",
  "cassandra.keyspace",
  "cassandra.consistency",
  "cassandra.username",
  "cassandra.password",
  "cassandra.tls",
  "cassandra.tlsCaFile",
  "metrics.enabled",
  "log.level",
  "tracing.enabled",
];

export function ownedByOperator(setting: string): boolean {
  return OWNED.some((o) => (o.endsWith(".") ? setting.startsWith(o) : setting === o));
}

export interface ClusterSettings {
  /** SWITCHBOARD_* values of the settings taken. */
  env: Record<string, string>;
  /** Each setting not taken, and why. */
  refused: string[];
}

/** The setting each SWITCHBOARD_* variable stands for. */
const SETTING_OF_ENV = new Map(settingNames().map((name) => [envName(name.split(".")), name]));

/**
 * The spec's settings in `data` (a ConfigMap's): the variables of settings the operator leaves to
 * the spec.
 */
function specSettingsIn(data: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(data)) {
    const setting = SETTING_OF_ENV.get(name);
    if (setting !== undefined && !ownedByOperator(setting)) out[name] = value;
  }
  return out;
}

/**
 * The spec's settings that the ConfigMap takes, on top of `operatorEnv` (what the operator sets): each
 * must name a setting the operator leaves to the spec and hold a value the services accept, alone
 * and all together. If any is refused, the change is refused whole: the ConfigMap keeps the settings
 * it holds now (`current`, its data; none without one), so that a mistake in one setting never drops
 * the others the cluster runs with (an `auth.allowedOrigins` among them, whose default admits every
 * origin).
 */
export function clusterSettings(
  cluster: ChatCluster,
  operatorEnv: Record<string, string>,
  current?: Readonly<Record<string, string>>,
): ClusterSettings {
  const kept = () => specSettingsIn(current ?? {});
  const entries = Object.entries(cluster.spec.settings ?? {}).sort(([a], [b]) => (a < b ? -1 : 1));
  const refused: string[] = [];
  if (entries.length > SETTINGS_MAX) return { env: kept(), refused: [`more than ${SETTINGS_MAX} settings`] };
  const taken: Record<string, string> = {};
  for (const [setting, value] of entries) {
    if (ownedByOperator(setting)) {
      refused.push(`${setting}: set by the operator (from the spec's own fields or how it runs the Pods)`);
      continue;
    }
    try {
      loadConfig(operatorEnv, { [setting]: value });
    } catch (err) {
      refused.push(`${setting}: ${(err as Error).message}`);
      continue;
    }
    taken[envName(setting.split("."))] = value;
  }
  try {
    // Valid alone, and together (checkConfig: settings that contradict each other).
    loadConfig({ ...operatorEnv, ...taken });
  } catch (err) {
    refused.push(`together: ${(err as Error).message}`);
  }
  return refused.length === 0 ? { env: taken, refused } : { env: kept(), refused };
}
