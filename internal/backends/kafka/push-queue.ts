/**
 * Durable push jobs on Kafka (distributed backend, docs/adr/0008): the compacted topic `push-jobs`
 * is the store. A job is a record keyed by its id, in the partition of its user; its new attempt count
 * and next due time before a retry are a newer record with the same key; a job that ended is a
 * tombstone. The members of the consumer group `push` own the partitions. On every assignment a member
 * reads its partitions from the beginning (compaction keeps them short: live jobs and recent
 * tombstones) and, once it has read up to where each partition ended at the assignment, delivers the
 * jobs still live there — the ones a crashed or departed owner left — and from then on each new job as
 * it arrives. So a job survives the crash of any process: the next owner of its partition delivers it.
 *
 * A job's record key is its PushJob.key when it has one: a notification asked for again for the same
 * device (a router handling messages again after a crash) is a new record under the same key. While
 * the job lives it is the same job; once the job ended, the owner ends the repeat at once with
 * another tombstone (so compaction, which keeps a key's latest record, keeps the end), and an owner
 * reading a partition remembers the keys it saw end there.
 *
 * At least once: a job whose partition changed owner while it was being delivered may be sent by both
 * (the collapse id and the webhook's notification_id let devices and receivers show it once). No
 * offset is ever committed: the topic, not the group, says what is left to do.
 *
 * The owner's own writes — a delivered job's retry record (its new attempt count and due time) and a
 * job's tombstone — are retried a few times with backoff when Kafka fails them (a broker failover): a
 * delivery whose record could not be written would otherwise stop until the partition's next
 * assignment. If they still fail, the job keeps its new state in memory, and a job whose delivery
 * returned without ending it is offered to the deliverer again after `parkedRetryMs` (while this
 * process owns its partition). A new job's put is not retried here: its caller (the router) retries.
 */
import type { Admin, Consumer, EachBatchPayload, Kafka } from "kafkajs";
import { dropOldest } from "../../lib/drop-oldest.js";
import { invariantViolated } from "../../lib/errors.js";
import type { Logger } from "../../lib/log.js";
import { shardOf } from "../../lib/shard.js";
import type { PushDeadLetterStore, PushJob, PushJobQueue } from "../types.js";
import type { BatchProducer } from "./batch-producer.js";
import { FETCH_WAIT_MS, groupConsumer } from "./consumers.js";
import type { GroupMembers } from "./member-resume.js";

/** Jobs this process delivers at once; the rest of its partitions' live jobs wait their turn. */
const ACTIVE_MAX = 10_000;
/**
 * Keys of jobs ended (here, or seen ended in an owned partition), remembered so a re-read of their
 * record or a repeat of the job does not start them again.
 */
const ENDED_REMEMBERED_MAX = 100_000;
/** Waits between the attempts at the owner's own writes (retry records, tombstones): 6 attempts. */
const OWN_WRITE_RETRY_DELAYS_MS = [250, 500, 1_000, 2_000, 4_000];
/** A job whose delivery returned without ending it is offered again after this long. */
const PARKED_RETRY_MS = 30_000;

export interface PushQueueOptions {
  kafka: Kafka;
  admin: Admin;
  groupId: string;
  topic: string;
  /** Where a job that failed for good is recorded (Cassandra: readable and replayable). */
  deadLetters: Pick<PushDeadLetterStore, "add">;
  partitions: number;
  producer: BatchProducer;
  /** Keeps the group's member id for a restart after a crash (member-resume.ts). */
  groupMembers?: GroupMembers;
  log: Logger;
  /** Tests: the waits between attempts at the owner's own writes (default OWN_WRITE_RETRY_DELAYS_MS). */
  ownWriteRetryDelaysMs?: readonly number[];
  /** Tests: when a job whose delivery returned without ending it is offered again (PARKED_RETRY_MS). */
  parkedRetryMs?: number;
}

/** What this process knows of one partition it owns, for one assignment. */
interface OwnedPartition {
  /** The partition's end when it was assigned: the jobs read up to here are the ones left from before. */
  end: bigint;
  caughtUp: boolean;
  /** Jobs not ended, by id (the latest record of each). */
  live: Map<string, PushJob>;
}

export class KafkaPushQueue implements PushJobQueue {
  private consumer: Consumer | undefined;
  private deliver: ((job: PushJob) => Promise<void>) | undefined;
  private owned = new Map<number, OwnedPartition>();
  /** Set while an assignment's partition ends are being read; batches wait for it. */
  private assigned: Promise<void> = Promise.resolve();
  private readonly active = new Set<string>();
  /**
   * Jobs whose delivery returned without ending them (the process is closing, or writing the job's
   * record failed): offered again after parkedRetryMs, not at once.
   */
  private parked = new Set<string>();
  private readonly parkedTimers = new Set<NodeJS.Timeout>();
  private closed = false;
  private readonly ended = new Set<string>();

  constructor(private readonly o: PushQueueOptions) {}

  /** The topic's partition count as the broker has it (it may differ from the setting it was made with). */
  private partitionCount: Promise<number> | undefined;

  private async partitionOf(job: PushJob): Promise<number> {
    this.partitionCount ??= this.o.admin
      .fetchTopicMetadata({ topics: [this.o.topic] })
      .then((m) => m.topics[0]?.partitions.length || this.o.partitions)
      .catch((err: unknown) => {
        this.partitionCount = undefined;
        throw err;
      });
    return shardOf(job.notification.userId, await this.partitionCount);
  }

  async put(job: PushJob): Promise<void> {
    const partition = await this.partitionOf(job);
    const key = recordKey(job);
    const record = { partition, key, value: JSON.stringify(job) };
    const state = this.owned.get(partition);
    // A new job (or one another process delivers): its caller retries.
    if (!state?.live.has(key)) return void (await this.o.producer.send(this.o.topic, record));
    // A retry record of a job this process delivers.
    try {
      await this.withRetries("a push job's retry record", () => this.o.producer.send(this.o.topic, record));
    } catch (err) {
      // Offered again later (see release) with the state it should have had.
      if (state.live.has(key) && this.owned.get(partition) === state) state.live.set(key, job);
      throw err;
    }
  }

  async finish(job: PushJob): Promise<void> {
    const key = recordKey(job);
    this.remember(key);
    const partition = await this.partitionOf(job);
    this.owned.get(partition)?.live.delete(key);
    await this.end(partition, key);
  }

  private async end(partition: number, key: string): Promise<void> {
    await this.withRetries("a push job's tombstone", () =>
      this.o.producer.send(this.o.topic, { partition, key, value: null }),
    );
  }

  /** Runs one of the owner's own writes, again after a failure (bounded; see the header). */
  private async withRetries(what: string, write: () => Promise<void>): Promise<void> {
    const delays = this.o.ownWriteRetryDelaysMs ?? OWN_WRITE_RETRY_DELAYS_MS;
    for (let attempt = 0; ; attempt++) {
      try {
        return await write();
      } catch (err) {
        if (this.closed || attempt >= delays.length) throw err;
        this.o.log.warn(`push queue: writing ${what} failed; trying again`, { attempt: attempt + 1, err });
        await new Promise((r) => setTimeout(r, delays[attempt]));
      }
    }
  }

  async deadLetter(job: PushJob, error: string): Promise<void> {
    await this.o.deadLetters.add(job, error);
    await this.finish(job);
  }

  async consume(deliver: (job: PushJob) => Promise<void>): Promise<void> {
    if (this.consumer) throw invariantViolated("the push queue is consumed once");
    this.deliver = deliver;
    const consumer = groupConsumer(this.o.kafka, this.o.groupId, FETCH_WAIT_MS.sharedGroup);
    this.consumer = consumer;
    // A restart after a crash rejoins as the member it was: its partitions come back at once instead
    // of after the dead member's session.
    this.o.groupMembers?.track(consumer, this.o.groupId);
    consumer.on(consumer.events.GROUP_JOIN, (event) => {
      const partitions = event.payload.memberAssignment[this.o.topic] ?? [];
      // A consumer that stopped or restarted meanwhile cannot seek: its next join assigns again.
      this.assigned = this.assign(consumer, partitions).catch((err: unknown) =>
        this.o.log.warn("push queue: an assignment was overtaken (the consumer stopped or rejoined)", {
          err,
        }),
      );
    });
    await consumer.connect();
    await consumer.subscribe({ topic: this.o.topic, fromBeginning: true });
    await consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      eachBatch: (payload) => this.onBatch(payload),
    });
  }

  /** The partitions' offsets; retried, because a topic just created may have no leader yet. */
  private async offsets(): Promise<Array<{ partition: number; high: string; low: string }>> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.o.admin.fetchTopicOffsets(this.o.topic);
      } catch (err) {
        if (this.consumer === undefined) throw err; // closed meanwhile
        this.o.log.warn("push queue: reading the partitions' offsets failed; trying again", { attempt, err });
        await new Promise((r) => setTimeout(r, Math.min(5_000, 100 * 2 ** attempt)));
      }
    }
  }

  /** A new assignment: every owned partition is read again from its beginning. */
  private async assign(consumer: Consumer, partitions: number[]): Promise<void> {
    let offsets: Array<{ partition: number; high: string; low: string }>;
    try {
      offsets = await this.offsets();
    } catch {
      return; // closed: nothing to read
    }
    if (this.closed) return; // closed while the ends were read: the consumer can seek no more
    const owned = new Map<number, OwnedPartition>();
    for (const partition of partitions) {
      const o = offsets.find((x) => x.partition === partition);
      const end = BigInt(o?.high ?? "0");
      const start = BigInt(o?.low ?? "0");
      owned.set(partition, { end, caughtUp: end <= start, live: new Map() });
      consumer.seek({ topic: this.o.topic, partition, offset: String(start) });
    }
    this.owned = owned;
    this.parked = new Set();
    this.release();
  }

  private async onBatch({ batch, resolveOffset, heartbeat }: EachBatchPayload): Promise<void> {
    await this.assigned;
    const state = this.owned.get(batch.partition);
    for (const m of batch.messages) {
      resolveOffset(m.offset);
      if (!state) continue; // no longer ours
      const recordAt = m.key?.toString() ?? "";
      if (m.value === null) {
        state.live.delete(recordAt);
        this.remember(recordAt);
      } else {
        this.readJob(batch.partition, state, recordAt, JSON.parse(m.value.toString()) as PushJob);
      }
      if (!state.caughtUp && BigInt(m.offset) + 1n >= state.end) state.caughtUp = true;
    }
    this.release();
    await heartbeat();
  }

  /** A job's record read from an owned partition, under the key `recordAt`. */
  private readJob(partition: number, state: OwnedPartition, recordAt: string, job: PushJob): void {
    const key = recordKey(job);
    if (key !== recordAt) {
      // Written under another key than the job's own: a push process from before job keys wrote a
      // keyed job's retry record under its id. It is the job's newest state; the job goes on under
      // its own key, which finish() ends, and the stray record is ended here, else it would stay
      // live and be delivered again and again. (Met in the partition's history, behind its own
      // tombstone, it is ended once more: harmless, and gone once the topic is compacted.)
      state.live.delete(recordAt);
      this.end(partition, recordAt).catch((err: unknown) =>
        this.o.log.warn("push queue: could not end a job's record under a stray key", { key: recordAt, err }),
      );
    }
    if (!this.ended.has(key)) {
      state.live.set(key, job);
    } else if (state.caughtUp && job.attempts === 0) {
      // A job that ended, queued anew (a retry's record read late has attempts): ended again, so
      // that is the key's latest record. (One met in the partition's history, behind the key's
      // tombstone, is skipped the same way; reading history writes nothing.)
      this.o.log.debug("push queue: a job that ended was queued again; not delivered", { key });
      this.end(partition, key).catch((err: unknown) =>
        this.o.log.warn("push queue: could not end a repeated job", { key, err }),
      );
    }
  }

  /** Starts the live jobs of the partitions read up to their end, as long as there is room. */
  private release(): void {
    const deliver = this.deliver;
    if (!deliver) return;
    for (const state of this.owned.values()) {
      if (!state.caughtUp) continue;
      for (const [id, job] of state.live) {
        if (this.active.size >= ACTIVE_MAX) return;
        if (this.active.has(id) || this.parked.has(id)) continue;
        this.active.add(id);
        deliver(job)
          .catch((err: unknown) => this.o.log.error("push queue: a delivery failed", { jobId: id, err }))
          .finally(() => {
            this.active.delete(id);
            if (!this.ended.has(id)) this.park(id);
            this.release();
          });
      }
    }
  }

  /** A job whose delivery returned without ending it: offered again after a while, not at once. */
  private park(id: string): void {
    const parked = this.parked;
    parked.add(id);
    if (this.closed) return;
    const timer = setTimeout(() => {
      this.parkedTimers.delete(timer);
      // A new assignment re-read the partitions meanwhile: its own state decides.
      if (parked === this.parked && parked.delete(id)) this.release();
    }, this.o.parkedRetryMs ?? PARKED_RETRY_MS);
    timer.unref();
    this.parkedTimers.add(timer);
  }

  private remember(key: string): void {
    this.ended.delete(key); // re-inserted as the newest
    this.ended.add(key);
    if (this.ended.size > ENDED_REMEMBERED_MAX) dropOldest(this.ended);
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const timer of this.parkedTimers) clearTimeout(timer);
    this.parkedTimers.clear();
    if (!this.consumer) return;
    await this.consumer.disconnect();
    this.consumer = undefined;
    this.o.groupMembers?.forget(this.o.groupId);
  }
}

/** A job's record key: its PushJob.key, or its id (a replayed dead letter, a job from before keys). */
const recordKey = (job: PushJob): string => job.key ?? job.id;
