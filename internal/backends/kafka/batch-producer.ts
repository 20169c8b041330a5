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
 */
import type { Message, Producer } from "kafkajs";
import type { Logger } from "../../lib/log.js";

interface Pending {
  topic: string;
  message: Message;
  /** Fails with an earlier record of its key that failed (see the header). */
  ordered: boolean;
  bytes: number;
  resolve: () => void;
  reject: (err: unknown) => void;
}

export const PRODUCE_BATCH_RECORDS_MAX = 2_000;
/** Bytes of records (values, keys, headers, a fixed cost each) in one produce request at most. */
export const PRODUCE_REQUEST_BYTES_MAX = 900 * 1024;
/** A record's framing in a record batch (lengths, attributes, deltas), about. */
const RECORD_OVERHEAD_BYTES = 24;

export interface BatchProducerOptions {
  log: Logger;
  /** Records per request at most (default PRODUCE_BATCH_RECORDS_MAX). */
  recordsMax?: number;
  /** Bytes per request at most (default PRODUCE_REQUEST_BYTES_MAX); a larger record goes alone. */
  requestBytesMax?: number;
}

export class BatchProducer {
  private queue: Pending[] = [];
  /** The ordered keys of requests that failed in this turn, with their errors (see the header). */
  private failedKeys: Map<string, unknown> | undefined;
  private flushing = false;
  private producer: Producer;
  /** The producer failed a request: replace it before the next one. */
  private retired = false;
  private isConnected = false;
  private closed = false;
  private readonly recordsMax: number;
  private readonly requestBytesMax: number;
  /** Produce requests sent and records in them (what the benchmarks divide by messages). */
  readonly stats = { requests: 0, records: 0, producersReplaced: 0 };

  constructor(
    private readonly newProducer: () => Producer,
    private readonly o: BatchProducerOptions,
  ) {
    this.recordsMax = o.recordsMax ?? PRODUCE_BATCH_RECORDS_MAX;
    this.requestBytesMax = o.requestBytesMax ?? PRODUCE_REQUEST_BYTES_MAX;
    this.producer = this.watched(newProducer());
  }

  /** Whether the current producer is connected to the cluster. */
  get connected(): boolean {
    return this.isConnected;
  }

  async connect(): Promise<void> {
    await this.producer.connect();
    this.isConnected = true;
  }

  send(topic: string, message: Message, options: { ordered?: boolean } = {}): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.closed) {
        reject(new Error("kafka producer closed"));
        return;
      }
      const ordered = options.ordered === true;
      if (ordered && this.failedKeys) {
        const key = orderKey(topic, message);
        if (key !== undefined && this.failedKeys.has(key)) {
          reject(this.failedKeys.get(key));
          return;
        }
      }
      this.queue.push({ topic, message, ordered, bytes: recordBytes(message), resolve, reject });
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

  private watched(producer: Producer): Producer {
    producer.on(producer.events.CONNECT, () => {
      if (producer === this.producer) this.isConnected = true;
    });
    producer.on(producer.events.DISCONNECT, () => {
      if (producer === this.producer) this.isConnected = false;
    });
    return producer;
  }

  /** The next request's records: in order, within both limits, at least one. */
  private nextRequest(): Pending[] {
    let bytes = 0;
    let n = 0;
    while (n < this.queue.length && n < this.recordsMax) {
      const next = this.queue[n]!.bytes;
      if (n > 0 && bytes + next > this.requestBytesMax) break;
      bytes += next;
      n++;
    }
    return this.queue.splice(0, n);
  }

  /** A new producer in place of one that failed a request (see the header). */
  private async replace(): Promise<void> {
    const old = this.producer;
    this.producer = this.watched(this.newProducer());
    this.isConnected = false;
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
    for (const p of failed) {
      const key = p.ordered ? orderKey(p.topic, p.message) : undefined;
      if (key !== undefined) keys.add(key);
    }
    if (keys.size === 0) return;
    const kept: Pending[] = [];
    for (const p of this.queue) {
      const key = p.ordered ? orderKey(p.topic, p.message) : undefined;
      if (key !== undefined && keys.has(key)) p.reject(err);
      else kept.push(p);
    }
    this.queue = kept;
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
