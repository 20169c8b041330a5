import type { Message, Producer, ProducerBatch } from "kafkajs";
import { describe, expect, it } from "vitest";
import { Code, SwitchboardError } from "../../lib/errors.js";
import { createLogger } from "../../lib/log.js";
import type { MessageDraft } from "../types.js";
import {
  BatchProducer,
  ProducerQueueFull,
  RecordWithdrawn,
  recordBytes,
  Withdrawal,
} from "./batch-producer.js";
import { KafkaMessageLog } from "./log.js";

const log = createLogger({ test: "batch-producer" });

/** A kafkajs producer whose requests wait until the test answers them. */
function heldKafka() {
  const requests: Array<{ values: string[]; answer: (err?: Error) => void }> = [];
  const producer = {
    events: { CONNECT: "connect", DISCONNECT: "disconnect" },
    on: () => () => undefined,
    connect: async () => undefined,
    disconnect: async () => undefined,
    sendBatch: (batch: ProducerBatch) =>
      new Promise((resolve, reject) => {
        const values = (batch.topicMessages ?? []).flatMap((t) => t.messages.map((m) => String(m.value)));
        requests.push({ values, answer: (err) => (err ? reject(err) : resolve([])) });
      }),
  } as unknown as Producer;
  return { newProducer: () => producer, requests };
}

/** A message log over `producer` alone: appends and announcements, no consumers. */
const logOver = (producer: BatchProducer, appendTimeoutMs: number) =>
  new KafkaMessageLog({
    kafka: {} as never,
    producer,
    draftsTopic: "drafts",
    sequencedTopic: undefined,
    repliesTopic: "replies",
    groupPrefix: "",
    pending: new Map(),
    sequenced: { store: {} as never, messages: {} as never, progress: {} as never },
    appendTimeoutMs,
    draftBytesMax: 1_000_000,
    log,
  });
const tick = () => new Promise((r) => setTimeout(r, 10));
const record = (value: string, key = "c1"): Message => ({ key, value });
const settled = (p: Promise<unknown>) =>
  p.then(
    () => "sent",
    (err: unknown) => (err instanceof Error ? err.name : String(err)),
  );

describe("BatchProducer: a bounded queue", () => {
  it("refuses records past its record bound and its byte bound while Kafka does not answer", async () => {
    const kafka = heldKafka();
    const bytes = recordBytes(record("x".repeat(1_000)));
    const producer = new BatchProducer(kafka.newProducer, {
      log,
      queueRecordsMax: 3,
      queueBytesMax: 4 * bytes,
    });
    const first = producer.send("t", record("first"));
    await tick(); // in a request Kafka holds: no longer queued
    const queued = [1, 2, 3].map((i) => producer.send("t", record(`q${i}`)));
    const refused = producer.send("t", record("q4"));
    expect(await settled(refused)).toBe("ProducerQueueFull");
    expect(producer.waiting.records).toBe(3);
    expect(producer.stats.refused).toBe(1);

    const big = new BatchProducer(heldKafka().newProducer, { log, queueBytesMax: 2 * bytes });
    void big.send("t", record("x".repeat(1_000)));
    await tick();
    const waiting = [big.send("t", record("x".repeat(1_000))), big.send("t", record("x".repeat(1_000)))];
    await expect(big.send("t", record("x".repeat(1_000)))).rejects.toBeInstanceOf(ProducerQueueFull);
    expect(big.waiting.records).toBe(2);
    void waiting;

    // Kafka answers: the queue drains and takes records again.
    kafka.requests[0]!.answer();
    await first;
    await tick();
    kafka.requests[1]!.answer();
    expect(await Promise.all(queued.map(settled))).toEqual(["sent", "sent", "sent"]);
    expect(producer.waiting).toEqual({ records: 0, bytes: 0 });
    const again = producer.send("t", record("q5"));
    await tick();
    kafka.requests[2]!.answer();
    await again;
  });

  it("withdraws a record that still waits when its sender withdraws it: never sent, its room freed", async () => {
    const kafka = heldKafka();
    const producer = new BatchProducer(kafka.newProducer, { log });
    const inFlight = new Withdrawal();
    const first = producer.send("t", record("in-flight", "a"), { ordered: true, withdrawal: inFlight });
    await tick();
    const stale = new Withdrawal();
    const withdrawn = producer.send("t", record("stale", "a"), { ordered: true, withdrawal: stale });
    const behind = settled(producer.send("t", record("behind", "a"), { ordered: true })); // its key's next
    const other = producer.send("t", record("other", "b"), { ordered: true });
    stale.withdraw();
    inFlight.withdraw(); // too late: it is in a request
    expect(await settled(withdrawn)).toBe("RecordWithdrawn");
    expect(producer.waiting.records).toBe(2);
    // The resend, after the sender learned of the withdrawal, queued behind "behind".
    const resend = settled(producer.send("t", record("resend", "a"), { ordered: true }));
    kafka.requests[0]!.answer();
    await first;
    await tick();
    // The record queued behind the withdrawn one of its key fails with it (it must not overtake the
    // resend), and so does everything of its key queued behind it: the resend too, which the
    // producer cannot tell from a later message; the other key's record goes, the withdrawn one never.
    expect(await behind).toBe("RecordWithdrawn");
    expect(await resend).toBe("RecordWithdrawn");
    expect(kafka.requests[1]!.values).toEqual(["other"]);
    kafka.requests[1]!.answer();
    expect(await settled(other)).toBe("sent");
    expect(kafka.requests.flatMap((r) => r.values)).not.toContain("stale");
    expect(producer.stats.withdrawn).toBe(1);
    // Sent after those failures were told: it goes.
    const after = producer.send("t", record("after", "a"), { ordered: true });
    await tick();
    kafka.requests[2]!.answer();
    await after;
  });

  it("a later message's resend queued after a withdrawal never goes out ahead of earlier messages failing behind it", async () => {
    // Kafka frozen: m44..m48 wait; m48's deadline withdraws it after m44..m47 were resent (queued
    // behind it); m48 is resent; Kafka comes back. m44..m47's resends fail behind the withdrawn m48,
    // so m48's resend must fail too, or it would be produced before them (found from outside).
    const kafka = heldKafka();
    const producer = new BatchProducer(kafka.newProducer, { log });
    const ordered = { ordered: true };
    const blocker = producer.send("t", record("in-flight", "c"), ordered);
    await tick();
    const w48 = new Withdrawal();
    const first48 = settled(producer.send("t", record("m48", "c"), { ordered: true, withdrawal: w48 }));
    const resends = ["m44", "m45", "m46", "m47"].map((m) =>
      settled(producer.send("t", record(m, "c"), ordered)),
    );
    w48.withdraw();
    expect(await first48).toBe("RecordWithdrawn");
    const resend48 = settled(producer.send("t", record("m48", "c"), ordered));
    kafka.requests[0]!.answer();
    await blocker;
    await tick();
    expect(await Promise.all(resends)).toEqual(Array(4).fill("RecordWithdrawn"));
    expect(await resend48).toBe("RecordWithdrawn");
    expect(kafka.requests.flatMap((r) => r.values)).toEqual(["in-flight"]);
  });

  it("withdrawing a record already sent, or sending one already withdrawn, changes nothing else", async () => {
    const kafka = heldKafka();
    const producer = new BatchProducer(kafka.newProducer, { log });
    const early = new Withdrawal();
    early.withdraw();
    await expect(producer.send("t", record("x"), { withdrawal: early })).rejects.toBeInstanceOf(
      RecordWithdrawn,
    );
    const late = new Withdrawal();
    const sent = producer.send("t", record("y"), { withdrawal: late });
    await tick();
    kafka.requests[0]!.answer();
    await sent;
    late.withdraw();
    expect(producer.waiting).toEqual({ records: 0, bytes: 0 });
    expect(producer.stats.withdrawn).toBe(0);
  });

  it("an append that times out while Kafka holds its draft in the queue: LOG_UNAVAILABLE, and the draft is never sent", async () => {
    const kafka = heldKafka();
    const producer = new BatchProducer(kafka.newProducer, { log });
    const messageLog = logOver(producer, 50);
    const draft = (id: string): MessageDraft => ({
      conversationId: "g:1",
      messageId: id,
      sender: "ann",
      clientMsgId: `c${id}`,
      body: `body ${id}`,
      createdAtMs: Date.now(),
    });
    // Something else holds the producer's one request: Kafka is away.
    const blocking = producer.send("other", record("blocking"));
    await tick();
    const appended = messageLog.append(draft("1"));
    const error = await appended.catch((err: unknown) => err);
    expect(error).toBeInstanceOf(SwitchboardError);
    expect(error).toMatchObject({ code: Code.UNAVAILABLE, reason: "LOG_UNAVAILABLE" });
    expect(producer.waiting.records).toBe(0);
    kafka.requests[0]!.answer();
    await blocking;
    await tick();
    expect(kafka.requests.length).toBe(1); // the withdrawn draft never went out

    // Past the queue's bound an append is refused at once, as LOG_UNAVAILABLE too.
    const full = new BatchProducer(heldKafka().newProducer, { log, queueRecordsMax: 1 });
    const fullLog = logOver(full, 60_000);
    void full.send("other", record("in-flight"));
    await tick();
    void full.send("other", record("waiting"));
    await expect(fullLog.append(draft("2"))).rejects.toMatchObject({ reason: "LOG_UNAVAILABLE" });
  });

  it("an append, and a membership announcement, whose record is in a request Kafka never answers: LOG_UNAVAILABLE at the deadline, not when kafkajs gives up", async () => {
    const kafka = heldKafka();
    const producer = new BatchProducer(kafka.newProducer, { log });
    const messageLog = logOver(producer, 50);
    const startedAt = Date.now();
    const appended = messageLog
      .append({
        conversationId: "g:1",
        messageId: "1",
        sender: "ann",
        clientMsgId: "c1",
        body: "in a request",
        createdAtMs: Date.now(),
      })
      .catch((err: unknown) => err);
    await tick();
    expect(kafka.requests.length).toBe(1); // the draft is in the request, which is never answered
    expect(await appended).toMatchObject({ reason: "LOG_UNAVAILABLE" });
    expect(String(((await appended) as Error).message)).toContain("it may still take it");
    expect(Date.now() - startedAt).toBeLessThan(1_000);

    // An announcement queued behind that request: answered at the deadline too, and still sent
    // once Kafka answers (withdrawn, the stored change would be left unannounced).
    const announced = messageLog.announceMembershipChange("g:2").catch((err: unknown) => err);
    expect(await announced).toMatchObject({ reason: "LOG_UNAVAILABLE" });
    kafka.requests[0]!.answer();
    await tick();
    await tick();
    expect(kafka.requests.length).toBe(2);
  });
});
