/**
 * Durable push jobs on the distributed backend (internal/backends/kafka/push-queue.ts) against real
 * Kafka and Cassandra and the signed-webhook stand-in: two push services, each with its own backend
 * (two processes' worth of Kafka clients), share the jobs' topic. A job put by one is delivered once
 * by whoever owns its partition; a job left waiting for its retry by a service that went away is
 * delivered once by the other after the provider recovered. Dead letters (Cassandra) are replayed at
 * least once: a put the queue refuses leaves them listed.
 */
import { randomUUID } from "node:crypto";
import { Kafka, logLevel } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import {
  type DistributedBackends,
  openDistributedBackends,
} from "../../internal/backends/distributed/index.js";
import { topicNames } from "../../internal/backends/kafka/topics.js";
import type { PushDeadLetter, PushJobQueue } from "../../internal/backends/types.js";
import { errors } from "../../internal/lib/errors.js";
import { createLogger } from "../../internal/lib/log.js";
import { createMetrics, type Metrics } from "../../internal/lib/metrics.js";
import { WebhookProvider } from "../../internal/push/providers/webhook.js";
import { Push } from "../../internal/push/service.js";
import { WebhookReceiver } from "../helpers/push-stand-ins/webhook.js";
import { ensureServer } from "../infra/servers.js";

const SECRET = "whsec-queue-test";
const namespace = `pq${Date.now().toString(36)}`;
const keyspace = `push_queue_${Date.now().toString(36)}`;
let brokers: string[];
let open: () => Promise<DistributedBackends>;
let webhook: WebhookReceiver;
const opened: DistributedBackends[] = [];
const services: Push[] = [];

beforeAll(async () => {
  const kafka = await ensureServer("kafka");
  const cassandra = await ensureServer("cassandra");
  brokers = kafka.KAFKA_BROKERS!.split(",");
  open = async () => {
    const b = await openDistributedBackends({
      brokers,
      clientId: `push-queue-${opened.length}`,
      topicPrefix: `${namespace}.`,
      partitions: 2,
      replicationFactor: 1,
      retentionHours: 1,
      appendTimeoutMs: 20_000,
      sequencer: false,
      cassandra: {
        contactPoints: cassandra.CASSANDRA_CONTACT_POINTS!.split(","),
        localDataCenter: cassandra.CASSANDRA_DATACENTER ?? "datacenter1",
        keyspace,
      },
      log: createLogger({ test: "push-queue" }),
    });
    opened.push(b);
    return b;
  };
  webhook = await new WebhookReceiver(SECRET).start();
}, 120_000);

afterAll(async () => {
  await Promise.all(services.splice(0).map((s) => s.close()));
  await Promise.all(opened.splice(0).map((b) => b.close()));
  await webhook?.close();
  const admin = new Kafka({ clientId: "push-queue-cleanup", brokers, logLevel: logLevel.NOTHING }).admin();
  await admin.connect();
  await admin.deleteTopics({ topics: Object.values(topicNames(`${namespace}.`)) }).catch(() => undefined);
  await admin.disconnect();
});

async function service(backends: DistributedBackends, metrics: Metrics): Promise<Push> {
  const push = new Push({
    devices: backends.devices,
    queue: backends.pushQueue,
    providers: { webhook: new WebhookProvider({ signingSecret: SECRET }) },
    webhookUrl: "",
    allowPrivateEndpoints: true,
    collapseWindowMs: 0,
    retry: { attemptsMax: 50, backoffBaseMs: 50, backoffMaxMs: 200, retryAfterMaxMs: 5_000 },
    log: createLogger({ test: "push-queue" }),
    metrics,
  });
  services.push(push);
  await push.consumeQueue();
  return push;
}

async function counted(metrics: Metrics, result: string): Promise<number> {
  const { values } = await metrics.pushNotifications.get();
  return values.find((v) => v.labels.provider === "webhook" && v.labels.result === result)?.value ?? 0;
}

const deliveredTo = (path: string) => webhook.delivered.filter((d) => d.path === path);

describe("push jobs on Kafka", () => {
  it("delivers each job once, by the owner of its partition, and survives the service that held it", async () => {
    const [a, b] = [await open(), await open()];
    const [ma, mb] = [createMetrics(), createMetrics()];
    const first = await service(a, ma);
    await service(b, mb);
    // Users spread over both partitions: each job goes to whichever service owns its user's partition.
    const users = Array.from({ length: 6 }, (_, i) => `queue-user-${i}`);
    for (const u of users)
      await a.devices.put({
        userId: u,
        deviceId: "crm",
        provider: "webhook",
        token: `${webhook.origin}/${u}`,
        registeredAtMs: Date.now(),
      });
    for (const u of users)
      expect(await first.notify({ userId: u, conversationId: "g:q", title: "t", body: `to ${u}` })).toBe(1);
    // The receiver records a request before the sender has read its response and counted it as sent,
    // so both are awaited together.
    await vi.waitFor(
      async () => {
        expect(users.map((u) => deliveredTo(`/${u}`).length)).toEqual(users.map(() => 1));
        expect((await counted(ma, "sent")) + (await counted(mb, "sent"))).toBe(users.length);
      },
      { timeout: 30_000, interval: 100 },
    );

    // The provider is down for one user; whoever holds the job retries it. That service goes away
    // (closing abandons the waiting retry, as a crash would lose it), the other one takes the
    // partition over and delivers the job once the provider is back.
    const victim = "queue-victim";
    await a.devices.put({
      userId: victim,
      deviceId: "crm",
      provider: "webhook",
      token: `${webhook.origin}/${victim}`,
      registeredAtMs: Date.now(),
    });
    webhook.script.byToken.set(`/${victim}`, { status: 503 });
    await first.notify({ userId: victim, conversationId: "g:q", title: "t", body: "eventually" });
    await vi.waitFor(
      async () => expect((await counted(ma, "retried")) + (await counted(mb, "retried"))).toBeGreaterThan(0),
      { timeout: 30_000, interval: 50 },
    );
    const holder =
      (await counted(ma, "retried")) > 0 ? { push: first, backends: a } : { push: services[1]!, backends: b };
    const other = holder.backends === a ? { metrics: mb } : { metrics: ma };
    const sentByOtherBefore = await counted(other.metrics, "sent");
    await holder.push.close();
    await holder.backends.close();
    webhook.script.byToken.delete(`/${victim}`);
    await vi.waitFor(
      async () => {
        expect(deliveredTo(`/${victim}`)).toHaveLength(1);
        expect(await counted(other.metrics, "sent")).toBe(sentByOtherBefore + 1);
      },
      { timeout: 60_000, interval: 200 },
    );
    await new Promise((r) => setTimeout(r, 1_000)); // a second delivery would arrive now
    expect(deliveredTo(`/${victim}`)).toHaveLength(1);
    expect(deliveredTo(`/${victim}`)[0]!.body).toMatchObject({ user_id: victim, body: "eventually" });
  }, 180_000);

  it("delivers a notification asked for again once, also after its partition changed owner", async () => {
    const [c, d] = [await open(), await open()];
    const mc = createMetrics();
    const third = await service(c, mc);
    const user = "queue-repeat";
    await c.devices.put({
      userId: user,
      deviceId: "crm",
      provider: "webhook",
      token: `${webhook.origin}/${user}`,
      registeredAtMs: Date.now(),
    });
    // The same message for the same user: what a router handling it again after a crash asks for.
    const message = { userId: user, conversationId: "g:r", title: "t", body: "once", seq: 41 };
    expect(await third.notify(message)).toBe(1);
    await vi.waitFor(() => expect(deliveredTo(`/${user}`)).toHaveLength(1), {
      timeout: 30_000,
      interval: 100,
    });
    expect(await third.notify(message)).toBe(1); // queued: the partition's owner recognises it
    // The next message is another notification, and it arrives behind the repeat in the partition.
    expect(await third.notify({ ...message, seq: 42, body: "next" })).toBe(1);
    await vi.waitFor(() => expect(deliveredTo(`/${user}`)).toHaveLength(2), {
      timeout: 30_000,
      interval: 100,
    });
    expect(deliveredTo(`/${user}`).map((r) => r.body.body)).toEqual(["once", "next"]);
    // A new owner reads the partition from its beginning: what ended stays ended.
    const mfourth = createMetrics();
    await third.close();
    await c.close();
    await service(d, mfourth);
    await service(await open(), createMetrics()); // and a rebalance for good measure
    await new Promise((r) => setTimeout(r, 5_000));
    expect(deliveredTo(`/${user}`).map((r) => r.body.body)).toEqual(["once", "next"]);
    // The repeat was never sent: the receiver refuses an id it has seen (409) and records it.
    expect(webhook.script.violations).toEqual([]);
    expect(await counted(mc, "sent")).toBe(2);
  }, 120_000);

  it("replays dead letters at least once: a queue that refuses the put leaves them listed under their ids, and a retry delivers each once", async () => {
    const b = await open();
    await service(b, createMetrics()); // delivers what the queue holds
    const jobs = b.pushQueue!;
    let down = true;
    const queue: PushJobQueue = {
      put: async (job) => {
        if (down) throw errors.unavailable("LOG_UNAVAILABLE", "Kafka did not take the job");
        await jobs.put(job);
      },
      finish: (job) => jobs.finish(job),
      deadLetter: (job, error) => jobs.deadLetter(job, error),
      consume: async () => {},
      close: async () => {},
    };
    const replayer = new Push({
      devices: b.devices,
      queue,
      deadLetters: b.pushDeadLetters,
      providers: { webhook: new WebhookProvider({ signingSecret: SECRET }) },
      webhookUrl: "",
      allowPrivateEndpoints: true,
      log: createLogger({ test: "push-queue" }),
      metrics: createMetrics(),
    });
    services.push(replayer);
    const user = "queue-replay";
    const device = {
      userId: user,
      deviceId: "crm",
      provider: "webhook" as const,
      token: `${webhook.origin}/${user}`,
      registeredAtMs: Date.now(),
    };
    await b.devices.put(device);
    // Letters that failed in one millisecond, whose job ids begin with one another's (…-1, …-10).
    const at = Date.now() - 60_000;
    const now = vi.spyOn(Date, "now").mockReturnValue(at);
    const letters: PushDeadLetter[] = [];
    for (const n of [1, 10, 2, 11])
      letters.push(
        await b.pushDeadLetters.add(
          {
            id: `${String(at).padStart(15, "0")}-replay-${n}`,
            provider: "webhook",
            token: device.token,
            device,
            notification: {
              id: randomUUID(),
              userId: user,
              conversationId: "g:dead",
              title: "t",
              body: `letter ${n}`,
              ttlSeconds: 60,
              messageCount: 1,
            },
            attempts: 50,
            notBeforeMs: 0,
            createdAtMs: at,
          },
          "webhook answered 503",
        ),
      );
    now.mockRestore();
    const ids = [letters[0]!.id, letters[2]!.id]; // …-1 and …-2, not …-10 or …-11
    const listed = async () =>
      (await replayer.deadLetters(1_000)).filter((d) => d.job.notification.userId === user).map((d) => d.id);

    await expect(replayer.replay(ids)).rejects.toMatchObject({ reason: "LOG_UNAVAILABLE" });
    expect((await listed()).sort()).toEqual(letters.map((d) => d.id).sort());

    down = false;
    expect(await replayer.replay(ids)).toEqual({ replayed: ids, missing: [], deviceGone: [] });
    await vi.waitFor(() => expect(deliveredTo(`/${user}`)).toHaveLength(2), {
      timeout: 30_000,
      interval: 100,
    });
    expect(
      deliveredTo(`/${user}`)
        .map((r) => r.body.body)
        .sort(),
    ).toEqual(["letter 1", "letter 2"]);
    expect((await listed()).sort()).toEqual([letters[1]!.id, letters[3]!.id].sort());
    expect(await replayer.replay(ids)).toEqual({ replayed: [], missing: ids, deviceGone: [] });
  }, 120_000);
});
