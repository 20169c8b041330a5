/**
 * The distributed backend: Kafka for the message log, the sequencer and routing events; Cassandra
 * for everything stored. See ADR 0002 for how seq is assigned and fenced, and why membership changes
 * are announced in the message log.
 */
import { createHash } from "node:crypto";
import { Kafka, type KafkaConfig, logLevel, Partitioners } from "kafkajs";
import { invariantViolated } from "../../lib/errors.js";
import { kafkajsLogCreator } from "../../lib/kafkajs-log.js";
import { fixKafkajsProduceEncoding } from "../../lib/kafkajs-produce-encoding.js";
import { fixKafkajsRequestQueue } from "../../lib/kafkajs-request-queue.js";
import type { Logger } from "../../lib/log.js";
import {
  type CassandraOptions,
  type IdHighWaterStore,
  openCassandraStores,
  type RequestCounts,
  type RequestTimer,
} from "../cassandra/index.js";
import { BatchProducer } from "../kafka/batch-producer.js";
import { KafkaMessageLog } from "../kafka/log.js";
import { GroupMembers } from "../kafka/member-resume.js";
import { KafkaPushQueue } from "../kafka/push-queue.js";
import { FIRST_ATTEMPT_MARGIN_MS } from "../kafka/recent-sends.js";
import { KafkaRouting } from "../kafka/routing.js";
import { SequencedProgress } from "../kafka/sequenced-progress.js";
import { type PendingAppends, SEQUENCER_GROUP, Sequencer } from "../kafka/sequencer.js";
import {
  checkPartitionCounts,
  ensureTopics,
  topicNames,
  draftBytesMax as topicsDraftBytesMax,
  verifyTopics,
} from "../kafka/topics.js";
import type { Backends, Closeable } from "../types.js";
import { AnnouncingMembershipStore } from "./membership.js";

const DEDUPE_WINDOW_SECONDS_DEFAULT = 168 * 3600;
/** The consumer group of the push processes (push-queue.ts). */
const PUSH_GROUP = "push";
/** How often a refused resend's wait asks how far the sequencers are (sequenced-progress.ts). */
const SEQUENCED_PROGRESS_POLL_MS = 250;

export interface DistributedOptions {
  brokers: string[];
  clientId: string;
  topicPrefix: string;
  partitions: number;
  replicationFactor: number;
  retentionHours: number;
  appendTimeoutMs: number;
  /**
   * The longest body a gateway takes (gateway.bodyCharsMax): warned about at start when, at 4 bytes a
   * character, it would not fit the message topics' record limit (such a body is BODY_TOO_LARGE).
   */
  bodyCharsMax?: number;
  /** Prefix of every consumer group id (tests isolate runs with it). */
  groupPrefix?: string;
  cassandra: CassandraOptions;
  log: Logger;
  /** Run a sequencer in this process (default true). */
  sequencer?: boolean;
  /**
   * This process appends messages (default true): it follows the replies topic so that sends
   * sequenced by a sequencer in another process are acknowledged here.
   */
  appends?: boolean;
  /** Dedupe rows expire after this long: a resend after it is a new message. Default 168 h. */
  dedupeWindowSeconds?: number;
  /** The clock skew a sequencer allows for when it trusts a first attempt (kafka/recent-sends.ts). */
  firstAttemptMarginMs?: number;
  /** Also publish every sequenced message to the sequenced topic (kafka.publishSequenced). */
  publishSequenced?: boolean;
  /**
   * File that keeps this process's consumer-group member ids, so that a restart after a crash rejoins
   * its groups at once instead of waiting out the dead member's session (member-resume.ts). Unset: off.
   */
  memberFile?: string;
  /** Create missing topics and apply schema migrations (default true); off: only verify them. */
  provision?: boolean;
  /**
   * This process issues ids as this worker (role all): its high-water mark is read at open and kept
   * in Cassandra (`idHighWater`), so that a restart never issues an id again.
   */
  idWorker?: number;
  ssl?: KafkaConfig["ssl"];
  sasl?: KafkaConfig["sasl"];
}

export interface DistributedBackends extends Backends {
  readonly name: "distributed";
  readonly kafka: Kafka;
  /**
   * Why Cassandra is unreachable right now (for /readyz), or undefined. Kafka is left out: every
   * process would be unready at once in a Kafka outage (a shared dependency), though each still
   * serves what does not need the message log — a client connects, syncs and reads (docs/protocol.md
   * §1), routers relay typing and receipts, presence and push answer — and kafkajs gives no signal
   * of a lost broker short of a failed request anyway. A Kafka outage shows in the send errors
   * (LOG_UNAVAILABLE) and in the consumer lag.
   */
  unreachable(): string | undefined;
  /** The id worker's high-water mark (options.idWorker), for createIdService. */
  readonly idHighWater?: IdHighWaterStore;
  /** Requests this process sent to Cassandra and Kafka so far (live counters, for metrics). */
  readonly requests: {
    cassandra: RequestCounts;
    timeCassandra(timer: RequestTimer): void;
    kafka: {
      produceRequests: () => number;
      producedRecords: () => number;
      consumerLag(): Iterable<{ group: string; partition: number; records: number }>;
      dedupeChecks(): { store: number; memory: number; trusted: number };
      inboxOwnersInOneRoundTrip(): Iterable<{ group: string; oneRoundTrip: boolean }>;
    };
  };
}

export async function openDistributedBackends(o: DistributedOptions): Promise<DistributedBackends> {
  const log = o.log.child({ backend: "distributed" });
  // Where a (re)start's time goes, logged once open: an SRE's first question after a slow restart.
  const started = performance.now();
  const timings: Record<string, number> = {};
  const mark = (step: string) => {
    timings[`${step}Ms`] = Math.round(performance.now() - started);
  };
  const stores = await openCassandraStores({ ...o.cassandra, provision: o.provision !== false });
  // Read before any consumer group is joined: a failure here leaves no group to rebalance.
  let idHighWater: IdHighWaterStore | undefined;
  try {
    idHighWater = o.idWorker === undefined ? undefined : await stores.idHighWater(o.idWorker);
  } catch (err) {
    await stores.close().catch(() => undefined);
    throw err;
  }
  mark("cassandra");
  fixKafkajsRequestQueue();
  fixKafkajsProduceEncoding();
  const kafka = new Kafka({
    clientId: o.clientId,
    brokers: o.brokers,
    ...(o.ssl === undefined ? {} : { ssl: o.ssl }),
    ...(o.sasl === undefined ? {} : { sasl: o.sasl }),
    logLevel: logLevel.WARN,
    logCreator: kafkajsLogCreator(log),
    retry: { retries: 8, initialRetryTime: 200, maxRetryTime: 5_000 },
  });
  const admin = kafka.admin();
  // Idempotent, so a retried produce is written once; one request in flight keeps a producer's
  // records in order; a producer that failed a request is replaced (batch-producer.ts). The
  // partitioner is kafkajs's default (Java-compatible murmur2), named so that kafkajs does not warn
  // about its v1 default at every start.
  const newProducer = () =>
    kafka.producer({
      idempotent: true,
      maxInFlightRequests: 1,
      allowAutoTopicCreation: false,
      createPartitioner: Partitioners.DefaultPartitioner,
    });
  // Closed first and all at once: what holds consumers (stopping one waits for its fetch in flight,
  // up to FETCH_WAIT_MS, so one after another they would add up). Then the rest, newest first.
  const consuming: Closeable[] = [];
  const closers: Array<() => Promise<void>> = [() => stores.close()];
  const closeAll = async (onError: (err: unknown) => void) => {
    await Promise.all(consuming.splice(0).map((c) => c.close().catch(onError)));
    for (const close of closers) await close().catch(onError);
  };
  try {
    await admin.connect();
    closers.unshift(() => admin.disconnect());
    const layout =
      o.provision === false
        ? await verifyTopics(admin, o.topicPrefix)
        : await ensureTopics(admin, {
            prefix: o.topicPrefix,
            partitions: o.partitions,
            replicationFactor: o.replicationFactor,
            retentionHours: o.retentionHours,
          });
    checkPartitionCounts(layout, o.topicPrefix, o.partitions);
    const batchProducer = new BatchProducer(newProducer, { log });
    await batchProducer.connect();
    mark("kafka");
    closers.unshift(() => batchProducer.close());
    const names = topicNames(o.topicPrefix);
    const draftBytesMax = await topicsDraftBytesMax(admin, names, (msg, err) => log.warn(msg, { err }));
    // A draft is the body and ~200 bytes of ids; 4 bytes a character at worst (UTF-8).
    if (o.bodyCharsMax !== undefined && o.bodyCharsMax * 4 + 1024 > draftBytesMax)
      log.warn(
        "gateway.bodyCharsMax is more than the message topics take at 4 bytes a character: longer bodies of such characters are refused (BODY_TOO_LARGE); lower it, or raise the topics' max.message.bytes",
        { bodyCharsMax: o.bodyCharsMax, draftBytesMax },
      );
    const groupPrefix = o.groupPrefix ?? o.topicPrefix;
    const pending: PendingAppends = new Map();
    const dedupeWindowSeconds = o.dedupeWindowSeconds ?? DEDUPE_WINDOW_SECONDS_DEFAULT;
    const inboxPartitions = layout.get(names.inbox);
    if (inboxPartitions === undefined) throw invariantViolated(`no layout of topic ${names.inbox}`);
    // Provisioned by this version (a cluster of the version before lacks it until provisioned again).
    const repliesByProcessPartitions = layout.get(names.repliesByProcess);
    const repliesByProcess =
      repliesByProcessPartitions === undefined
        ? undefined
        : { topic: names.repliesByProcess, partitions: repliesByProcessPartitions };
    const groupMembers = o.memberFile === undefined ? undefined : GroupMembers.open(o.memberFile, log);
    // Refused resends wait on it (ADR 0001); closed before the admin it polls with.
    const progress = new SequencedProgress({
      admin,
      draftsTopic: names.messages,
      groupId: `${groupPrefix}${SEQUENCER_GROUP}`,
      pollMs: SEQUENCED_PROGRESS_POLL_MS,
      log,
    });
    closers.unshift(() => progress.close());
    const messageLog = new KafkaMessageLog({
      inbox: {
        inboxTopic: names.inbox,
        store: stores.inbox,
        ownership: stores.ownership,
        indexTtlSeconds: dedupeWindowSeconds,
        ...(groupMembers ? { groupMembers } : {}),
      },
      kafka,
      producer: batchProducer,
      draftsTopic: names.messages,
      sequencedTopic: o.publishSequenced ? names.sequenced : undefined,
      repliesTopic: names.replies,
      ...(repliesByProcess ? { repliesByProcess } : {}),
      groupPrefix,
      pending,
      appendTimeoutMs: o.appendTimeoutMs,
      draftBytesMax,
      sequenced: {
        store: stores.sequencer,
        messages: stores.messages,
        progress,
      },
      log,
    });
    consuming.push(messageLog);
    if (o.appends !== false) await messageLog.listenForReplies(admin);
    mark("replies");
    let sequencer: Sequencer | undefined;
    let sequencerProducer: BatchProducer | undefined;
    if (o.sequencer !== false) {
      // The sequencer's records (inbox, replies, sequenced) go out through a producer of their own:
      // with one request in flight per producer, sharing the gateways' would queue every batch's
      // emission behind the drafts' produce and the drafts behind the emissions. Its queue holds only
      // the emissions of the batches being handled, so the sequencer's fetch bounds it (kafkajs's
      // maxBytes times the fan-out); a refusal would only make it read the same batch again.
      const own = new BatchProducer(newProducer, {
        log,
        queueRecordsMax: Number.POSITIVE_INFINITY,
        queueBytesMax: Number.POSITIVE_INFINITY,
      });
      await own.connect();
      closers.unshift(() => own.close());
      sequencerProducer = own;
      sequencer = new Sequencer({
        kafka,
        groupId: `${groupPrefix}${SEQUENCER_GROUP}`,
        draftsTopic: names.messages,
        ...(o.publishSequenced ? { sequencedTopic: names.sequenced } : {}),
        repliesTopic: names.replies,
        repliesByProcessTopic: names.repliesByProcess,
        producer: sequencerProducer,
        store: stores.sequencer,
        ownership: stores.ownership,
        messages: stores.messages,
        membership: stores.membership,
        dedupeWindowSeconds,
        firstAttemptMarginMs: o.firstAttemptMarginMs ?? FIRST_ATTEMPT_MARGIN_MS,
        inbox: { topic: names.inbox, partitions: inboxPartitions },
        ...(groupMembers ? { groupMembers } : {}),
        pending,
        log,
      });
      await sequencer.start();
      mark("sequencer");
      consuming.push(sequencer);
    }
    const routing = new KafkaRouting(kafka, admin, batchProducer, names.routing, groupPrefix, log);
    consuming.push(routing);
    const pushQueue = new KafkaPushQueue({
      kafka,
      admin,
      groupId: `${groupPrefix}${PUSH_GROUP}`,
      topic: names.pushJobs,
      deadLetters: stores.pushDeadLetters,
      partitions: o.partitions,
      producer: batchProducer,
      ...(groupMembers ? { groupMembers } : {}),
      log,
    });
    consuming.push(pushQueue);
    log.info("distributed backend open (ms since the start of the open, per step)", timings);
    let closing: Promise<void> | undefined;
    return {
      name: "distributed",
      // Every process of a platform names the same; a restore into a fresh topic prefix (README,
      // "Back up") names another.
      dataSet: createHash("sha256")
        .update(`${o.cassandra.keyspace}\u0000${o.topicPrefix}`)
        .digest("base64url")
        .slice(0, 22),
      kafka,
      log: messageLog,
      messages: stores.messages,
      membership: new AnnouncingMembershipStore(stores.membership, (id) =>
        messageLog.announceMembershipChange(id),
      ),
      inbox: stores.inbox,
      receipts: stores.receipts,
      routing,
      presence: stores.presence,
      devices: stores.devices,
      settings: stores.settings,
      pushQueue,
      pushDeadLetters: stores.pushDeadLetters,
      ...(idHighWater ? { idHighWater } : {}),
      requests: {
        cassandra: stores.requests,
        timeCassandra: (timer) => stores.timeRequests(timer),
        kafka: {
          produceRequests: () => batchProducer.stats.requests + (sequencerProducer?.stats.requests ?? 0),
          producedRecords: () => batchProducer.stats.records + (sequencerProducer?.stats.records ?? 0),
          *consumerLag() {
            if (sequencer) yield* sequencer.lag.entries();
            yield* messageLog.consumerLag();
          },
          dedupeChecks: () => ({ ...(sequencer?.dedupeChecks ?? { store: 0, memory: 0, trusted: 0 }) }),
          inboxOwnersInOneRoundTrip: () => messageLog.inboxOwnersInOneRoundTrip(),
        },
      },
      unreachable: () =>
        stores.client.getState().getConnectedHosts().length === 0
          ? `Cassandra: no connected node among ${o.cassandra.contactPoints.join(",")}`
          : undefined,
      close: () => (closing ??= closeAll((err: unknown) => log.warn("close failed", { err }))),
    };
  } catch (err) {
    await closeAll(() => undefined);
    throw err;
  }
}
