/**
 * Topic names and their idempotent creation. `messages` carries drafts (the durable intake, keyed by
 * conversation), `sequenced` the messages with their seq (what the router consumes), `routing` the
 * session up/down table (compacted: the latest record per session is the table).
 */
import type { Admin, ITopicConfig } from "kafkajs";

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
}

export function topicNames(prefix: string): TopicNames {
  return { messages: `${prefix}messages`, sequenced: `${prefix}sequenced`, routing: `${prefix}routing` };
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

/** Creates missing topics; existing ones are left as they are (idempotent). */
export async function ensureTopics(admin: Admin, s: TopicSettings): Promise<void> {
  const existing = new Set(await admin.listTopics());
  const missing = desiredTopics(s).filter((t) => !existing.has(t.topic));
  if (missing.length === 0) return;
  await admin.createTopics({ topics: missing, waitForLeaders: true });
}
