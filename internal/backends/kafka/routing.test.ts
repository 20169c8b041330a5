/**
 * KafkaRouting hands each of this process's records to its live subscribers once, whichever comes
 * first: the produce's answer or the topic's copy. The real broker can return either first; these
 * tests set the order with a producer and a consumer they drive.
 */
import type { Admin, EachMessagePayload, Kafka } from "kafkajs";
import { describe, expect, it } from "vitest";
import { createLogger } from "../../lib/log.js";
import type { SessionEvent } from "../types.js";
import type { BatchProducer } from "./batch-producer.js";
import { KafkaRouting } from "./routing.js";

interface Written {
  key: string;
  value: Buffer | null;
  resolve: () => void;
  reject: (err: Error) => void;
}

function harness() {
  const written: Written[] = [];
  let eachMessage: ((p: EachMessagePayload) => Promise<void>) | undefined;
  let offset = 0;
  const kafka = {
    consumer: () => ({
      connect: async () => undefined,
      subscribe: async () => undefined,
      run: async (o: { eachMessage: (p: EachMessagePayload) => Promise<void> }) => {
        eachMessage = o.eachMessage;
      },
      disconnect: async () => undefined,
    }),
  } as unknown as Kafka;
  // An empty topic: a subscription is caught up at once.
  const admin = {
    fetchTopicOffsets: async () => [{ partition: 0, high: "0" }],
    deleteGroups: async () => undefined,
  } as unknown as Admin;
  const producer = {
    send: (_topic: string, m: { key: string; value: Buffer | null }) =>
      new Promise<void>((resolve, reject) => written.push({ key: m.key, value: m.value, resolve, reject })),
  } as unknown as BatchProducer;
  const routing = new KafkaRouting(
    kafka,
    admin,
    producer,
    "routing",
    "test-",
    createLogger({ test: "kafka-routing" }),
  );
  /** The topic returns a written record to the subscription's consumer. */
  const fromTopic = async (w: Written) => {
    await eachMessage!({
      topic: "routing",
      partition: 0,
      message: {
        key: Buffer.from(w.key),
        value: w.value,
        offset: String(offset++),
        timestamp: String(Date.now()),
        attributes: 0,
        headers: {},
      },
      heartbeat: async () => undefined,
      pause: () => () => undefined,
    } as EachMessagePayload);
  };
  return { routing, written, fromTopic };
}

/** The harness with one caught-up subscription, and what it heard. */
async function subscribed() {
  const h = harness();
  const events: SessionEvent[] = [];
  await h.routing.subscribe((e) => events.push(e));
  return { ...h, events };
}

const up: SessionEvent = { kind: "up", userId: "u1", sessionId: "s1", gatewayId: "gw1", gatewayEpoch: 1 };
const down: SessionEvent = { ...up, kind: "down" };
const heard = (events: SessionEvent[]) => events.map(({ lateByMs: _, ...e }) => e);
const nextTurn = () => new Promise((r) => setImmediate(r));

describe("KafkaRouting: this process's own records", () => {
  it("heard when written, and the topic's copy is not handed out again", async () => {
    const { routing, written, fromTopic, events } = await subscribed();
    const publishing = routing.publish(up);
    await nextTurn();
    expect(events).toEqual([]);
    written[0]!.resolve();
    await publishing;
    expect(heard(events)).toEqual([up]);
    await fromTopic(written[0]!);
    expect(heard(events)).toEqual([up]);
  });

  it("an 'up' and 'down' heard early do not come back from the topic (no closed session shown up)", async () => {
    const { routing, written, fromTopic, events } = await subscribed();
    const publishingUp = routing.publish(up);
    await nextTurn();
    written[0]!.resolve();
    await publishingUp;
    const publishingDown = routing.publish(down);
    await nextTurn();
    for (const w of written.slice(1)) w.resolve();
    await publishingDown;
    for (const w of written) await fromTopic(w);
    // The tombstone (a value-less "down" with only the session id) is the one record heard from the topic.
    expect(heard(events)).toEqual([
      up,
      down,
      { kind: "down", sessionId: "s1", userId: "", gatewayId: "", gatewayEpoch: 0 },
    ]);
  });

  it("a topic copy that overtakes the produce's answer is handed out, and the answer then hands out nothing", async () => {
    const { routing, written, fromTopic, events } = await subscribed();
    const publishing = routing.publish(up);
    await nextTurn();
    await fromTopic(written[0]!);
    expect(heard(events)).toEqual([up]);
    written[0]!.resolve();
    await publishing;
    expect(heard(events)).toEqual([up]);
    // Nothing is left awaiting the topic: a second identical record is handed out when written.
    const again = routing.publish(up);
    await nextTurn();
    written[1]!.resolve();
    await again;
    expect(heard(events)).toEqual([up, up]);
  });

  it("a publish that failed hands out nothing itself; a copy the topic returns anyway is handed out", async () => {
    const { routing, written, fromTopic, events } = await subscribed();
    const publishing = routing.publish(up);
    await nextTurn();
    written[0]!.reject(new Error("request timed out"));
    await expect(publishing).rejects.toThrow("request timed out");
    expect(events).toEqual([]);
    await fromTopic(written[0]!);
    expect(heard(events)).toEqual([up]);
  });
});
