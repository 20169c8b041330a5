/**
 * kafkajs sends one request per `send()` and keeps order only with one request in flight, so
 * records queued while a request is in flight go out together in the next one: group commit for
 * Kafka, the same idea as the embedded backend's. Each record's promise resolves when Kafka
 * acknowledged it with acks=all.
 */
import type { Message, Producer } from "kafkajs";

interface Pending {
  topic: string;
  message: Message;
  resolve: () => void;
  reject: (err: unknown) => void;
}

export const PRODUCE_BATCH_RECORDS_MAX = 2_000;

export class BatchProducer {
  private queue: Pending[] = [];
  private flushing = false;
  /** Produce requests sent and records in them (what the benchmarks divide by messages). */
  readonly stats = { requests: 0, records: 0 };

  constructor(private readonly producer: Producer) {}

  send(topic: string, message: Message): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ topic, message, resolve, reject });
      if (this.flushing) return;
      // Start at the end of this turn, not at the first record: whatever else this turn sends (a
      // polled batch's records, several partitions' batches) goes in the same request.
      this.flushing = true;
      setImmediate(() => void this.flush());
    });
  }

  private async flush(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, PRODUCE_BATCH_RECORDS_MAX);
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
        try {
          await this.producer.sendBatch({
            acks: -1,
            topicMessages: [...byTopic].map(([topic, messages]) => ({ topic, messages })),
          });
          for (const p of batch) p.resolve();
        } catch (err) {
          for (const p of batch) p.reject(err);
        }
      }
    } finally {
      this.flushing = false;
    }
  }
}
