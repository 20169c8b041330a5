/**
 * The sequencer (ADR 0002): the member of the `sequencer` consumer group that owns a partition of the
 * drafts topic assigns the seq of that partition's conversations, in partition order.
 *
 * Fence per ownership, not per message. When it gets a partition (each group generation), the owner
 * claims the partition's epoch with one conditional write (OwnershipStore.claim). From then on it
 * assigns seqs from memory and writes plain rows whose write timestamp is its epoch, so a paused former
 * owner's late writes always lose to its successor's. Per polled batch:
 *
 *   1. the heads of conversations not cached yet (one read for many), the dedupe rows of the batch's
 *      keys that this owner neither remembers nor may trust to be new (recent-sends.ts; one read for
 *      several conversations), and the stored rows of the refs found (rare: resends and re-processing
 *      after a crash); then new seqs from memory;
 *   2. member lists from the cache (membership announcements in the same partition keep it true),
 *      with the seq bounds of their changes (ADR 0012): each announcement met gives the changes it
 *      announces the head at its place, so each message goes to the members as of its seq, also when
 *      it is handled again after a crash;
 *   3. the heads and dedupe rows (one unlogged batch), then the message rows;
 *   4. the check: the partition's epoch is still ours (one plain read). If a successor claimed in the
 *      meantime, nothing of this batch is acknowledged, emitted or committed;
 *   5. the inbox records (one per inbox partition of the recipients; a pull conversation's message,
 *      ADR 0010, one record without recipients in the partition of its conversation, and each
 *      membership announcement a record there too, in order with them), the answers to the senders,
 *      the offsets.
 *
 * Every step is idempotent: a crash anywhere before the commit makes the next owner re-process the
 * drafts; it finds their dedupe rows (or, if they did not land, assigns the same seqs, because it
 * processes the same drafts in the same order from the same head) and re-emits them.
 */
import type { Consumer, EachBatchPayload, Kafka, KafkaMessage } from "kafkajs";
import { dropOldest } from "../../lib/drop-oldest.js";
import type { Logger } from "../../lib/log.js";
import { shardOf } from "../../lib/shard.js";
import type { MessageSpans, TraceCarrier } from "../../lib/tracing.js";
import type {
  AppendResult,
  Closeable,
  MembershipAsOfSeqs,
  MembershipSeqStore,
  MembershipStore,
  MessageStore,
  OwnershipStore,
  SequencedRef,
  SequencerRecord,
  SequencerStore,
  StoredMessage,
} from "../types.js";
import { sequenced } from "../types.js";
import type { BatchProducer } from "./batch-producer.js";
import { decodeMessage, encodeMessage } from "./codec.js";
import {
  batchArrived,
  ConsumerLag,
  commitBatch,
  FETCH_WAIT_MS,
  groupConsumer,
  handleBatch,
  PARTITIONS_CONSUMED_CONCURRENTLY,
  PeriodicCommits,
} from "./consumers.js";
import {
  DRAFTS_STREAM,
  INBOX_KIND_HEADER,
  INBOX_RECIPIENTS_HEADER,
  MEMBERSHIP_RECORD,
  PULL_RECORD,
  REDELIVERY_HEADER,
  SEQUENCER_EPOCH_HEADER,
  sequencerEpochHeader,
} from "./inbox-owner.js";
import { type Audience, MemberCache } from "./member-cache.js";
import type { GroupMembers } from "./member-resume.js";
import { OwnedPartitions } from "./owned-partitions.js";
import { RecentSends } from "./recent-sends.js";
import { replyPartitionOf } from "./reply-partition.js";
import { DEPARTURES_LOOKBACK_MS, SeqAudience } from "./seq-audience.js";

export const SEQUENCER_GROUP = "sequencer";

/**
 * What a sequencer emits keeps its order within each partition even when a produce request fails
 * (batch-producer.ts): the records queued behind the failed ones fail too, and the batch is re-read.
 */
const ORDERED = { ordered: true } as const;
/** Headers of a reply record: the draft it answers, and whether that draft was a duplicate. */
export const REPLY_DRAFT_HEADER = "draft";
export const REPLY_DUPLICATE_HEADER = "duplicate";
/** Header of a drafts record that is not a draft: `membership` announces a membership change. */
export const RECORD_KIND_HEADER = "kind";
export const MEMBERSHIP_KIND = "membership";
/**
 * Header of a draft its client called a first attempt (client protocol `Send.first_attempt`): no
 * resend of it was received before this time, in Unix ms (AppendHints.firstAttemptResendsAfterMs).
 */
export const FIRST_ATTEMPT_HEADER = "first-attempt-resends-after";
/** Header of a sequenced record: the conversation's members at the message's position, "\n"-joined. */
export const RECIPIENTS_HEADER = "recipients";
export { DRAFTS_STREAM };

/** Conversations whose head / member list one partition's owner keeps in memory at most. */
const HEADS_PER_PARTITION_MAX = 50_000;
const MEMBER_LISTS_PER_PARTITION_MAX = 20_000;
/** A cached member list is read again after this long (a backstop; announcements keep it true). */
const MEMBER_LIST_TTL_MS = 5 * 60_000;
const MEMBER_READS_CONCURRENT = 32;
/**
 * Dedupe keys one partition's owner remembers at most (recent-sends.ts). A first attempt is trusted
 * only if its bound (receipt less two of its gateway's ping intervals) is 10 s past an evicted key's
 * stamp: with the default 25 s pings, past about 500 messages a second per partition, first attempts
 * are looked up again.
 */
const RECENT_SENDS_PER_PARTITION_MAX = 30_000;

export const dedupeKeyOf = (m: { sender: string; clientMsgId: string }) =>
  `${m.sender}\u0000${m.clientMsgId}`;

/**
 * A record's time (its producer's clock); now if it has none. An announcement's: when it was made,
 * after the change was stored.
 */
const recordTime = (m: Pick<KafkaMessage, "timestamp">): number => {
  const atMs = Number(m.timestamp);
  return Number.isSafeInteger(atMs) && atMs > 0 ? atMs : Date.now();
};

export const isMembershipRecord = (m: Pick<KafkaMessage, "headers">) =>
  m.headers?.[RECORD_KIND_HEADER]?.toString() === MEMBERSHIP_KIND;

/** Local senders waiting for their draft to be sequenced, by message id. */
export type PendingAppends = Map<string, (result: AppendResult) => void>;

export interface SequencerOptions {
  kafka: Kafka;
  groupId: string;
  /** Keeps the group's member id for a restart after a crash (member-resume.ts). */
  groupMembers?: GroupMembers;
  draftsTopic: string;
  /**
   * Also publish every sequenced message here (keyed by conversation, with its recipients), for
   * consumers outside the platform; the platform itself reads the inbox topic. Unset: not published.
   */
  sequencedTopic?: string;
  /** Where answers go for senders that wait in another process (the draft's id is not in `pending`). */
  repliesTopic: string;
  /** Where the replies go whose drafts name a partition (reply-partition.ts). */
  repliesByProcessTopic?: string;
  producer: BatchProducer;
  store: SequencerStore;
  ownership: OwnershipStore;
  messages: MessageStore;
  membership: Pick<MembershipStore, "getConversation"> & MembershipSeqStore;
  pending: PendingAppends;
  /** Dedupe rows expire after this long: a resend after it is a new message. */
  dedupeWindowSeconds: number;
  /** The clock skew allowed for when a first attempt is trusted (recent-sends.ts): twice the maximum. */
  firstAttemptMarginMs: number;
  log: Logger;
  /** The per-user fan-out: one record per (message, partition) with the recipients placed there. */
  inbox?: { topic: string; partitions: number };
  /** Test hook: called after the seqs of a batch are assigned in memory, before anything is written. */
  beforeWrite?: (partition: number) => Promise<void>;
}

/** What this process knows about one partition it owns, valid for one claim (one epoch). */
class PartitionState {
  readonly heads = new Map<string, number>();
  readonly members = new MemberCache({
    entriesMax: MEMBER_LISTS_PER_PARTITION_MAX,
    ttlMs: MEMBER_LIST_TTL_MS,
  });
  readonly recent: RecentSends;
  /** SEQUENCER_EPOCH_HEADER of this claim's inbox records (the inbox owner's check for late copies). */
  readonly epochHeader: string;
  constructor(
    readonly epoch: bigint,
    partition: number,
    firstAttemptMarginMs: number,
    dedupeWindowMs: number,
  ) {
    this.epochHeader = sequencerEpochHeader(partition, epoch);
    this.recent = new RecentSends({
      claimedAtMs: Date.now(),
      marginMs: firstAttemptMarginMs,
      entriesMax: RECENT_SENDS_PER_PARTITION_MAX,
      windowMs: dedupeWindowMs,
    });
  }

  setHead(conversationId: string, head: number): void {
    this.heads.delete(conversationId);
    this.heads.set(conversationId, head);
    if (this.heads.size > HEADS_PER_PARTITION_MAX) dropOldest(this.heads);
  }
}

type DraftRecord =
  | { kind: "draft"; draft: StoredMessage; resendsAfterMs: number | undefined; atMs: number }
  /** `atMs`: when the announcement was made (after the change was stored). */
  | { kind: "membership"; conversationId: string; atMs: number };

/** A draft and, if it was a first attempt, the time before which no resend of it was received. */
interface Draft {
  draft: StoredMessage;
  resendsAfterMs: number | undefined;
}

/** The outcome of sequencing a batch: rows to write and emit, and each draft's answer. */
interface Sequenced {
  records: SequencerRecord[];
  /** Every conversation's head after the batch (to cache once the writes succeeded). */
  heads: Map<string, number>;
  /** Every conversation's head before the batch (those of its drafts and announcements). */
  headsBefore: Map<string, number>;
  /** Messages to (re-)write and (re-)emit: new ones and re-found originals, in seq order per conversation. */
  originals: StoredMessage[];
  /** Ids of the re-found originals: sequenced before, so perhaps emitted before. */
  redelivered: Set<string>;
  results: Array<{ draftId: string; result: AppendResult }>;
  /** Every draft's key and outcome, for RecentSends once the batch is durable. */
  outcomes: Array<{ conversationId: string; key: string; ref: SequencedRef; stampMs: number }>;
}

export class Sequencer implements Closeable {
  private consumer: Consumer | undefined;
  private commits: PeriodicCommits | undefined;
  private readonly partitions: OwnedPartitions<PartitionState>;

  constructor(private readonly o: SequencerOptions) {
    this.lag = new ConsumerLag(o.groupId);
    this.partitions = new OwnedPartitions({
      stream: DRAFTS_STREAM,
      ownership: o.ownership,
      log: o.log,
      fencedReason: "SEQUENCER_FENCED",
      fencedConsequence: "nothing of this batch is acknowledged",
      fresh: (epoch, partition) =>
        new PartitionState(epoch, partition, o.firstAttemptMarginMs, o.dedupeWindowSeconds * 1000),
    });
  }

  /** Records behind the end of each owned partition, as of its last committed batch. */
  readonly lag: ConsumerLag;

  /** Claims made and batches fenced (a successor claimed while this process worked). */
  get stats(): { claims: number; fenced: number } {
    return this.partitions.stats;
  }

  /**
   * Drafts by how their dedupe key was checked: looked up in the store, answered from memory (a key
   * this owner sequenced since its claim), or trusted as a first attempt's (recent-sends.ts).
   */
  readonly dedupeChecks = { store: 0, memory: 0, trusted: 0 };

  async start(): Promise<void> {
    const consumer = groupConsumer(this.o.kafka, this.o.groupId, FETCH_WAIT_MS.sharedGroup);
    this.consumer = consumer;
    this.commits = new PeriodicCommits(consumer, this.o.log);
    this.o.groupMembers?.track(consumer, this.o.groupId);
    // A new generation: every partition is claimed again before use, with empty caches (another owner
    // may have written in between).
    consumer.on(consumer.events.GROUP_JOIN, () => {
      this.partitions.reset();
      this.lag.clear();
      this.commits?.reset();
    });
    await consumer.connect();
    await consumer.subscribe({ topic: this.o.draftsTopic, fromBeginning: true });
    await consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: PARTITIONS_CONSUMED_CONCURRENTLY,
      eachBatch: (payload) => this.onBatch(payload),
    });
    this.commits.start();
  }

  private onBatch(payload: EachBatchPayload): Promise<void> {
    batchArrived(payload, this.lag);
    // Each message's `sequence` span carries its trace on (consumers.ts, handleBatch).
    return handleBatch<string>(payload, this.o.groupId, "sequence", (spans, traces) =>
      this.sequenceBatch(payload, spans, traces),
    );
  }

  private async sequenceBatch(
    payload: EachBatchPayload,
    spans?: MessageSpans<string>,
    traces?: Array<TraceCarrier | undefined>,
  ): Promise<void> {
    const { batch } = payload;
    const state = await this.partitions.claim(batch.partition);
    /** Where each draft's sender reads its reply, when its process named a partition. */
    const replyTo = new Map<string, number>();
    const records: DraftRecord[] = batch.messages.map((m, i) => {
      if (isMembershipRecord(m))
        return { kind: "membership", conversationId: m.key!.toString(), atMs: recordTime(m) };
      const draft = decodeMessage(m.value!);
      const first = m.headers?.[FIRST_ATTEMPT_HEADER]?.toString();
      const resendsAfterMs = first === undefined ? undefined : Number(first);
      const partition = replyPartitionOf(m.headers);
      if (partition !== undefined) replyTo.set(draft.messageId, partition);
      spans?.start(draft.messageId, traces?.[i], {
        "switchboard.conversation.id": draft.conversationId,
        "switchboard.message.id": draft.messageId,
      });
      return {
        kind: "draft",
        draft,
        resendsAfterMs: Number.isSafeInteger(resendsAfterMs) ? resendsAfterMs : undefined,
        atMs: recordTime(m),
      };
    });
    const drafts = records.flatMap((r) =>
      r.kind === "draft" ? [{ draft: r.draft, resendsAfterMs: r.resendsAfterMs }] : [],
    );
    const announced = records.flatMap((r) => (r.kind === "membership" ? [r.conversationId] : []));
    let done: Sequenced;
    let audiences: Map<string, Audience>;
    try {
      done = await this.sequence(state, drafts, announced);
      await this.o.beforeWrite?.(batch.partition);
      // Before the heads: once a head past an announcement is stored, its changes have their bounds
      // (a batch handled again finds them bound and keeps them).
      audiences = await this.audiences(state, records, done);
      // Both at once: a successor reads the head from the record, never from the rows, so a row that
      // landed without its record is re-assigned the same seq (same drafts, same order) and re-written.
      await Promise.all([
        this.o.store.record(done.records, state.epoch, this.o.dedupeWindowSeconds),
        this.o.messages.write(done.originals, { fence: state.epoch }),
      ]);
    } catch (err) {
      // The outcome of the writes is unknown: read the heads again next time, and look these drafts up.
      for (const d of drafts) state.heads.delete(d.draft.conversationId);
      state.recent.forgetUntil(Date.now());
      throw err;
    }
    for (const [c, head] of done.heads) state.setHead(c, head);
    // Remembered as soon as they are durable, like the heads: if anything after this fails (the
    // check, the emits, the answers) the batch comes again, and its drafts must find these seqs. A
    // fenced owner's state is dropped whole.
    for (const o of done.outcomes) state.recent.remember(o.conversationId, o.key, o.ref, o.stampMs);

    await this.partitions.check(batch.partition, state);

    // In the order of the partition: a conversation's membership records between its messages.
    const toEmit = new Map(done.originals.map((m) => [m.messageId, m]));
    const sends: Array<Promise<void>> = [];
    for (const r of records) {
      if (r.kind === "membership") {
        sends.push(...this.emitMembershipChange(r.conversationId));
        continue;
      }
      const m = toEmit.get(r.draft.messageId);
      if (!m) continue; // a resend: its original was emitted when it was sequenced
      toEmit.delete(m.messageId);
      const audience = audiences.get(m.conversationId);
      sends.push(
        ...this.emit(
          m,
          audience === undefined ? [] : audience === "pull" ? "pull" : audience.at(m.seq, m.createdAtMs),
          done.redelivered.has(m.messageId),
          spans?.carrier(m.messageId),
          state.epochHeader,
        ),
      );
    }
    await Promise.all(sends);
    await this.answer(done.results, replyTo);
    await commitBatch(payload, this.lag, this.commits);
  }

  /**
   * A sequenced message's records: with an inbox topic one per inbox partition of its recipients, and
   * if asked one in the sequenced topic (keyed by conversation, for consumers outside the platform).
   * Each inbox record names the drafts partition and the epoch it was sequenced under (`epochHeader`):
   * if this owner is fenced while its produce is retried, the copy that lands after its successor's
   * re-emission is known as stale by the inbox owner, which checks it against the users' index.
   */
  private emit(
    m: StoredMessage,
    audience: readonly string[] | "pull",
    redelivery: boolean,
    trace: TraceCarrier | undefined,
    epochHeader: string,
  ): Array<Promise<void>> {
    const value = encodeMessage(m);
    const sends: Array<Promise<void>> = [];
    const pull = audience === "pull";
    const recipients = pull ? [] : audience;
    if (this.o.sequencedTopic !== undefined)
      sends.push(
        this.o.producer.send(
          this.o.sequencedTopic,
          {
            key: m.conversationId,
            value,
            headers: {
              seq: String(m.seq),
              [RECIPIENTS_HEADER]: recipients.join("\n"),
              ...(pull ? { [INBOX_KIND_HEADER]: PULL_RECORD } : {}),
              ...trace,
            },
          },
          ORDERED,
        ),
      );
    const inbox = this.o.inbox;
    if (!inbox) return sends;
    if (pull) {
      sends.push(
        this.o.producer.send(
          inbox.topic,
          {
            partition: shardOf(m.conversationId, inbox.partitions),
            key: m.conversationId,
            value,
            headers: { [INBOX_KIND_HEADER]: PULL_RECORD, ...trace },
          },
          ORDERED,
        ),
      );
      return sends;
    }
    const byPartition = new Map<number, string[]>();
    for (const user of recipients) {
      const partition = shardOf(user, inbox.partitions);
      const list = byPartition.get(partition);
      if (list) list.push(user);
      else byPartition.set(partition, [user]);
    }
    for (const [partition, users] of byPartition)
      sends.push(
        this.o.producer.send(
          inbox.topic,
          {
            partition,
            value,
            headers: {
              [INBOX_RECIPIENTS_HEADER]: users.join("\n"),
              [SEQUENCER_EPOCH_HEADER]: epochHeader,
              ...(redelivery ? { [REDELIVERY_HEADER]: "1" } : {}),
              ...trace,
            },
          },
          ORDERED,
        ),
      );
    return sends;
  }

  /** Tells the routers a conversation's membership changed, in order with its pull messages. */
  private emitMembershipChange(conversationId: string): Array<Promise<void>> {
    const inbox = this.o.inbox;
    if (!inbox) return [];
    return [
      this.o.producer.send(
        inbox.topic,
        {
          partition: shardOf(conversationId, inbox.partitions),
          key: conversationId,
          value: Buffer.alloc(0),
          headers: { [INBOX_KIND_HEADER]: MEMBERSHIP_RECORD },
        },
        ORDERED,
      ),
    ];
  }

  /**
   * The audience of every conversation of the batch, after giving the changes each announcement in it
   * announces their bound (the head at the announcement's place: the last seq before it). A pull
   * conversation is "pull": its delivery model is read with the list, and announced changes re-read
   * it; its members are never addressed, so their changes get no bound.
   */
  private async audiences(
    state: PartitionState,
    records: DraftRecord[],
    done: Sequenced,
  ): Promise<Map<string, Audience>> {
    const seqOf = new Map(done.results.map((r) => [r.draftId, r.result.message.seq]));
    /** Per conversation, its announcements with the head at each one's place, in partition order. */
    const changes = new Map<string, Array<{ atMs: number; head: number }>>();
    /** Per conversation, the last seq met so far in the batch. */
    const last = new Map<string, number>();
    for (const r of records) {
      const c = r.kind === "draft" ? r.draft.conversationId : r.conversationId;
      const head = last.get(c) ?? done.headsBefore.get(c) ?? 0;
      if (r.kind === "draft") {
        last.set(c, Math.max(head, seqOf.get(r.draft.messageId) ?? 0));
        continue;
      }
      const list = changes.get(c) ?? [];
      // Announcements with no message between them bind at the same head: one binding does for all.
      const previous = list.at(-1);
      if (previous?.head === head) previous.atMs = Math.max(previous.atMs, r.atMs);
      else list.push({ atMs: r.atMs, head });
      changes.set(c, list);
      state.members.forget(c);
    }
    // Memberships that ended before this are of no concern to this batch or any later one.
    let oldestMs = Number.POSITIVE_INFINITY;
    for (const r of records) oldestMs = Math.min(oldestMs, r.atMs);
    const departedSinceMs = Math.max(0, oldestMs - DEPARTURES_LOOKBACK_MS);
    const out = new Map<string, Audience>();
    const toRead: string[] = [];
    for (const c of new Set([...last.keys(), ...changes.keys()])) {
      const cached = changes.has(c) ? undefined : state.members.get(c);
      if (cached) out.set(c, cached);
      else toRead.push(c);
    }
    for (let i = 0; i < toRead.length; i += MEMBER_READS_CONCURRENT) {
      await Promise.all(
        toRead.slice(i, i + MEMBER_READS_CONCURRENT).map(async (conversationId) => {
          const startedAtMs = Date.now();
          // Direct conversations are always on push: no record to read.
          const record = conversationId.startsWith("dm:")
            ? undefined
            : await this.o.membership.getConversation(conversationId);
          let audience: Audience;
          if (record?.delivery === "pull") audience = "pull";
          else {
            let bounds: MembershipAsOfSeqs | undefined;
            for (const { atMs, head } of changes.get(conversationId) ?? [])
              bounds = await this.o.membership.boundChanges(conversationId, atMs, head, departedSinceMs);
            audience = new SeqAudience(
              bounds ?? (await this.o.membership.membershipSeqs(conversationId, departedSinceMs)),
            );
          }
          out.set(conversationId, audience);
          state.members.set(conversationId, audience, startedAtMs);
        }),
      );
    }
    return out;
  }

  /**
   * The earlier assignments of the drafts' keys: what this owner remembers, and what the store holds
   * for the keys it may not trust to be new.
   */
  private async earlier(
    state: PartitionState,
    byConversation: Map<string, Draft[]>,
  ): Promise<Map<string, Map<string, SequencedRef>>> {
    const remembered = new Map<string, Map<string, SequencedRef>>();
    const toLookUp = new Map<string, string[]>();
    for (const [c, list] of byConversation) {
      for (const { draft, resendsAfterMs } of list) {
        const key = dedupeKeyOf(draft);
        const ref = state.recent.get(c, key);
        if (ref) {
          const refs = remembered.get(c) ?? new Map<string, SequencedRef>();
          refs.set(key, ref);
          remembered.set(c, refs);
          this.dedupeChecks.memory++;
        } else if (state.recent.needsLookup(resendsAfterMs)) {
          const keys = toLookUp.get(c) ?? [];
          if (!keys.includes(key)) keys.push(key);
          toLookUp.set(c, keys);
          this.dedupeChecks.store++;
        } else {
          this.dedupeChecks.trusted++;
        }
      }
    }
    if (toLookUp.size === 0) return remembered;
    const found = await this.o.store.lookup(toLookUp);
    for (const [c, refs] of remembered) found.set(c, new Map([...(found.get(c) ?? []), ...refs]));
    return found;
  }

  /**
   * Assigns seqs in memory (nothing is written here). `announced`: conversations with announcements in
   * the batch, whose heads before it are wanted too.
   */
  private async sequence(state: PartitionState, drafts: Draft[], announced: string[]): Promise<Sequenced> {
    const byConversation = new Map<string, Draft[]>();
    for (const d of drafts) {
      const list = byConversation.get(d.draft.conversationId);
      if (list) list.push(d);
      else byConversation.set(d.draft.conversationId, [d]);
    }
    const conversations = [...new Set([...byConversation.keys(), ...announced])];
    const unknown = conversations.filter((c) => !state.heads.has(c));
    const [loaded, found] = await Promise.all([
      unknown.length > 0 ? this.o.store.heads(unknown) : new Map<string, number>(),
      this.earlier(state, byConversation),
    ]);
    const headOf = (c: string) => state.heads.get(c) ?? loaded.get(c) ?? 0;

    // The stored rows behind the refs found, to tell a true assignment from a fenced-out owner's
    // leftover (a ref above the head, or one whose row holds another message).
    const keyOf = (c: string, seq: number) => `${c}\u0000${seq}`;
    const probes: Array<{ conversationId: string; seq: number }> = [];
    for (const [c, refs] of found)
      for (const ref of refs.values())
        if (ref.seq <= headOf(c)) probes.push({ conversationId: c, seq: ref.seq });
    const rows = new Map(
      (probes.length > 0 ? await this.o.messages.getMany(probes) : []).map((m) => [
        keyOf(m.conversationId, m.seq),
        m,
      ]),
    );

    const out: Sequenced = {
      records: [],
      heads: new Map(),
      headsBefore: new Map(conversations.map((c) => [c, headOf(c)])),
      originals: [],
      redelivered: new Set(),
      results: [],
      outcomes: [],
    };
    for (const [c, list] of byConversation) {
      const head = headOf(c);
      let next = head;
      const assigned: SequencerRecord["assigned"] = [];
      const originals: StoredMessage[] = [];
      /** Per dedupe key: the original message (stored, or first seen in this batch). */
      const byKey = new Map<string, StoredMessage>();
      for (const { draft: d } of list) {
        const key = dedupeKeyOf(d);
        let original = byKey.get(key);
        if (!original) {
          const ref: SequencedRef | undefined = found.get(c)?.get(key);
          const row = ref ? rows.get(keyOf(c, ref.seq)) : undefined;
          if (ref && ref.seq <= head && row?.messageId === ref.messageId) {
            original = row; // sequenced before (a resend, or re-processing after a crash)
            if (row.messageId === d.messageId) {
              originals.push(sequenced(d, ref.seq));
              out.redelivered.add(d.messageId);
            }
          } else if (ref && ref.seq <= head && !row && ref.messageId === d.messageId) {
            original = sequenced(d, ref.seq); // its row never landed: write it now
            originals.push(original);
            out.redelivered.add(d.messageId);
          } else {
            original = sequenced(d, ++next);
            assigned.push({ dedupeKey: key, seq: original.seq, messageId: d.messageId });
            originals.push(original);
          }
          byKey.set(key, original);
        }
        out.outcomes.push({
          conversationId: c,
          key,
          ref: { seq: original.seq, messageId: original.messageId },
          // The original's: a repeat's memory ends with the original's dedupe row. (Any other send
          // with this key was received at or after a first attempt's bound, so this stamp also
          // bounds that attempt's unseen twins once the key is evicted.)
          stampMs: original.createdAtMs,
        });
        out.results.push({
          draftId: d.messageId,
          result:
            original.messageId === d.messageId
              ? { message: sequenced(d, original.seq), duplicate: false }
              : { message: original, duplicate: true },
        });
      }
      if (assigned.length > 0) out.records.push({ conversationId: c, head: next, assigned });
      out.heads.set(c, next);
      out.originals.push(...originals.sort((a, b) => a.seq - b.seq));
    }
    return out;
  }

  /**
   * Answers every draft's sender: a sender waiting in this process directly, one in another process
   * (or one that gave up) through the replies topic, where its process's log finds it by draft id.
   */
  private async answer(results: Sequenced["results"], replyTo: ReadonlyMap<string, number>): Promise<void> {
    const remote: Sequenced["results"] = [];
    for (const r of results) {
      const done = this.o.pending.get(r.draftId);
      if (done) {
        this.o.pending.delete(r.draftId);
        done(r.result);
      } else remote.push(r);
    }
    await Promise.all(
      remote.map(({ draftId, result }) => {
        const value = encodeMessage(result.message);
        const headers = {
          [REPLY_DRAFT_HEADER]: draftId,
          [REPLY_DUPLICATE_HEADER]: result.duplicate ? "1" : "0",
        };
        const partition = replyTo.get(draftId);
        // A draft from a process of the version before names no partition: it reads `replies` by key.
        return partition === undefined || this.o.repliesByProcessTopic === undefined
          ? this.o.producer.send(this.o.repliesTopic, { key: result.message.conversationId, value, headers })
          : this.o.producer.send(this.o.repliesByProcessTopic, { partition, value, headers });
      }),
    );
  }

  async close(): Promise<void> {
    // What is resolved now is committed; a batch still in flight is its successor's to re-read.
    await this.commits?.close();
    await this.consumer?.disconnect();
    this.o.groupMembers?.forget(this.o.groupId);
  }
}
