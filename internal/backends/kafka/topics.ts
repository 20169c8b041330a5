/**
 * Topic names and their idempotent creation. `messages` carries drafts (the durable intake, keyed by
 * conversation), `sequenced` the messages with their seq (published only with kafka.publishSequenced, for consumers
 * outside the platform), `routing` the
 * session up/down table (compacted: the latest record per session is the table), `replies-by-process`
 * the sequencer's answers to senders in other processes, in the partition each sender's process reads
 * (short-lived: only a waiting sender reads them; `replies`, answered by conversation key, is what
 * processes of the version before use, followed still during a rolling update),
 * `inbox` the messages per recipient partition, whose owners assign the users' inbox cursors.
 */

import kafkajs, { type Admin, type ITopicConfig } from "kafkajs";
import { errors } from "../../lib/errors.js";

export interface TopicSettings {
  prefix: string;
  partitions: number;
  replicationFactor: number;
  retentionHours: number;
}

export interface TopicNames {
  messages: string;
  sequenced: string;
  routing: string;
  replies: string;
  repliesByProcess: string;
  inbox: string;
  pushJobs: string;
}

export function topicNames(prefix: string): TopicNames {
  return {
    messages: `${prefix}messages`,
    sequenced: `${prefix}sequenced`,
    routing: `${prefix}routing`,
    replies: `${prefix}replies`,
    repliesByProcess: `${prefix}replies-by-process`,
    inbox: `${prefix}inbox`,
    pushJobs: `${prefix}push-jobs`,
  };
}

export function desiredTopics(s: TopicSettings): ITopicConfig[] {
  const names = topicNames(s.prefix);
  const retention = String(s.retentionHours * 3_600_000);
  // With replication, an ack must survive one broker loss: acks=all needs two in-sync replicas.
  const minIsr = String(Math.min(2, s.replicationFactor));
  const common = { numPartitions: s.partitions, replicationFactor: s.replicationFactor };
  return [
    {
      topic: names.messages,
      ...common,
      configEntries: [
        { name: "retention.ms", value: retention },
        { name: "min.insync.replicas", value: minIsr },
        { name: "unclean.leader.election.enable", value: "false" },
      ],
    },
    {
      topic: names.sequenced,
      ...common,
      configEntries: [
        { name: "retention.ms", value: retention },
        { name: "min.insync.replicas", value: minIsr },
        { name: "unclean.leader.election.enable", value: "false" },
      ],
    },
    {
      // The per-user fan-out (ADR 0002): one record per (message, inbox partition) for the recipients
      // placed there (shardOf(user)); the owner of a partition assigns its users' inbox cursors.
      topic: names.inbox,
      ...common,
      configEntries: [
        { name: "retention.ms", value: retention },
        { name: "min.insync.replicas", value: minIsr },
        { name: "unclean.leader.election.enable", value: "false" },
      ],
    },
    // Replies by key (the version before) and in the partition the sender's process reads
    // (reply-partition.ts). A reply matters only while its sender waits (kafka.appendTimeoutMs): an
    // hour is plenty.
    ...[names.replies, names.repliesByProcess].map((topic) => ({
      topic,
      ...common,
      configEntries: [
        { name: "retention.ms", value: String(3_600_000) },
        { name: "min.insync.replicas", value: minIsr },
      ],
    })),
    {
      // Pending push jobs (push-queue.ts): the latest record per job id, a tombstone once it ended.
      // Compacted soon after (a few seconds of dirt), so an owner re-reads little on assignment.
      topic: names.pushJobs,
      ...common,
      configEntries: [
        { name: "cleanup.policy", value: "compact" },
        { name: "min.cleanable.dirty.ratio", value: "0.1" },
        { name: "segment.ms", value: String(3_600_000) },
        { name: "delete.retention.ms", value: String(3_600_000) },
        { name: "min.insync.replicas", value: minIsr },
      ],
    },
    {
      // One partition: "gateway gone" must be ordered after the sessions it removes, and compaction
      // needs the session id as the key, so partitioning by gateway is not available. Session churn
      // is far below what one partition carries.
      topic: names.routing,
      numPartitions: 1,
      replicationFactor: s.replicationFactor,
      configEntries: [
        { name: "cleanup.policy", value: "compact" },
        { name: "min.insync.replicas", value: minIsr },
      ],
    },
  ];
}

/** Partitions per topic of a prefix's topics that exist, as the leader wait last saw them. */
export type TopicLayout = ReadonlyMap<string, number>;

/** Creates missing topics; existing ones are left as they are (idempotent). */
export async function ensureTopics(admin: Admin, s: TopicSettings): Promise<TopicLayout> {
  const existing = new Set(await admin.listTopics());
  const missing = desiredTopics(s).filter((t) => !existing.has(t.topic));
  if (missing.length > 0) {
    try {
      await admin.createTopics({ topics: missing, waitForLeaders: false });
    } catch (err) {
      // Another process may have created them meanwhile, or the controller is still settling:
      // either way the leader wait below decides.
      const e = err as { type?: string; retriable?: boolean; errors?: Array<{ type?: string }> };
      const exists =
        e.type === "TOPIC_ALREADY_EXISTS" ||
        (e.errors?.length && e.errors.every((x) => x.type === "TOPIC_ALREADY_EXISTS"));
      if (!exists && e.retriable !== true) throw err;
    }
  }
  return waitForLeaders(
    admin,
    desiredTopics(s).map((t) => t.topic),
  );
}

/**
 * Checks, without creating anything, that the topics exist and have leaders: processes that do not
 * provision (split roles; the operator provisions) fail with a message that says what to do.
 */
export async function verifyTopics(admin: Admin, prefix: string): Promise<TopicLayout> {
  // replies-by-process is optional: a cluster provisioned by the version before lacks it until the
  // operator provisions again, and its processes then answer and wait on `replies` (log.ts).
  const { repliesByProcess: optional, ...required } = topicNames(prefix);
  const wanted = Object.values(required);
  const existing = new Set(await admin.listTopics());
  const missing = wanted.filter((t) => !existing.has(t));
  if (missing.length > 0)
    throw errors.precondition(
      "NOT_PROVISIONED",
      `Kafka topics ${missing.join(", ")} do not exist: provision them first (the operator does; or run \`switchboard provision\`)`,
    );
  return waitForLeaders(admin, existing.has(optional) ? [...wanted, optional] : wanted);
}

/**
 * A just-created topic may still answer "does not host this topic-partition" for a while after
 * createTopics returned: wait until every partition has a leader the metadata agrees on.
 */
async function waitForLeaders(admin: Admin, topics: string[], timeoutMs = 60_000): Promise<TopicLayout> {
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 1; ; attempt++) {
    try {
      const { topics: meta } = await admin.fetchTopicMetadata({ topics });
      if (
        meta.length === topics.length &&
        meta.every((t) => t.partitions.length > 0 && t.partitions.every((p) => p.leader >= 0))
      ) {
        return new Map(meta.map((t) => [t.name, t.partitions.length]));
      }
    } catch (err) {
      if ((err as { retriable?: boolean }).retriable !== true || Date.now() > deadline) throw err;
    }
    if (Date.now() > deadline)
      throw new Error(`topics ${topics.join(", ")} have no leaders after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, Math.min(100 * attempt, 1_000)));
  }
}

/**
 * Refuses a layout whose keyed topics do not have the configured partition count. A conversation's
 * drafts partition and a user's inbox partition follow from the count (the key's hash modulo it), and
 * each partition's owner fences and numbers what is in it (ADR 0002): with the count changed,
 * records of one conversation or user would land in two partitions with two owners, each assigning
 * seqs or cursors of its own. The count is fixed when the topics are created.
 */
export function checkPartitionCounts(layout: TopicLayout, prefix: string, partitions: number): void {
  const names = topicNames(prefix);
  for (const topic of [names.messages, names.inbox]) {
    const actual = layout.get(topic);
    if (actual !== undefined && actual !== partitions)
      throw errors.precondition(
        "PARTITIONS_CHANGED",
        `Kafka topic ${topic} has ${actual} partitions but kafka.partitions is ${partitions}: the partition count of the message topics is fixed once they exist (changing it would give one conversation or user two owners); set kafka.partitions to ${actual}, or provision a new topic prefix (a ChatCluster's spec.kafka.topics.partitions cannot change once set: recreate it with ${actual}, or give it a new spec.kafka.topicPrefix)`,
      );
  }
}

// A CommonJS export Node's ESM loader does not find by name (kafkajs assigns its exports late).
const { ConfigResourceTypes } = kafkajs;

/** The broker's default `max.message.bytes` (1 MiB plus a record batch's overhead). */
const BROKER_RECORD_BYTES_DEFAULT = 1_048_588;
/**
 * What the sequencer adds when it emits a draft to the inbox topic (the recipients placed in a
 * partition, its ids and epoch) at most: a draft must leave that room under the inbox topic's limit.
 */
export const EMIT_HEADROOM_BYTES = 128 * 1024;

/**
 * The largest draft record the message log takes: the smallest `max.message.bytes` of the drafts and
 * inbox topics, less the emission's headroom. A draft over it would be refused by Kafka at every
 * attempt (the drafts topic), or stop its partition's sequencer at every attempt (the inbox topic), so
 * the log refuses it at once (log.ts). Where the topics' configuration cannot be read (a principal
 * without DescribeConfigs), the broker's default is assumed.
 */
export async function draftBytesMax(
  admin: Admin,
  names: TopicNames,
  warn: (msg: string, err: unknown) => void,
): Promise<number> {
  const topics = [names.messages, names.inbox];
  try {
    const { resources } = await admin.describeConfigs({
      includeSynonyms: false,
      resources: topics.map((name) => ({
        type: ConfigResourceTypes.TOPIC,
        name,
        configNames: ["max.message.bytes"],
      })),
    });
    const limits = resources.map((r) =>
      Number(r.configEntries.find((e) => e.configName === "max.message.bytes")?.configValue),
    );
    if (limits.length !== topics.length || !limits.every((l) => Number.isSafeInteger(l) && l > 0))
      throw new Error(`unexpected answer: ${JSON.stringify(limits)}`);
    return Math.min(...limits) - EMIT_HEADROOM_BYTES;
  } catch (err) {
    warn(
      `the message topics' max.message.bytes could not be read: assuming the broker's default, ${BROKER_RECORD_BYTES_DEFAULT}`,
      err,
    );
    return BROKER_RECORD_BYTES_DEFAULT - EMIT_HEADROOM_BYTES;
  }
}
