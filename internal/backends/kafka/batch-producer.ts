/**
 * kafkajs sends one request per `send()` and keeps order only with one request in flight, so
 * records queued while a request is in flight go out together in the next one: group commit for
 * Kafka, the same idea as the embedded backend's. Each record's promise resolves when Kafka
 * acknowledged it with acks=all.
 *
 * A failed request retires the kafkajs producer: its next request goes out from a new one. kafkajs's
 * idempotent producer, when a request fails for good, rolls back the sequence numbers of every
 * partition in it, also of those the broker did write, and keeps its producer id; the next batch to
 * such a partition then repeats a written batch's sequence number, and the broker acknowledges it
 * as a duplicate without writing it (or refuses it as out of order). A new producer gets a new
 * producer id, whose sequences start afresh. What the failed request did write stays written: its
 * records' senders were told it failed and send again, which the consumers' dedupe absorbs.
 *
 * A request also stays within `requestBytesMax`, below the broker's default batch limit
 * (`message.max.bytes`, 1 MiB): records that together exceed it would fail together otherwise.
 *
 * Records sent `ordered` keep their order per key (per partition, for records that name theirs) even
 * when a request fails: the ordered records of its keys queued behind it fail with it, and so do those
 * sent until the end of that turn, rather than go out in the next request ahead of the failed ones'
 * resends. The drafts of messages are (a sender resends a refused message before the ones it sent
 * after it: gateway/send-gaps.ts), and so is what a sequencer emits (its batch fails and is re-read in
 * order: otherwise a split batch whose first request failed would put a later message in a user's
 * inbox partition ahead of the earlier one's resend). Other records (routing events, membership
 * announcements from gateways) are not failed for another record's failure.
 *
 * The queue is bounded (ADR 0003): at most `queueRecordsMax` records and `queueBytesMax` bytes wait
 * for a request. With Kafka slow or away the queue stops draining; a send past either bound is refused
 * at once (ProducerQueueFull: an append's LOG_UNAVAILABLE, which its client resends later). A record
 * sent with a `withdrawal` is withdrawn when its sender calls withdraw() while it still waits (not yet
 * in a request): its send rejects (RecordWithdrawn) and it is never produced. An append withdraws its draft
 * when it times out, so a stalled Kafka neither keeps every timed-out draft's body in memory nor
 * receives a burst of stale drafts once it is back. A withdrawn ordered record fails the ordered
 * records of its key queued behind it (when they reach the front), as a failed request does: they
 * must not overtake its resend; and each of those fails the ones queued behind it in turn, up to the
 * newest (a resend queued after the withdrawal must not overtake theirs either).
 */
import type { Message, Producer } from "kafkajs";
import type { Logger } from "../../lib/log.js";

interface Pending {
  topic: string;
  message: Message;
  /** Fails with an earlier record of its key that failed (see the header). */
  ordered: boolean;
  /** Its order key, when ordered (orderKey). */
  key: string | undefined;
  bytes: number;
  /** Its place among the records sent to this producer (rising). */
  n: number;
  /** Waiting in the queue: not yet taken into a request, withdrawn or failed. */
  queued: boolean;
  resolve: () => void;
  reject: (err: unknown) => void;
  /** Its sender's handle, until the record leaves the queue. */
  withdrawal: Withdrawal | undefined;
}

/**
 * A sender's hold on a record it queued: withdraw() takes the record out while it still waits (its
 * send rejects with RecordWithdrawn); once the record is in a request, or before it is sent, see
 * send(). A plain object rather than an AbortSignal: an append makes one, and an AbortController with
 * its listener costs about 5 µs of CPU.
 */
export class Withdrawal {
  private withdrawn = false;
  /** Set by the producer while the record waits. */
  private take: (() => void) | undefined;

  get requested(): boolean {
    return this.withdrawn;
  }

  withdraw(): void {
    this.withdrawn = true;
    const take = this.take;
    this.take = undefined;
    take?.();
  }

  /** The producer's side: what withdraw() does while the record waits (undefined: nothing more). */
  holds(take: (() => void) | undefined): void {
    this.take = take;
  }
}

export const PRODUCE_BATCH_RECORDS_MAX = 2_000;
/** Bytes of records (values, keys, headers, a fixed cost each) in one produce request at most. */
export const PRODUCE_REQUEST_BYTES_MAX = 900 * 1024;
/** Records waiting for a request at most (the queue's bound; past it a send is refused). */
export const PRODUCE_QUEUE_RECORDS_MAX = 20_000;
/** Bytes of records waiting for a request at most. */
export const PRODUCE_QUEUE_BYTES_MAX = 32 * 1024 * 1024;
/** A record's framing in a record batch (lengths, attributes, deltas), about. */
const RECORD_OVERHEAD_BYTES = 24;
/** What stays of a withdrawn record in the queue until the queue is compacted or drains past it. */
const WITHDRAWN: Message = { value: null };

/** A send refused because the queue is at its bound. */
export class ProducerQueueFull extends Error {
  constructor(records: number, bytes: number) {
    super(`the Kafka producer's queue is full (${records} records, ${bytes} bytes waiting); retry`);
    this.name = "ProducerQueueFull";
  }
}

/** A queued record withdrawn by its sender, or failed behind one of its key that was. */
export class RecordWithdrawn extends Error {
  constructor(
    /** Failed for an earlier record of its key that was withdrawn (or failed so), not withdrawn itself. */
    readonly behind: boolean,
  ) {
    super(
      behind
        ? "an earlier record of this key was withdrawn before it was sent; this one was not sent either"
        : "withdrawn before it was sent",
    );
    this.name = "RecordWithdrawn";
  }
}

export interface BatchProducerOptions {
  log: Logger;
  /** Records per request at most (default PRODUCE_BATCH_RECORDS_MAX). */
  recordsMax?: number;
  /** Bytes per request at most (default PRODUCE_REQUEST_BYTES_MAX); a larger record goes alone. */
  requestBytesMax?: number;
  /** Records waiting for a request at most (default PRODUCE_QUEUE_RECORDS_MAX). */
  queueRecordsMax?: number;
  /** Bytes of records waiting for a request at most (default PRODUCE_QUEUE_BYTES_MAX). */
  queueBytesMax?: number;
}

export class BatchProducer {
  private queue: Pending[] = [];
  /** Records and bytes waiting (withdrawn ones no longer count), and withdrawn ones still in `queue`. */
  private queued = { records: 0, bytes: 0, withdrawn: 0 };
  private sent = 0;
  /**
   * Per order key, the ranges of places (`from` exclusive, `to` inclusive) of the records queued
   * behind a withdrawn one of that key when it was withdrawn: they fail when they reach the front.
   */
  private withdrawnBehind = new Map<string, Array<{ from: number; to: number }>>();
  /** The ordered keys of requests that failed in this turn, with their errors (see the header). */
  private failedKeys: Map<string, unknown> | undefined;
  private flushing = false;
  private producer: Producer;
  /** The producer failed a request: replace it before the next one. */
  private retired = false;
  private closed = false;
  private readonly recordsMax: number;
  private readonly requestBytesMax: number;
  private readonly queueRecordsMax: number;
  private readonly queueBytesMax: number;
  /**
   * Produce requests sent and records in them (what the benchmarks divide by messages); sends refused
   * at the queue's bound, and records withdrawn before they were sent.
   */
  readonly stats = { requests: 0, records: 0, producersReplaced: 0, refused: 0, withdrawn: 0 };

  constructor(
    private readonly newProducer: () => Producer,
    private readonly o: BatchProducerOptions,
  ) {
    this.recordsMax = o.recordsMax ?? PRODUCE_BATCH_RECORDS_MAX;
    this.requestBytesMax = o.requestBytesMax ?? PRODUCE_REQUEST_BYTES_MAX;
    this.queueRecordsMax = o.queueRecordsMax ?? PRODUCE_QUEUE_RECORDS_MAX;
    this.queueBytesMax = o.queueBytesMax ?? PRODUCE_QUEUE_BYTES_MAX;
    this.producer = newProducer();
  }

  /** Records waiting for a request (not withdrawn), and their bytes. */
  get waiting(): { records: number; bytes: number } {
    return { records: this.queued.records, bytes: this.queued.bytes };
  }

  async connect(): Promise<void> {
    await this.producer.connect();
  }

  /**
   * Queues a record for the next request; resolves once Kafka acknowledged it. Refused at once past
   * the queue's bound (ProducerQueueFull). `withdrawal`: its withdraw() takes the record out if it
   * still waits (RecordWithdrawn; already called: refused at once); once in a request it is produced
   * or fails with the request.
   */
  send(
    topic: string,
    message: Message,
    options: { ordered?: boolean; withdrawal?: Withdrawal } = {},
  ): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.closed) {
        reject(new Error("kafka producer closed"));
        return;
      }
      const { withdrawal } = options;
      if (withdrawal?.requested) {
        reject(new RecordWithdrawn(false));
        return;
      }
      const ordered = options.ordered === true;
      const key = ordered ? orderKey(topic, message) : undefined;
      if (key !== undefined && this.failedKeys?.has(key)) {
        reject(this.failedKeys.get(key));
        return;
      }
      const bytes = recordBytes(message);
      if (
        this.queued.records + 1 > this.queueRecordsMax ||
        (this.queued.records > 0 && this.queued.bytes + bytes > this.queueBytesMax)
      ) {
        this.stats.refused++;
        reject(new ProducerQueueFull(this.queued.records, this.queued.bytes));
        return;
      }
      const p: Pending = {
        topic,
        message,
        ordered,
        key,
        bytes,
        n: ++this.sent,
        queued: true,
        resolve,
        reject,
        withdrawal,
      };
      withdrawal?.holds(() => this.withdraw(p));
      this.queue.push(p);
      this.queued.records++;
      this.queued.bytes += bytes;
      if (this.flushing) return;
      // Start at the end of this turn, not at the first record: whatever else this turn sends (a
      // polled batch's records, several partitions' batches) goes in the same request.
      this.flushing = true;
      setImmediate(() => void this.flush());
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.producer.disconnect();
  }

  /** Takes a record out of the waiting ones (it is sent, failed or withdrawn). */
  private dequeued(p: Pending): void {
    p.queued = false;
    // The sender's handle no longer reaches the record (nor keeps its body alive).
    p.withdrawal?.holds(undefined);
    p.withdrawal = undefined;
    this.queued.records--;
    this.queued.bytes -= p.bytes;
  }

  /** Withdraws a record that still waits (see send); the ordered ones of its key behind it fail. */
  private withdraw(p: Pending): void {
    if (!p.queued) return;
    this.dequeued(p);
    this.queued.withdrawn++;
    this.stats.withdrawn++;
    if (p.key !== undefined && this.sent > p.n) {
      const ranges = this.withdrawnBehind.get(p.key) ?? [];
      ranges.push({ from: p.n, to: this.sent });
      this.withdrawnBehind.set(p.key, ranges);
    }
    p.message = WITHDRAWN; // its body is not kept until the queue drains
    p.reject(new RecordWithdrawn(false));
    // Withdrawn records are dropped when the queue drains past them, or here when they are most of it.
    if (this.queued.withdrawn > 1_000 && this.queued.withdrawn > this.queue.length / 2) {
      this.queue = this.queue.filter((q) => q.queued);
      this.queued.withdrawn = 0;
      this.forgetWithdrawnBehind();
    }
  }

  /**
   * Whether an ordered record was queued behind a withdrawn one of its key (it fails). Then so do
   * the records of its key queued behind it since: its range reaches to the newest record. Without
   * that, a record sent after the withdrawal (a later message's resend) could go out ahead of the
   * resends of those failing here, which were queued before it but are told only now.
   */
  private behindWithdrawn(p: Pending): boolean {
    if (p.key === undefined) return false;
    const range = this.withdrawnBehind.get(p.key)?.find((r) => p.n > r.from && p.n <= r.to);
    if (range === undefined) return false;
    range.to = this.sent;
    return true;
  }

  /** Drops the ranges no record waiting can be in (all of them below the oldest one waiting). */
  private forgetWithdrawnBehind(): void {
    if (this.withdrawnBehind.size === 0) return;
    const oldest = this.queue.find((q) => q.queued)?.n ?? Number.POSITIVE_INFINITY;
    for (const [key, ranges] of this.withdrawnBehind) {
      const left = ranges.filter((r) => r.to >= oldest);
      if (left.length === 0) this.withdrawnBehind.delete(key);
      else if (left.length < ranges.length) this.withdrawnBehind.set(key, left);
    }
  }

  /** The next request's records: in order, within both limits, at least one (none if all withdrawn). */
  private nextRequest(): Pending[] {
    const out: Pending[] = [];
    let bytes = 0;
    let i = 0;
    for (; i < this.queue.length && out.length < this.recordsMax; i++) {
      const p = this.queue[i]!;
      if (!p.queued) {
        this.queued.withdrawn--;
        continue;
      }
      if (this.behindWithdrawn(p)) {
        this.dequeued(p);
        p.reject(new RecordWithdrawn(true));
        continue;
      }
      if (out.length > 0 && bytes + p.bytes > this.requestBytesMax) break;
      this.dequeued(p);
      bytes += p.bytes;
      out.push(p);
    }
    this.queue.splice(0, i);
    this.forgetWithdrawnBehind();
    return out;
  }

  /** A new producer in place of one that failed a request (see the header). */
  private async replace(): Promise<void> {
    const old = this.producer;
    this.producer = this.newProducer();
    this.stats.producersReplaced++;
    await old.disconnect().catch((err: unknown) =>
      this.o.log.debug("kafka: disconnecting a retired producer failed", {
        error: err instanceof Error ? err.message : String(err),
      }),
    );
    await this.connect();
    this.retired = false;
    // Closed meanwhile: close() disconnected this producer before it was connected.
    if (this.closed) await this.producer.disconnect();
  }

  private async flush(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const batch = this.nextRequest();
        if (batch.length === 0) continue; // everything it met was withdrawn
        try {
          if (this.closed) throw new Error("kafka producer closed");
          if (this.retired) await this.replace();
          if (this.closed) throw new Error("kafka producer closed");
          const byTopic = new Map<string, Message[]>();
          for (const p of batch) {
            let list = byTopic.get(p.topic);
            if (!list) {
              list = [];
              byTopic.set(p.topic, list);
            }
            list.push(p.message);
          }
          this.stats.requests++;
          this.stats.records += batch.length;
          await this.sendBatch(byTopic);
          for (const p of batch) p.resolve();
        } catch (err) {
          for (const p of batch) p.reject(err);
          this.failBehind(batch, err);
        }
      }
    } finally {
      this.flushing = false;
    }
  }

  /** Fails the ordered records queued (or sent this turn) with a key of `failed`'s ordered ones. */
  private failBehind(failed: Pending[], err: unknown): void {
    const keys = new Set<string>();
    for (const p of failed) if (p.key !== undefined) keys.add(p.key);
    if (keys.size === 0) return;
    const kept: Pending[] = [];
    for (const p of this.queue) {
      if (!p.queued) continue; // withdrawn
      if (p.key !== undefined && keys.has(p.key)) {
        this.dequeued(p);
        p.reject(err);
      } else kept.push(p);
    }
    this.queue = kept;
    this.queued.withdrawn = 0;
    if (!this.failedKeys) {
      const failedKeys = new Map<string, unknown>();
      this.failedKeys = failedKeys;
      setImmediate(() => {
        if (this.failedKeys === failedKeys) this.failedKeys = undefined;
      });
    }
    for (const key of keys) if (!this.failedKeys.has(key)) this.failedKeys.set(key, err);
  }

  private async sendBatch(byTopic: Map<string, Message[]>): Promise<void> {
    try {
      await this.producer.sendBatch({
        acks: -1,
        topicMessages: [...byTopic].map(([topic, messages]) => ({ topic, messages })),
      });
    } catch (err) {
      this.retired = true;
      this.o.log.warn("kafka: a produce request failed; the next one goes out from a new producer", {
        error: err instanceof Error ? err.message : String(err),
      });
      throw err;
    }
  }
}

/**
 * What orders a record: its topic and partition when it names one (its consumers read it in partition
 * order, whatever its key), else its topic and key (undefined without either).
 */
function orderKey(topic: string, m: Message): string | undefined {
  if (m.partition !== undefined && m.partition !== null) return `${topic}\u0000#${m.partition}`;
  if (m.key === null || m.key === undefined) return undefined;
  return `${topic}\u0000${typeof m.key === "string" ? m.key : m.key.toString("latin1")}`;
}

/** A record's size in a produce request, about: what counts against the broker's batch limit. */
export function recordBytes(m: Message): number {
  let bytes = RECORD_OVERHEAD_BYTES + sizeOf(m.key) + sizeOf(m.value);
  if (m.headers)
    for (const [name, value] of Object.entries(m.headers)) {
      bytes += Buffer.byteLength(name) + 2;
      if (Array.isArray(value)) for (const v of value) bytes += sizeOf(v) + 2;
      else bytes += sizeOf(value);
    }
  return bytes;
}

function sizeOf(v: Buffer | string | null | undefined): number {
  if (v === null || v === undefined) return 0;
  return typeof v === "string" ? Buffer.byteLength(v) : v.length;
}
