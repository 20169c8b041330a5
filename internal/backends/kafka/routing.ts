/**
 * Session routing events on a compacted topic: the latest record per session (and per
 * "gateway gone" key) is the table. Every subscriber reads the whole topic from the beginning with
 * a group of its own, and `subscribe` resolves once it has caught up with what was there.
 *
 * A record this process publishes also reaches this process's live subscribers as soon as it is
 * written, not only when the topic returns it: a router learns of its own gateway's new session at
 * once, where the round trip through Kafka could take long enough under load for an event relayed to
 * a just-connected client to miss it. Each subscription still hears every record once: otherwise a
 * session's "up" and "down", both heard early, could come back from the topic as "up" then "down",
 * showing a closed session as up in between. So a publish first tells each live subscription what it
 * is about to write; the topic's copy of such a record is then skipped if the subscription already
 * heard it, or handed out (and the early copy not) if it overtook the produce's answer.
 */
import { randomUUID } from "node:crypto";
import type { Admin, Consumer, Kafka } from "kafkajs";
import type { Logger } from "../../lib/log.js";
import type { Closeable, RoutingEvents, SessionEvent } from "../types.js";
import type { BatchProducer } from "./batch-producer.js";
import { decodeSessionEvent, encodeSessionEvent } from "./codec.js";
import { FETCH_WAIT_MS } from "./consumers.js";

/** Records this process is publishing or has published that one subscription awaits from the topic. */
export const EXPECTED_MAX = 100_000;

/** A record of this process's, as one live subscription knows it. */
interface Expected {
  readonly value: Buffer;
  /** "writing": not yet written; "heard": handed out early; "arrived": the topic's copy came first. */
  state: "writing" | "heard" | "arrived";
}

/** One caught-up subscription of this process. */
interface LiveSubscription {
  readonly handler: (e: SessionEvent) => void;
  /** Per record key, this process's records the topic has not yet returned, oldest first. */
  readonly expected: Map<string, Expected[]>;
  expectedCount: number;
}

export class KafkaRouting implements RoutingEvents {
  private readonly consumers = new Set<Consumer>();
  /** Subscriptions closed whose consumers are still leaving (each waits for its fetch in flight). */
  private readonly leaving = new Set<Promise<void>>();
  /** Handlers of this process's subscriptions that have caught up: they hear its own records at once. */
  private readonly live = new Set<LiveSubscription>();

  constructor(
    private readonly kafka: Kafka,
    private readonly admin: Admin,
    private readonly producer: BatchProducer,
    private readonly topic: string,
    private readonly groupPrefix: string,
    private readonly log: Logger,
  ) {}

  async publish(event: SessionEvent): Promise<void> {
    const key = event.kind === "gateway-gone" ? `gone:${event.gatewayId}` : event.sessionId;
    const value = encodeSessionEvent(event);
    const expecting = [...this.live].map((sub) => ({ sub, record: expect(sub, key, value) }));
    try {
      // Unordered, as before tombstones: a failed "up" must not make its session's "down" fail too
      // (an ordered key is refused until the failed request's turn ends), or a written "up" would stay.
      if (event.kind !== "down") await this.producer.send(this.topic, { key, value });
      // Then a tombstone, so that compaction removes the session's records: session ids are never
      // reused, so a "down" record kept as the key's latest would stay for good, and every router
      // replays the topic at start. (The "down" record itself is for routers of a version before
      // tombstones, which skip records without a value.) Ordered: the tombstone comes after it.
      else
        await Promise.all([
          this.producer.send(this.topic, { key, value }, { ordered: true }),
          this.producer.send(this.topic, { key, value: null }, { ordered: true }),
        ]);
    } catch (err) {
      // Maybe written after all: then the topic's copy is handed out like another process's.
      for (const { sub, record } of expecting) forget(sub, key, record);
      throw err;
    }
    for (const { sub, record } of expecting) {
      if (record.state === "arrived") {
        forget(sub, key, record);
        continue;
      }
      record.state = "heard";
      // The record is written: a subscriber that fails on it must not fail the publish.
      try {
        sub.handler({ ...event, lateByMs: 0 });
      } catch (err) {
        this.log.warn("routing: a subscriber failed on this process's own record", { err, kind: event.kind });
      }
    }
  }

  async subscribe(handler: (e: SessionEvent) => void): Promise<Closeable> {
    const groupId = `${this.groupPrefix}routing-${randomUUID()}`;
    const consumer = this.kafka.consumer({
      groupId,
      sessionTimeout: 10_000,
      heartbeatInterval: 1_000,
      maxWaitTimeInMs: FETCH_WAIT_MS.ownGroup,
    });
    this.consumers.add(consumer);
    const highs = new Map((await this.topicOffsets()).map((p) => [p.partition, Number(p.high)]));
    const remaining = new Set([...highs].filter(([, high]) => high > 0).map(([p]) => p));
    // Until caught up, fold the history into the table; then hand out the table as "up" events and
    // follow live changes (the contract: a replay is the current table, not its history).
    const table = new Map<string, SessionEvent>();
    let live = false;
    const sub: LiveSubscription = { handler, expected: new Map(), expectedCount: 0 };
    let caughtUp!: () => void;
    const ready = new Promise<void>((r) => {
      caughtUp = () => {
        if (live) return;
        live = true;
        for (const e of table.values()) handler(e);
        table.clear();
        this.live.add(sub);
        r();
      };
    });
    let closed = false;
    const deliver = (e: SessionEvent, publishedAtMs: number) => {
      if (closed) return;
      if (live) handler({ ...e, lateByMs: Math.max(0, Date.now() - publishedAtMs) });
      else applyToTable(table, e);
    };
    if (remaining.size === 0) caughtUp();
    await consumer.connect();
    await consumer.subscribe({ topic: this.topic, fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ partition, message }) => {
        if (message.value && message.key && heardEarly(sub, message.key.toString(), message.value)) {
          // This process's own record, handed out when its publish was written.
        } else if (message.value) {
          try {
            deliver(decodeSessionEvent(message.value), Number(message.timestamp));
          } catch (err) {
            this.log.warn("routing: bad event skipped", { err, partition, offset: message.offset });
          }
        } else if (message.key && !message.key.toString().startsWith("gone:")) {
          // A session's tombstone: it is down (its "down" record may have been compacted away).
          const sessionId = message.key.toString();
          deliver(
            { kind: "down", sessionId, userId: "", gatewayId: "", gatewayEpoch: 0 },
            Number(message.timestamp),
          );
        }
        if (
          Number(message.offset) + 1 >= (highs.get(partition) ?? 0) &&
          remaining.delete(partition) &&
          remaining.size === 0
        )
          caughtUp();
      },
    });
    await ready;
    return {
      // Nothing reaches the handler once closed; the consumer leaves in the background (its stop
      // waits up to FETCH_WAIT_MS for the fetch in flight) and this store's close waits for it.
      close: async () => {
        if (closed) return;
        closed = true;
        this.live.delete(sub);
        this.consumers.delete(consumer);
        const left = this.leave(consumer, groupId).finally(() => this.leaving.delete(left));
        this.leaving.add(left);
      },
    };
  }

  /** Stops a subscription's consumer and deletes its group (the group is this subscription's alone). */
  private async leave(consumer: Consumer, groupId: string): Promise<void> {
    try {
      await consumer.disconnect();
    } catch (err) {
      this.log.warn("routing: consumer did not disconnect cleanly", { err, groupId });
    }
    await this.admin.deleteGroups([groupId]).catch(() => undefined);
  }

  /** High watermarks; retried while a just-created topic's leader is still being elected. */
  private async topicOffsets(): Promise<Array<{ partition: number; high: string }>> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.admin.fetchTopicOffsets(this.topic);
      } catch (err) {
        const retriable = (err as { retriable?: boolean }).retriable === true;
        if (!retriable || attempt >= 20) throw err;
        await new Promise((r) => setTimeout(r, 100 * Math.min(attempt, 10)));
      }
    }
  }

  async close(): Promise<void> {
    this.live.clear();
    await Promise.all([...this.consumers].map((c) => c.disconnect()));
    this.consumers.clear();
    await Promise.all(this.leaving);
  }
}

function applyToTable(table: Map<string, SessionEvent>, e: SessionEvent): void {
  if (e.kind === "up") table.set(e.sessionId, e);
  else if (e.kind === "down") table.delete(e.sessionId);
  else {
    for (const [id, s] of table)
      if (s.gatewayId === e.gatewayId && s.gatewayEpoch <= e.gatewayEpoch) table.delete(id);
  }
}

/** Tells a live subscription that this process is writing a record. */
function expect(sub: LiveSubscription, key: string, value: Buffer): Expected {
  if (sub.expectedCount >= EXPECTED_MAX) {
    // The topic has not returned this many of our own records (a stalled consumer): forget the
    // oldest key's; its copy is then handed out a second time, which the table absorbs.
    const [oldestKey, records] = sub.expected.entries().next().value as [string, Expected[]];
    sub.expected.delete(oldestKey);
    sub.expectedCount -= records.length;
  }
  const record: Expected = { value, state: "writing" };
  const records = sub.expected.get(key);
  if (records) records.push(record);
  else sub.expected.set(key, [record]);
  sub.expectedCount++;
  return record;
}

function forget(sub: LiveSubscription, key: string, record: Expected): void {
  const records = sub.expected.get(key);
  const i = records?.indexOf(record) ?? -1;
  if (!records || i < 0) return;
  records.splice(i, 1);
  if (records.length === 0) sub.expected.delete(key);
  sub.expectedCount--;
}

/**
 * For a record the topic returned: true if the subscription already heard it early (skip it). A record
 * of ours still being written is marked arrived, so its publish does not hand it out again.
 */
function heardEarly(sub: LiveSubscription, key: string, value: Buffer): boolean {
  const record = sub.expected.get(key)?.find((r) => r.state !== "arrived" && r.value.equals(value));
  if (!record) return false;
  if (record.state === "writing") {
    record.state = "arrived";
    return false;
  }
  forget(sub, key, record);
  return true;
}
