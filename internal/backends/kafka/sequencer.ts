/**
 * The sequencer (ADR 0002): the member of the `sequencer` consumer group that owns a partition of
 * the draft topic assigns the seq of that partition's conversations, in partition order.
 *
 * Per polled batch and conversation it does one fenced write (SequencerStore.assign: head CAS plus
 * dedupe rows, atomic), then stores the rows, then emits the sequenced records, then resolves the
 * local senders, and only then commits the batch's offsets. A crash anywhere before the commit
 * makes the next owner reprocess the drafts: their dedupe rows give them the same seq back, so every
 * step is idempotent. A paused owner that wakes after a rebalance fails its CAS (its head is stale)
 * and finds the messages it had not yet sequenced already taken by its successor.
 */
import type { Consumer, EachBatchPayload, Kafka } from "kafkajs";
import { errors } from "../../lib/errors.js";
import type { Logger } from "../../lib/log.js";
import type {
  AppendResult,
  Closeable,
  MessageStore,
  SequencedRef,
  SequencerStore,
  StoredMessage,
} from "../types.js";
import type { BatchProducer } from "./batch-producer.js";
import { decodeMessage, encodeMessage } from "./codec.js";

export const SEQUENCER_GROUP = "sequencer";
/** Headers of a reply record: the draft it answers, and whether that draft was a duplicate. */
export const REPLY_DRAFT_HEADER = "draft";
export const REPLY_DUPLICATE_HEADER = "duplicate";
const ASSIGN_ATTEMPTS_MAX = 3;

export const dedupeKeyOf = (m: { sender: string; clientMsgId: string }) =>
  `${m.sender}\u0000${m.clientMsgId}`;

/** Local senders waiting for their draft to be sequenced, by message id. */
export type PendingAppends = Map<string, (result: AppendResult) => void>;

export interface SequencerOptions {
  kafka: Kafka;
  groupId: string;
  draftsTopic: string;
  sequencedTopic: string;
  /** Where answers go for senders that wait in another process (the draft's id is not in `pending`). */
  repliesTopic: string;
  producer: BatchProducer;
  store: SequencerStore;
  messages: MessageStore;
  pending: PendingAppends;
  log: Logger;
  /** Test hook: called after the fenced write of a conversation, before its records are emitted. */
  afterAssign?: (conversationId: string, seqs: number[]) => Promise<void>;
}

export class Sequencer implements Closeable {
  private consumer: Consumer | undefined;
  private readonly heads = new Map<string, number>();

  constructor(private readonly o: SequencerOptions) {}

  async start(): Promise<void> {
    const consumer = this.o.kafka.consumer({
      groupId: this.o.groupId,
      sessionTimeout: 10_000,
      heartbeatInterval: 1_000,
      maxWaitTimeInMs: 20,
      allowAutoTopicCreation: false,
    });
    this.consumer = consumer;
    // A new assignment may follow another owner's writes: forget every cached head.
    consumer.on(consumer.events.GROUP_JOIN, () => this.heads.clear());
    await consumer.connect();
    await consumer.subscribe({ topic: this.o.draftsTopic, fromBeginning: true });
    await consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: 4,
      eachBatch: (payload) => this.onBatch(payload),
    });
  }

  private async onBatch({
    batch,
    resolveOffset,
    heartbeat,
    commitOffsetsIfNecessary,
    isStale,
  }: EachBatchPayload): Promise<void> {
    if (batch.messages.length === 0) return;
    const drafts = batch.messages.map((m) => decodeMessage(m.value!));
    const byConversation = new Map<string, StoredMessage[]>();
    for (const d of drafts) {
      let list = byConversation.get(d.conversationId);
      if (!list) {
        list = [];
        byConversation.set(d.conversationId, list);
      }
      list.push(d);
    }
    await Promise.all(
      [...byConversation].map(([conversationId, list]) => this.sequenceConversation(conversationId, list)),
    );
    if (isStale()) return; // the partition moved on during the batch; the new owner redoes it
    resolveOffset(batch.messages.at(-1)!.offset);
    await commitOffsetsIfNecessary({
      topics: [
        {
          topic: batch.topic,
          partitions: [
            { partition: batch.partition, offset: String(Number(batch.messages.at(-1)!.offset) + 1) },
          ],
        },
      ],
    });
    await heartbeat();
  }

  private async sequenceConversation(conversationId: string, drafts: StoredMessage[]): Promise<void> {
    const { store } = this.o;
    let refs = new Map<string, SequencedRef>();
    let assignedNow: StoredMessage[] = [];
    for (let attempt = 1; ; attempt++) {
      const head = this.heads.get(conversationId) ?? (await store.head(conversationId));
      refs = await store.lookup(conversationId, [...new Set(drafts.map(dedupeKeyOf))]);
      assignedNow = [];
      let next = head;
      for (const d of drafts) {
        const key = dedupeKeyOf(d);
        if (refs.has(key)) continue;
        const seq = ++next;
        refs.set(key, { seq, messageId: d.messageId });
        assignedNow.push({ ...d, seq });
      }
      if (assignedNow.length === 0) break;
      const applied = await store.assign(
        conversationId,
        head,
        assignedNow.map((m) => ({ dedupeKey: dedupeKeyOf(m), seq: m.seq, messageId: m.messageId })),
      );
      if (applied) {
        this.heads.set(conversationId, next);
        break;
      }
      this.heads.delete(conversationId); // fenced or stale: re-read and try again
      if (attempt >= ASSIGN_ATTEMPTS_MAX) {
        throw errors.unavailable(
          "SEQUENCER_CONFLICT",
          `could not sequence ${conversationId} after ${attempt} attempts (another owner?)`,
        );
      }
    }
    await this.o.afterAssign?.(
      conversationId,
      assignedNow.map((m) => m.seq),
    );
    // The originals of this batch (first sender of each key), with their seq.
    const originals: StoredMessage[] = [];
    for (const d of drafts) {
      const ref = refs.get(dedupeKeyOf(d))!;
      if (ref.messageId === d.messageId) originals.push({ ...d, seq: ref.seq });
    }
    await this.o.messages.write(originals);
    await Promise.all(
      originals.map((m) =>
        this.o.producer.send(this.o.sequencedTopic, {
          key: m.conversationId,
          value: encodeMessage(m),
          headers: { seq: String(m.seq) },
        }),
      ),
    );
    await this.resolveSenders(conversationId, drafts, refs);
  }

  /**
   * Answers every draft's sender: a sender waiting in this process directly, one in another process
   * (or one that gave up) through the replies topic, where its process's log finds it by draft id.
   */
  private async resolveSenders(
    conversationId: string,
    drafts: StoredMessage[],
    refs: Map<string, SequencedRef>,
  ): Promise<void> {
    const dupRefs = drafts
      .filter((d) => refs.get(dedupeKeyOf(d))!.messageId !== d.messageId)
      .map((d) => refs.get(dedupeKeyOf(d))!);
    const stored =
      dupRefs.length > 0
        ? await this.o.messages.getMany(dupRefs.map((r) => ({ conversationId, seq: r.seq })))
        : [];
    const remote: Array<{ draftId: string; result: AppendResult }> = [];
    for (const d of drafts) {
      const ref = refs.get(dedupeKeyOf(d))!;
      const result: AppendResult =
        ref.messageId === d.messageId
          ? { message: { ...d, seq: ref.seq }, duplicate: false }
          : {
              message: stored.find((m) => m.seq === ref.seq) ?? {
                ...d,
                seq: ref.seq,
                messageId: ref.messageId,
              },
              duplicate: true,
            };
      const done = this.o.pending.get(d.messageId);
      if (done) {
        this.o.pending.delete(d.messageId);
        done(result);
      } else remote.push({ draftId: d.messageId, result });
    }
    await Promise.all(
      remote.map(({ draftId, result }) =>
        this.o.producer.send(this.o.repliesTopic, {
          key: conversationId,
          value: encodeMessage(result.message),
          headers: { [REPLY_DRAFT_HEADER]: draftId, [REPLY_DUPLICATE_HEADER]: result.duplicate ? "1" : "0" },
        }),
      ),
    );
  }

  async close(): Promise<void> {
    await this.consumer?.disconnect();
  }
}
