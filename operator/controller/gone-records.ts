/**
 * Writes "gateway X epoch E is gone" records (router.v1.SessionRecord, kind GATEWAY_GONE) to a
 * cluster's routing topic, so every router drops the gateway's sessions at once (docs/design.md §5).
 * One idempotent producer per distinct Kafka (bootstrap servers and credentials), kept while in use.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { Kafka, type KafkaConfig, logLevel, Partitioners, type Producer } from "kafkajs";
import { SessionRecordKind, SessionRecordSchema } from "../../gen/switchboard/router/v1/router_pb.js";
import { kafkajsLogCreator } from "../../internal/lib/kafkajs-log.js";
import { fixKafkajsProduceEncoding } from "../../internal/lib/kafkajs-produce-encoding.js";
import { fixKafkajsRequestQueue } from "../../internal/lib/kafkajs-request-queue.js";
import type { Logger } from "../../internal/lib/log.js";

export interface KafkaTarget {
  brokers: string[];
  topicPrefix: string;
  ssl?: KafkaConfig["ssl"];
  sasl?: KafkaConfig["sasl"];
}

/** The routing topic's name: `<prefix>routing` (router.v1.SessionRecord documents it). */
export const routingTopic = (prefix: string) => `${prefix}routing`;

export function goneRecord(gatewayId: string, epoch: number): { key: string; value: Buffer } {
  const value = toBinary(
    SessionRecordSchema,
    create(SessionRecordSchema, {
      kind: SessionRecordKind.GATEWAY_GONE,
      gatewayId,
      gatewayEpoch: BigInt(epoch),
    }),
  );
  return { key: `gone:${gatewayId}`, value: Buffer.from(value) };
}

export class GoneRecordPublisher {
  private readonly producers = new Map<string, Promise<Producer>>();

  constructor(
    private readonly clientId: string,
    private readonly log: Logger,
  ) {}

  async publish(target: KafkaTarget, gatewayId: string, epoch: number): Promise<void> {
    const connecting = this.producer(target);
    const producer = await connecting;
    try {
      await producer.send({
        topic: routingTopic(target.topicPrefix),
        acks: -1,
        messages: [goneRecord(gatewayId, epoch)],
      });
    } catch (err) {
      // A failed send retires the producer: kafkajs's idempotent producer rolls back the partition's
      // sequence number even when the broker wrote the record, and the broker would then take the
      // next record to that partition for a duplicate (acknowledged, never written). A new producer
      // gets a new producer id. The retried reconcile publishes through it.
      this.retire(target, connecting, producer);
      throw err;
    }
    this.log.info("gateway gone record written", {
      gatewayId,
      epoch,
      topic: routingTopic(target.topicPrefix),
    });
  }

  private retire(target: KafkaTarget, connecting: Promise<Producer>, producer: Producer): void {
    // Only if still cached: a publish that failed earlier may have replaced it already.
    const key = producerKey(target);
    if (this.producers.get(key) === connecting) this.producers.delete(key);
    producer.disconnect().catch((err: unknown) =>
      this.log.debug("disconnecting a retired Kafka producer failed", {
        error: err instanceof Error ? err.message : String(err),
      }),
    );
  }

  private producer(target: KafkaTarget): Promise<Producer> {
    const key = producerKey(target);
    let p = this.producers.get(key);
    if (!p) {
      fixKafkajsRequestQueue();
      fixKafkajsProduceEncoding();
      const kafka = new Kafka({
        clientId: this.clientId,
        brokers: target.brokers,
        logLevel: logLevel.ERROR,
        logCreator: kafkajsLogCreator(this.log),
        retry: { retries: 3, initialRetryTime: 200, maxRetryTime: 2_000 },
        connectionTimeout: 5_000,
        ...(target.ssl === undefined ? {} : { ssl: target.ssl }),
        ...(target.sasl === undefined ? {} : { sasl: target.sasl }),
      });
      const producer = kafka.producer({
        createPartitioner: Partitioners.DefaultPartitioner,
        idempotent: true,
        maxInFlightRequests: 1,
        allowAutoTopicCreation: false,
      });
      p = producer.connect().then(() => producer);
      // A failed connect is not cached: the next publish (a retried reconcile) tries again.
      p.catch(() => this.producers.delete(key));
      this.producers.set(key, p);
    }
    return p;
  }

  async close(): Promise<void> {
    const all = [...this.producers.values()];
    this.producers.clear();
    await Promise.all(all.map((p) => p.then((producer) => producer.disconnect()).catch(() => undefined)));
  }
}

/** Producers are shared by the targets with the same brokers and credentials. */
function producerKey(target: KafkaTarget): string {
  return JSON.stringify([target.brokers, target.sasl ?? null, target.ssl ?? null]);
}
