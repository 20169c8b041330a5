/**
 * The distributed message log. `append` produces the draft to the drafts topic (keyed by
 * conversation, acks=all) and resolves when the sequencer reports its seq back (ADR 0002): the ack
 * then means "durable in Kafka and in Cassandra, with its seq". The sequencer that owns the draft's
 * partition may run in this process (it resolves the sender directly) or in another one (it answers
 * on the replies topic, which `listenForReplies` follows). `consume` reads the sequenced topic as a
 * consumer group and commits a batch only after its handler resolved.
 */
import { randomInt, randomUUID } from "node:crypto";
import type { Admin, Consumer, Kafka } from "kafkajs";
import { errors, invariantViolated, SwitchboardError } from "../../lib/errors.js";
import { inTime } from "../../lib/in-time.js";
import type { Logger } from "../../lib/log.js";
import { activeCarrier, tracing } from "../../lib/tracing.js";
import type {
  AppendHints,
  AppendResult,
  BatchHandler,
  Closeable,
  ConsumeOptions,
  DeliveryHandler,
  LoggedMessage,
  MessageDraft,
  MessageLog,
  MessageStore,
  SequencerStore,
  StoredMessage,
} from "../types.js";
import { AwaitedAnswers, resendKey } from "./awaited-answers.js";
import { type BatchProducer, RecordWithdrawn, Withdrawal } from "./batch-producer.js";
import { decodeMessage, encodeMessage, traceOf } from "./codec.js";
import { commitBatch, FETCH_WAIT_MS, groupConsumer } from "./consumers.js";
import { INBOX_GROUP, InboxOwner, type InboxOwnerOptions } from "./inbox-owner.js";
import { onePartitionAssigner, REPLY_PARTITION_HEADER } from "./reply-partition.js";
import type { SequencedProgress } from "./sequenced-progress.js";
import {
  dedupeKeyOf,
  FIRST_ATTEMPT_HEADER,
  MEMBERSHIP_KIND,
  type PendingAppends,
  RECIPIENTS_HEADER,
  RECORD_KIND_HEADER,
  REPLY_DRAFT_HEADER,
  REPLY_DUPLICATE_HEADER,
} from "./sequencer.js";

export interface KafkaLogOptions {
  /** The per-user fan-out (deliveries()): the inbox topic and what its owners need. */
  inbox?: Omit<InboxOwnerOptions, "kafka" | "handler" | "log" | "groupId">;
  kafka: Kafka;
  producer: BatchProducer;
  draftsTopic: string;
  /** The sequenced topic, when the sequencers publish it (kafka.publishSequenced): what consume() reads. */
  sequencedTopic: string | undefined;
  repliesTopic: string;
  /**
   * The replies-by-process topic and its partition count, if provisioned (a cluster provisioned by
   * the version before has only `repliesTopic` until the operator provisions again).
   */
  repliesByProcess?: { topic: string; partitions: number };
  /** Consumer group ids are `${groupPrefix}${group}`. */
  groupPrefix: string;
  pending: PendingAppends;
  appendTimeoutMs: number;
  /** The largest draft record the log takes, in bytes (topics.ts, draftBytesMax); larger is refused. */
  draftBytesMax: number;
  /** Where `appended` finds what the sequencers stored: their dedupe rows and the message rows. */
  sequenced: {
    store: Pick<SequencerStore, "heads" | "lookup">;
    messages: Pick<MessageStore, "getMany">;
    /** How far the sequencers took the drafts partitions (`sequencedUpToNow`). */
    progress: Pick<SequencedProgress, "caughtUp">;
  };
  log: Logger;
}

class DraftTooLarge extends Error {
  constructor(
    readonly bytes: number,
    readonly max: number,
  ) {
    super(`draft of ${bytes} bytes over ${max}`);
  }
}

/** Partitions whose batches a consumer handles at the same time. */
const PARTITIONS_CONSUMED_CONCURRENTLY = 4;

/** How often a consumer's batch in progress heartbeats (the group's session timeout is 10 s). */
const HEARTBEAT_WHILE_HANDLING_MS = 1_000;

export class KafkaMessageLog implements MessageLog {
  private readonly consumers = new Set<Consumer>();
  private readonly owners = new Set<InboxOwner>();
  private readonly replyGroups: Array<{ admin: Admin; groupId: string }> = [];
  /**
   * The header naming the replies-by-process partition this process reads, once its consumer joined
   * (reply-partition.ts); the same object on every draft.
   */
  private replyHeaders: Record<string, string> | undefined;

  /** The answers this process's drafts wait for, by dedupe key, late ones too (`appended`). */
  private readonly awaited = new AwaitedAnswers();

  constructor(private readonly o: KafkaLogOptions) {}

  async append(draft: MessageDraft, hints?: AppendHints): Promise<AppendResult> {
    // A draft still waiting in the producer's queue when the deadline passes is withdrawn: it never
    // reached the log, so its sender hears LOG_UNAVAILABLE (a send to resend in its place, which
    // keeps the order of the sends behind it: gateway/send-gaps.ts), not SEQUENCE_TIMEOUT; and a
    // stalled Kafka gets no burst of stale drafts once it is back. One already in a request is not.
    const deadline = new Withdrawal();
    let timer: NodeJS.Timeout | undefined;
    // Set once Kafka took the draft: past the deadline it will still be sequenced in its place, and a
    // resend through this process waits for that answer (awaited-answers.ts).
    let inLog = false;
    // The closures below name the id alone, not the draft: a late answer's must not keep the body.
    const draftId = draft.messageId;
    const awaited = this.awaited.expect(
      resendKey(draft.conversationId, draft.sender, draft.clientMsgId),
      () => this.o.pending.delete(draftId),
    );
    // Register before producing: the sequencer may answer before the produce call returns.
    const sequenced = new Promise<AppendResult>((resolve, reject) => {
      timer = setTimeout(() => {
        if (!inLog || !awaited.late()) {
          this.o.pending.delete(draftId);
          awaited.failed();
        }
        deadline.withdraw();
        reject(
          errors.unavailable(
            "SEQUENCE_TIMEOUT",
            `message not sequenced within ${this.o.appendTimeoutMs} ms; retry with the same client_msg_id`,
          ),
        );
      }, this.o.appendTimeoutMs);
      this.o.pending.set(draftId, (result) => {
        clearTimeout(timer);
        awaited.settle(result);
        resolve(result);
      });
    });
    // The deadline may pass while kafkajs still retries the produce (broker away): the rejection is
    // then delivered by the race below or, if the produce failed first, deliberately dropped.
    sequenced.catch(() => undefined);
    try {
      const trace = tracing.on ? activeCarrier() : undefined;
      const first = hints?.firstAttemptResendsAfterMs;
      const headers =
        trace || first !== undefined
          ? {
              ...trace,
              ...this.replyHeaders,
              ...(first === undefined ? {} : { [FIRST_ATTEMPT_HEADER]: String(first) }),
            }
          : this.replyHeaders;
      const value = encodeMessage(draft);
      // Kafka would refuse it at every attempt (a retryable LOG_UNAVAILABLE that never succeeds,
      // holding back the conversation's later sends), or its emission would stop its sequencer.
      if (value.length > this.o.draftBytesMax) throw new DraftTooLarge(value.length, this.o.draftBytesMax);
      // Ordered: a draft whose request failed fails the drafts of its conversation behind it, which
      // its sender resends after it (gateway/send-gaps.ts).
      const produced = this.o.producer.send(
        this.o.draftsTopic,
        { key: draft.conversationId, value, ...(headers ? { headers } : {}) },
        { ordered: true, withdrawal: deadline },
      );
      // Not past the deadline, either: a draft already in a request to a broker that stopped
      // answering waits for kafkajs's retries (minutes), while its sender must hear within
      // appendTimeoutMs. Its outcome is then unknown (LOG_UNAVAILABLE: a resend with the same
      // client_msg_id is answered as a duplicate if it was stored after all). The race listens to
      // the produce: its failure after the deadline is handled, and dropped.
      const taken = produced.then(() => {
        inLog = true;
      });
      await Promise.race([taken, sequenced.then(() => undefined)]);
    } catch (err) {
      // Refused at the producer's bound (ProducerQueueFull), withdrawn at the deadline, or failed;
      // its timer goes too (it holds the draft, body and all, for appendTimeoutMs).
      clearTimeout(timer);
      this.o.pending.delete(draftId);
      awaited.failed();
      if (err instanceof DraftTooLarge)
        throw errors.invalid(
          "BODY_TOO_LARGE",
          `the message is ${err.bytes} bytes encoded, more than the message log takes (${err.max}): send a shorter body`,
        );
      throw errors.unavailable(
        "LOG_UNAVAILABLE",
        err instanceof SwitchboardError && err.reason === "SEQUENCE_TIMEOUT"
          ? `the message log did not acknowledge the message within ${this.o.appendTimeoutMs} ms (it may still take it); resend with the same client_msg_id`
          : !(err instanceof RecordWithdrawn)
            ? "the message log did not acknowledge the message; retry"
            : err.behind
              ? "an earlier message to this conversation did not reach the message log, so neither did this one; retry"
              : `the message log did not take the message within ${this.o.appendTimeoutMs} ms; retry`,
        err,
      );
    }
    return sequenced;
  }

  /**
   * The sequencer store's dedupe row of the key (written, with the head, before the send was
   * acknowledged; it expires with the dedupe window), then its message row. A row counts only as
   * the sequencer itself counts it: at or below the head, holding the message the row names (not a
   * fenced-out owner's leftover). A draft not sequenced yet is not found (see `awaiting`).
   */
  async appended(
    conversationId: string,
    sender: string,
    clientMsgId: string,
  ): Promise<StoredMessage | undefined> {
    const { store, messages } = this.o.sequenced;
    const key = dedupeKeyOf({ sender, clientMsgId });
    const [found, heads] = await Promise.all([
      store.lookup(new Map([[conversationId, [key]]])),
      store.heads([conversationId]),
    ]);
    const ref = found.get(conversationId)?.get(key);
    if (!ref || ref.seq > (heads.get(conversationId) ?? 0)) return undefined;
    const [row] = await messages.getMany([{ conversationId, seq: ref.seq }]);
    return row?.messageId === ref.messageId ? row : undefined;
  }

  /**
   * Resolves once every draft of this conversation appended before the call, through any process,
   * has been sequenced (stored or refused: `appended` then finds it if stored), or rejects with
   * SEQUENCE_TIMEOUT (retryable) if that takes over appendTimeoutMs (sequenced-progress.ts).
   */
  async sequencedUpToNow(conversationId: string): Promise<void> {
    if (await this.o.sequenced.progress.caughtUp(conversationId, this.o.appendTimeoutMs)) return;
    throw errors.unavailable(
      "SEQUENCE_TIMEOUT",
      `an earlier transmission of this message may still be in the log, not sequenced within ${this.o.appendTimeoutMs} ms; retry with the same client_msg_id`,
    );
  }

  /**
   * The answer a draft with this key that this process appended still waits for (in the log, not
   * sequenced; perhaps past its sender's deadline: awaited-answers.ts), up to appendTimeoutMs from
   * now, then SEQUENCE_TIMEOUT (retryable: a later resend finds it); undefined if there is none.
   */
  awaiting(conversationId: string, sender: string, clientMsgId: string): Promise<AppendResult> | undefined {
    const waiting = this.awaited.get(resendKey(conversationId, sender, clientMsgId));
    if (!waiting) return undefined;
    return inTime(waiting, this.o.appendTimeoutMs, () =>
      errors.unavailable(
        "SEQUENCE_TIMEOUT",
        `an earlier transmission of this message is in the log and was not sequenced within ${this.o.appendTimeoutMs} ms; retry with the same client_msg_id`,
      ),
    );
  }

  /**
   * Announces that a conversation's members changed: a record in the drafts topic, keyed by the
   * conversation, so the sequencer that owns it reads the change in order with the messages and
   * addresses every later message to the new member list. Resolves when Kafka has it (acks=all).
   */
  async announceMembershipChange(conversationId: string): Promise<void> {
    // Its caller waits appendTimeoutMs at most, like an append's: a stalled Kafka must not hold the
    // change's caller (a first send to a new direct conversation, and every send of its connection
    // behind it) for as long as kafkajs retries. The record itself is not withdrawn: sent late, it
    // still binds the change at its place in the partition, where an announcement never sent
    // would leave the stored change unannounced (the sequencer's member lists wrong for minutes,
    // seq-audience.ts) unless the caller retried; and a second announcement changes nothing.
    const produced = this.o.producer.send(this.o.draftsTopic, {
      key: conversationId,
      value: Buffer.alloc(0),
      headers: { [RECORD_KIND_HEADER]: MEMBERSHIP_KIND },
      // After the change was stored: the sequencer bounds the changes stored up to this time (ADR 0012).
      timestamp: String(Date.now()),
    });
    try {
      await inTime(
        produced,
        this.o.appendTimeoutMs,
        () => new Error(`not acknowledged within ${this.o.appendTimeoutMs} ms`),
      );
    } catch (err) {
      throw errors.unavailable(
        "LOG_UNAVAILABLE",
        `the message log did not take the membership change of ${conversationId}; retry`,
        err,
      );
    }
  }

  /**
   * Follows the replies from their end with consumer groups of this process's own, resolving the
   * senders waiting here: one partition of replies-by-process, picked at random and named in this
   * process's drafts from then on (a sequencer answers there), and `replies`, where sequencers of the
   * version before answer by conversation key (during a rolling update; idle long polls after it).
   * Resolves once the consumers have joined; a reply that still slipped past (produced while they
   * started) costs its sender a timeout and a resend, which the dedupe answers.
   */
  async listenForReplies(admin: Admin): Promise<void> {
    const own = this.o.repliesByProcess;
    const partition = own ? randomInt(own.partitions) : undefined;
    await Promise.all([
      this.followReplies(admin, this.o.repliesTopic),
      own && this.followReplies(admin, own.topic, partition),
    ]);
    if (partition !== undefined) this.replyHeaders = { [REPLY_PARTITION_HEADER]: String(partition) };
  }

  /** One replies consumer of this process's own: every partition of `topic`, or only `partition`. */
  private async followReplies(admin: Admin, topic: string, partition?: number): Promise<void> {
    const groupId = `${this.o.groupPrefix}replies-${randomUUID()}`;
    const consumer = groupConsumer(
      this.o.kafka,
      groupId,
      FETCH_WAIT_MS.ownGroup,
      partition === undefined ? undefined : [onePartitionAssigner(topic, partition)],
    );
    this.consumers.add(consumer);
    this.replyGroups.push({ admin, groupId });
    const joined = new Promise<void>((resolve) => consumer.on(consumer.events.GROUP_JOIN, () => resolve()));
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: false });
    await consumer.run({
      // Nothing to resume from: a restarted process has no senders waiting. No committed offsets
      // also means a crashed process leaves no group behind once its session times out.
      autoCommit: false,
      eachMessage: async ({ message }) => {
        const draftId = message.headers?.[REPLY_DRAFT_HEADER]?.toString();
        const done = draftId === undefined ? undefined : this.o.pending.get(draftId);
        if (!done || !message.value || draftId === undefined) return;
        this.o.pending.delete(draftId);
        done({
          message: decodeMessage(message.value),
          duplicate: message.headers?.[REPLY_DUPLICATE_HEADER]?.toString() === "1",
        });
      },
    });
    await joined;
  }

  /**
   * The router's input (ADR 0002): this process joins the inbox group, owns some inbox partitions and
   * assigns their users' cursors; `handler` gets the messages with their recipients' cursors.
   */
  async deliveries(handler: DeliveryHandler): Promise<Closeable> {
    const inbox = this.o.inbox;
    if (!inbox) throw invariantViolated("deliveries() without an inbox topic");
    const owner = new InboxOwner({
      ...inbox,
      kafka: this.o.kafka,
      groupId: `${this.o.groupPrefix}${INBOX_GROUP}`,
      handler,
      log: this.o.log,
    });
    await owner.start();
    this.owners.add(owner);
    return {
      close: async () => {
        this.owners.delete(owner);
        await owner.close();
      },
    };
  }

  /** Whether each inbox owner of this process writes rows and heads in one round trip (InboxOwner). */
  *inboxOwnersInOneRoundTrip(): Iterable<{ group: string; oneRoundTrip: boolean }> {
    for (const owner of this.owners) yield { group: owner.groupId, oneRoundTrip: owner.writesInOneRoundTrip };
  }

  /** The lag of this process's inbox owners (deliveries()), per owned partition. */
  *consumerLag(): Iterable<{ group: string; partition: number; records: number }> {
    for (const owner of this.owners) yield* owner.lag.entries();
  }

  async consume(group: string, handler: BatchHandler, options: ConsumeOptions = {}): Promise<Closeable> {
    const topic = this.o.sequencedTopic;
    if (topic === undefined)
      throw errors.precondition(
        "SEQUENCED_NOT_PUBLISHED",
        "the sequenced log is not published (set kafka.publishSequenced): nothing would ever arrive",
      );
    const consumer = groupConsumer(this.o.kafka, `${this.o.groupPrefix}${group}`, FETCH_WAIT_MS.sharedGroup);
    this.consumers.add(consumer);
    let closing = false;
    try {
      await consumer.connect();
      if (options.startAt === "latest") await this.pinNewGroupToEnd(`${this.o.groupPrefix}${group}`, topic);
      await consumer.subscribe({ topic, fromBeginning: true });
    } catch (err) {
      // Not started: leave nothing connected behind (every failed StreamEvents would keep one).
      this.consumers.delete(consumer);
      await consumer.disconnect().catch(() => undefined);
      throw err;
    }
    await consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      // Batches of different partitions are handled concurrently; one partition's batches (and so
      // one conversation's messages) still run one after another, in order.
      partitionsConsumedConcurrently: PARTITIONS_CONSUMED_CONCURRENTLY,
      eachBatch: async (payload) => {
        const { batch } = payload;
        if (batch.messages.length === 0) return;
        const messages = batch.messages.map((m): LoggedMessage => {
          const message: LoggedMessage = decodeMessage(m.value!);
          const recipients = m.headers?.[RECIPIENTS_HEADER];
          if (recipients !== undefined) {
            const text = recipients.toString();
            message.recipients = text === "" ? [] : text.split("\n");
          }
          const trace = traceOf(m.headers);
          if (trace) message.trace = trace;
          return message;
        });
        // kafkajs heartbeats only between batches: a handler slower than the session timeout (an
        // event stream's consumer has a minute to acknowledge) would be evicted, and its batch
        // handed out again under new cursors. A failed heartbeat (a rebalance) is left to the commit.
        const beat = setInterval(
          () => void payload.heartbeat().catch(() => undefined),
          HEARTBEAT_WHILE_HANDLING_MS,
        );
        try {
          await handler(messages);
        } catch (err) {
          // A consumer being closed fails its batch in flight on purpose: nothing is committed, and
          // the next member of the group starts where the last commit was (no error, no retry).
          if (closing) return;
          // At-least-once: on failure kafkajs re-fetches from the last committed offset.
          throw err;
        } finally {
          clearInterval(beat);
        }
        await commitBatch(payload);
      },
    });
    return {
      close: async () => {
        // Set before the first await: the handler's rejection that lets disconnect finish sees it.
        closing = true;
        this.consumers.delete(consumer);
        await consumer.disconnect();
      },
    };
  }

  /**
   * Commits the topic's end offsets for a group that has none, before it joins: a new "latest" group
   * then has a position at once (Kafka's own auto.offset.reset=latest would leave it without one
   * until its first commit, so a consumer reopened meanwhile would start at a later end and skip).
   */
  private async pinNewGroupToEnd(groupId: string, topic: string): Promise<void> {
    const admin = this.o.kafka.admin();
    await admin.connect();
    try {
      const [committed] = await admin.fetchOffsets({ groupId, topics: [topic] });
      if (committed?.partitions.some((p) => p.offset !== "-1")) return;
      const ends = await admin.fetchTopicOffsets(topic);
      await admin.setOffsets({
        groupId,
        topic,
        partitions: ends.map(({ partition, offset }) => ({ partition, offset })),
      });
    } finally {
      await admin.disconnect();
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.owners].map((o) => o.close()));
    this.owners.clear();
    await Promise.all([...this.consumers].map((c) => c.disconnect()));
    this.consumers.clear();
    // The replies groups are this process's alone: leave nothing behind on the broker.
    for (const { admin, groupId } of this.replyGroups.splice(0))
      await admin.deleteGroups([groupId]).catch(() => undefined);
    for (const [id, done] of this.o.pending) {
      this.o.pending.delete(id);
      void done;
    }
  }
}
