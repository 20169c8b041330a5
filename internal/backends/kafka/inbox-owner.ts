/**
 * The inbox owner (ADR 0002): the member of the `inbox` consumer group that owns a partition of the
 * inbox topic assigns the inbox cursors of the users placed there (shardOf(user)), in partition order,
 * and hands the messages with their cursors to the router for delivery.
 *
 * The same fence as the sequencer's: one claim per partition per group generation (OwnershipStore),
 * cursors from memory, plain writes with the owner's epoch as write timestamp: the stream rows and
 * each user's head (with the offset of the last record applied, and the head before the batch) in one
 * round trip, and at the same time a check that the epoch is still ours; only if it is, delivery and
 * the offset commit. A head read back is believed only with its batch's rows (CassandraInboxStore).
 *
 * A pull conversation's message (ADR 0010) comes as one record without recipients (header kind=pull),
 * in the partition of its conversation, and is handed on as it is; a membership change of a
 * conversation comes as a record (kind=membership) in the same partition, in order with its messages,
 * and is handed on between them, so the router's member lists are never stale.
 *
 * Exactly once per (user, message): a record at or below a user's applied offset was applied before
 * (by a predecessor, or by this owner before a failed attempt) and is skipped for that user; a record
 * the sequencer marked as a re-delivery (it re-emits what it re-processes after a crash) is checked
 * against the user's index rows, and so is a record a fenced-out sequencer produced: its produce can
 * land late (a broker failover, a pause), after its successor's re-emission of the same messages and
 * unmarked. Each record names its drafts partition and its sequencer's epoch (SEQUENCER_EPOCH_HEADER);
 * one whose epoch is below the newest this owner knows for that drafts partition (seen in the stream,
 * or read from the partition's owner row once per group generation) is checked too. Records without
 * the header (a sequencer of the version before) are handled as before. Whatever a fenced-out owner
 * writes late loses to its successor's.
 */
import type { Consumer, EachBatchPayload, Kafka } from "kafkajs";
import { dropOldest } from "../../lib/drop-oldest.js";
import type { Logger } from "../../lib/log.js";
import type { MessageSpans, TraceCarrier } from "../../lib/tracing.js";
import type { Closeable, DeliveryHandler, InboxDelivery, InboxEntry, OwnershipStore } from "../types.js";
import { decodeMessage } from "./codec.js";
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
import type { GroupMembers } from "./member-resume.js";
import { announcingRoundRobin, everyMemberAnnounces } from "./member-versions.js";
import { OwnedPartitions } from "./owned-partitions.js";

export const INBOX_GROUP = "inbox";
/** What an inbox owner of this version announces to its group (member-versions.ts). */
const ONE_ROUND_TRIP_CAPABILITY = "switchboard.inbox-owner/heads-checked-against-rows";
export const INBOX_STREAM = "inbox";
/** Header of an inbox record: the recipients placed in its partition, "\n"-joined. */
export const INBOX_RECIPIENTS_HEADER = "recipients";
/** Header of an inbox record the sequencer emitted again ("1"): its entries may exist already. */
export const REDELIVERY_HEADER = "redelivery";
/** Header of an inbox record that is not a push message: `pull` or `membership` (its key: the conversation). */
export const INBOX_KIND_HEADER = "kind";
export const PULL_RECORD = "pull";
export const MEMBERSHIP_RECORD = "membership";
/**
 * Header of an inbox record: the drafts partition and the epoch of the sequencer that produced it,
 * `${partition}/${epoch}` (sequencerEpochHeader). A record whose epoch is below another seen for its
 * partition may be a fenced-out sequencer's late copy of a message its successor emitted again.
 */
export const SEQUENCER_EPOCH_HEADER = "epoch";
/** The stream name of the drafts partitions in OwnershipStore (the sequencer's claims). */
export const DRAFTS_STREAM = "drafts";

/** The value of SEQUENCER_EPOCH_HEADER for a record of drafts partition `partition` under `epoch`. */
export function sequencerEpochHeader(partition: number, epoch: bigint): string {
  return `${partition}/${epoch}`;
}

/** The drafts partition and epoch a record's SEQUENCER_EPOCH_HEADER names, if it carries a valid one. */
export function parseSequencerEpoch(
  value: string | undefined,
): { partition: number; epoch: bigint } | undefined {
  if (value === undefined) return undefined;
  const match = /^(\d{1,6})\/(\d{1,20})$/.exec(value);
  if (!match) return undefined;
  return { partition: Number(match[1]), epoch: BigInt(match[2]!) };
}

/** Users whose head one partition's owner keeps in memory at most. */
const USERS_PER_PARTITION_MAX = 50_000;

interface UserHead {
  head: number;
  appliedOffset: number;
}

/** What the inbox owner needs from the store (CassandraInboxStore's owner path). */
export interface OwnedInboxStore {
  /**
   * `log`: the inbox topic; offsets stored for another (a keyspace restored beside fresh topics) read
   * as none. `unnamedLog`: the topic of heads written before heads named theirs (firstLog).
   */
  ownedHeads(users: string[], log: string, unnamedLog: string): Promise<Map<string, UserHead>>;
  /** The inbox topic the keyspace served first (recorded as `log` if none is). */
  firstLog(log: string): Promise<string>;
  /** The cursors of those of these that have one (their index rows). */
  recorded(keys: Array<Omit<InboxEntry, "cursor" | "messageId">>): Promise<Map<string, number>>;
  /** The batch's stream rows, and each user's head, applied offset and the two before the batch. */
  writeOwned(
    entries: InboxEntry[],
    heads: Map<string, UserHead>,
    before: Map<string, UserHead>,
    epoch: bigint,
    ttlSeconds: number,
    inOneRoundTrip: boolean,
    log: string,
  ): Promise<void>;
}

export interface InboxOwnerOptions {
  kafka: Kafka;
  groupId: string;
  /** Keeps the group's member id for a restart after a crash (member-resume.ts). */
  groupMembers?: GroupMembers;
  inboxTopic: string;
  store: OwnedInboxStore;
  ownership: OwnershipStore;
  /** Index rows (for re-deliveries) expire after this long. */
  indexTtlSeconds: number;
  handler: DeliveryHandler;
  log: Logger;
  /** Test hook: called after cursors are assigned in memory, before anything is written. */
  beforeWrite?: (partition: number) => Promise<void>;
  /** Test hook: called after the writes and a passing epoch check, before the deliveries are handed on. */
  beforeHandOver?: (partition: number) => Promise<void>;
}

class PartitionState {
  readonly users = new Map<string, UserHead>();
  constructor(readonly epoch: bigint) {}

  set(userId: string, head: UserHead): void {
    this.users.delete(userId);
    this.users.set(userId, head);
    if (this.users.size > USERS_PER_PARTITION_MAX) dropOldest(this.users);
  }
}

export class InboxOwner implements Closeable {
  private consumer: Consumer | undefined;
  private commits: PeriodicCommits | undefined;
  private readonly partitions: OwnedPartitions<PartitionState>;
  /**
   * The newest sequencer epoch known per drafts partition: seen in a record of an owned partition, or
   * read from the drafts partition's owner row. Epochs only rise, so what is known stays true.
   */
  private readonly draftsEpochs = new Map<number, bigint>();
  /**
   * Drafts partitions whose epoch was read in this group generation. An owned partition is read from
   * its last committed offset: the records before it (a successor sequencer's among them) were applied
   * by another owner, so the stream alone does not tell this owner every epoch that exists. A read made
   * after joining the generation is made after they landed, so it names their epochs or newer ones.
   */
  private draftsEpochsRead = new Set<number>();
  /** See writesInOneRoundTrip; `generation` counts the group generations this member joined. */
  private oneRoundTrip = false;
  /** The inbox topic the keyspace served first (start): that of heads that name none. */
  private unnamedLog: string | undefined;
  private generation = 0;
  /** Generations whose members this owner read (for tests and diagnostics). */
  membersRead = 0;

  constructor(private readonly o: InboxOwnerOptions) {
    this.lag = new ConsumerLag(o.groupId);
    this.partitions = new OwnedPartitions({
      stream: INBOX_STREAM,
      ownership: o.ownership,
      log: o.log,
      fencedReason: "INBOX_FENCED",
      fencedConsequence: "nothing of this batch is delivered",
      fresh: (epoch) => new PartitionState(epoch),
    });
  }

  /** The consumer group this owner belongs to. */
  get groupId(): string {
    return this.o.groupId;
  }

  /** Records behind the end of each owned partition, as of its last committed batch. */
  readonly lag: ConsumerLag;

  /** Claims made and batches fenced (a successor claimed while this process worked). */
  get stats(): { claims: number; fenced: number } {
    return this.partitions.stats;
  }

  async start(): Promise<void> {
    const consumer = groupConsumer(this.o.kafka, this.o.groupId, FETCH_WAIT_MS.sharedGroup, [
      announcingRoundRobin(ONE_ROUND_TRIP_CAPABILITY),
    ]);
    this.consumer = consumer;
    this.commits = new PeriodicCommits(consumer, this.o.log);
    this.o.groupMembers?.track(consumer, this.o.groupId);
    consumer.on(consumer.events.GROUP_JOIN, () => {
      this.partitions.reset();
      this.lag.clear();
      this.commits?.reset();
      this.draftsEpochsRead = new Set();
      // A partition that left and came back missed the membership records read elsewhere meanwhile.
      this.o.handler.partitionsChanged?.();
      // Heads after their rows until every member is known to check heads against their rows.
      this.oneRoundTrip = false;
      void this.readMembers(consumer, ++this.generation);
    });
    // Before any head is read: heads that name no topic are of the one the keyspace served first.
    this.unnamedLog = await this.o.store.firstLog(this.o.inboxTopic);
    await consumer.connect();
    await consumer.subscribe({ topic: this.o.inboxTopic, fromBeginning: true });
    await consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: PARTITIONS_CONSUMED_CONCURRENTLY,
      eachBatch: (payload) => this.onBatch(payload),
    });
    this.commits.start();
  }

  /**
   * Whether this generation's members all check a head they read back against its batch's rows, so
   * that rows and heads may be written in one round trip, in no order. A member of a version before
   * trusts every stored head (it would skip what a head stored without its rows says is applied):
   * while one is in the group (a rolling upgrade, a rollback), heads are written after their rows.
   */
  get writesInOneRoundTrip(): boolean {
    return this.oneRoundTrip;
  }

  private async readMembers(consumer: Consumer, generation: number): Promise<void> {
    try {
      const { members } = await consumer.describeGroup();
      if (generation !== this.generation) return;
      this.oneRoundTrip = everyMemberAnnounces(members, ONE_ROUND_TRIP_CAPABILITY);
      this.membersRead++;
    } catch (err) {
      this.o.log.warn("inbox: the group's members could not be read; heads are written after their rows", {
        err,
      });
    }
  }

  private onBatch(payload: EachBatchPayload): Promise<void> {
    batchArrived(payload, this.lag);
    // Each message's `inbox` span carries its trace on (consumers.ts, handleBatch).
    return handleBatch<number>(payload, this.o.groupId, "inbox", (spans, traces) =>
      this.applyBatch(payload, spans, traces),
    );
  }

  private async applyBatch(
    payload: EachBatchPayload,
    spans?: MessageSpans<number>,
    traces?: Array<TraceCarrier | undefined>,
  ): Promise<void> {
    const { batch } = payload;
    const state = await this.partitions.claim(batch.partition);
    const changes = new Map<number, string>();
    const records = batch.messages.flatMap((m, i) => {
      if (m.headers?.[INBOX_KIND_HEADER]?.toString() === MEMBERSHIP_RECORD) {
        changes.set(Number(m.offset), m.key?.toString() ?? "");
        return [];
      }
      const users = m.headers?.[INBOX_RECIPIENTS_HEADER]?.toString() ?? "";
      const message = decodeMessage(m.value!);
      const offset = Number(m.offset);
      spans?.start(offset, traces?.[i], {
        "switchboard.conversation.id": message.conversationId,
        "switchboard.message.id": message.messageId,
        "switchboard.seq": message.seq,
      });
      const record = {
        offset,
        message,
        users: users === "" ? [] : users.split("\n"),
        /** Marked as a re-delivery, or produced under an epoch older than one known: check the index. */
        redelivery: m.headers?.[REDELIVERY_HEADER]?.toString() === "1",
        origin: parseSequencerEpoch(m.headers?.[SEQUENCER_EPOCH_HEADER]?.toString()),
        pull: m.headers?.[INBOX_KIND_HEADER]?.toString() === PULL_RECORD,
      };
      return [record];
    });
    await this.readDraftsEpochs(records.flatMap((r) => (r.origin ? [r.origin.partition] : [])));
    // In partition order: a record is stale if an epoch above its own is known by the time it comes.
    // What the batch's records teach is kept only once the batch succeeded: a retry of it decides
    // each record as the failed attempt did (an epoch learned from a later record of the batch would
    // make it check an earlier one's index where the attempt did not, and assign other cursors).
    const learned = new Map<number, bigint>();
    for (const r of records) if (r.origin && this.olderThanKnown(r.origin, learned)) r.redelivery = true;

    const users = [...new Set(records.flatMap((r) => r.users))];
    const unknown = users.filter((u) => !state.users.has(u));
    const loaded =
      unknown.length > 0
        ? await this.o.store.ownedHeads(unknown, this.o.inboxTopic, this.unnamedLog ?? this.o.inboxTopic)
        : new Map<string, UserHead>();
    const maybeRecorded = records.flatMap((r) =>
      r.redelivery
        ? r.users.map((userId) => ({ userId, conversationId: r.message.conversationId, seq: r.message.seq }))
        : [],
    );
    const recorded =
      maybeRecorded.length > 0 ? await this.o.store.recorded(maybeRecorded) : new Map<string, number>();

    const heads = new Map<string, UserHead>();
    const before = new Map<string, UserHead>();
    for (const u of users) {
      const h = state.users.get(u) ?? loaded.get(u)!;
      heads.set(u, { ...h });
      before.set(u, { ...h });
    }
    const entries: InboxEntry[] = [];
    // The deliveries in log order, cut where a membership change lies between them.
    const steps: Array<InboxDelivery[] | string> = [[]];
    const changeOffsets = [...changes.keys()];
    let nextChange = 0;
    // What this batch assigns: a re-delivery may follow its original in the same batch, before the
    // original's index row exists for `recorded` to find.
    const assigned = new Set<string>();
    // Users whose records here a former owner applied (their heads, read from storage, say so).
    const appliedBefore = new Set<string>();
    for (const r of records) {
      while (nextChange < changeOffsets.length && changeOffsets[nextChange]! < r.offset)
        steps.push(changes.get(changeOffsets[nextChange++]!)!, []);
      const deliveries = steps.at(-1) as InboxDelivery[];
      if (r.pull) {
        const trace = spans?.carrier(r.offset);
        deliveries.push({ message: r.message, recipients: [], pull: true, ...(trace ? { trace } : {}) });
        continue;
      }
      const recipients: InboxDelivery["recipients"] = [];
      for (const userId of r.users) {
        const h = heads.get(userId)!;
        if (r.offset <= h.appliedOffset) {
          if (loaded.has(userId)) appliedBefore.add(userId);
          continue;
        }
        h.appliedOffset = r.offset;
        const key = `${userId}\u0000${r.message.conversationId}\u0000${r.message.seq}`;
        // An index row counts at or below the head worked from: above it, it is a failed write's
        // (its head gave way to the one before, ownedHeads), and this record gets that cursor again.
        const indexed = recorded.get(key);
        if ((indexed !== undefined && indexed <= h.head) || assigned.has(key)) continue;
        assigned.add(key);
        h.head++;
        entries.push({
          userId,
          cursor: h.head,
          conversationId: r.message.conversationId,
          seq: r.message.seq,
          messageId: r.message.messageId,
        });
        recipients.push({ userId, cursor: h.head });
      }
      if (recipients.length > 0) {
        const trace = spans?.carrier(r.offset);
        deliveries.push(
          trace ? { message: r.message, recipients, trace } : { message: r.message, recipients },
        );
      }
    }

    try {
      await this.o.beforeWrite?.(batch.partition);
      // The epoch check goes with the writes, not before them (one round trip): a fenced-out owner's
      // rows and heads carry its older epoch and lose to its successor's, and it delivers nothing. A
      // successor that claims meanwhile re-reads from the last committed offset (this batch is not
      // committed before it is delivered) and, cursors being a function of the stored heads and the
      // records in partition order, assigns these same cursors to these same records whether or not
      // it saw these heads (ADR 0002).
      await Promise.all([
        this.o.store.writeOwned(
          entries,
          heads,
          before,
          state.epoch,
          this.o.indexTtlSeconds,
          this.oneRoundTrip,
          this.o.inboxTopic,
        ),
        this.partitions.check(batch.partition, state),
      ]);
    } catch (err) {
      // The outcome is unknown: some users' rows and heads may be stored. The retry claims the
      // partition again (a newer epoch, so that it wins over this attempt at every cell, also where
      // it assigns fewer cursors) and reads the heads afresh (a head stored without its batch's rows
      // gives way to the one before; a user found applied has its sessions recheck their inboxes).
      this.partitions.renew(batch.partition);
      throw err;
    }
    for (const [partition, epoch] of learned) this.learn(partition, epoch);
    await this.o.beforeHandOver?.(batch.partition);
    for (const [u, h] of heads) state.set(u, h);

    while (nextChange < changeOffsets.length) steps.push(changes.get(changeOffsets[nextChange++]!)!);
    for (const step of steps) {
      if (typeof step === "string") this.o.handler.membershipChanged(step);
      else if (step.length > 0) await this.handOver(step);
    }
    // A former owner stored these entries and may have stopped before handing them on (a crash, or
    // a pause past its session): the users' sessions look at their inboxes (after a rebalance, the
    // records since the last commit; their gateways find nothing new if it had handed them on).
    if (appliedBefore.size > 0) this.o.handler.recheckInboxes?.([...appliedBefore]);
    await commitBatch(payload, this.lag, this.commits);
  }

  /**
   * Reads the epochs of the drafts partitions not read yet in this generation (one shared read; see
   * draftsEpochsRead). Once per drafts partition per generation: nothing in the steady state.
   */
  private async readDraftsEpochs(partitions: number[]): Promise<void> {
    const toRead = [...new Set(partitions)].filter((p) => !this.draftsEpochsRead.has(p));
    if (toRead.length === 0) return;
    const read = this.draftsEpochsRead;
    const epochs = await Promise.all(toRead.map((p) => this.o.ownership.current(DRAFTS_STREAM, p)));
    for (const [i, partition] of toRead.entries()) {
      const epoch = epochs[i];
      if (epoch !== undefined) this.learn(partition, epoch);
      read.add(partition);
    }
  }

  /**
   * Whether a newer epoch than the record's is known for its drafts partition (or learned from an
   * earlier record of the batch); learns the record's into `learned`.
   */
  private olderThanKnown(
    origin: { partition: number; epoch: bigint },
    learned: Map<number, bigint>,
  ): boolean {
    // `learned` holds only epochs above the known ones.
    const known = learned.get(origin.partition) ?? this.draftsEpochs.get(origin.partition);
    if (known !== undefined && origin.epoch < known) return true;
    if (known === undefined || origin.epoch > known) learned.set(origin.partition, origin.epoch);
    return false;
  }

  /** Keeps an epoch read from an owner row or seen in a batch that succeeded (epochs only rise). */
  private learn(partition: number, epoch: bigint): void {
    const known = this.draftsEpochs.get(partition);
    if (known === undefined || epoch > known) this.draftsEpochs.set(partition, epoch);
  }

  /**
   * Hands deliveries to the router. The entries are durable and the heads say they are applied, so a
   * batch that failed here would not be handed over again when retried: a failure is logged and the
   * batch's later steps go on. Its recipients read the entries by gap catch-up or sync.
   */
  private async handOver(step: InboxDelivery[]): Promise<void> {
    try {
      await this.o.handler.deliver(step);
    } catch (err) {
      this.o.log.error("inbox: handing deliveries to the router failed; their recipients read them by sync", {
        deliveries: step.length,
        err,
      });
    }
  }

  async close(): Promise<void> {
    // What is resolved now is committed; a batch still in flight is its successor's to re-read.
    await this.commits?.close();
    await this.consumer?.disconnect();
    this.o.groupMembers?.forget(this.o.groupId);
  }
}
