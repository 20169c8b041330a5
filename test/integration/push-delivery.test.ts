/**
 * The push service end to end over the real providers and the protocol-checking stand-ins, with the
 * embedded DeviceStore: delivery to every provider, dead tokens pruned from the store, outages (5xx,
 * 429 with Retry-After) retried until the provider recovers, permanent failures not retried, privacy
 * mode, collapse, and the bounds (attempts, Retry-After cap, close).
 */
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { EmbeddedBackends } from "../../internal/backends/embedded/index.js";
import type {
  DeviceRecord,
  DeviceStore,
  PushDeadLetter,
  PushJobStore,
} from "../../internal/backends/types.js";
import { errors } from "../../internal/lib/errors.js";
import { createLogger } from "../../internal/lib/log.js";
import { createMetrics, type Metrics } from "../../internal/lib/metrics.js";
import { minuteOfDay } from "../../internal/push/do-not-disturb.js";
import { ApnsProvider } from "../../internal/push/providers/apns.js";
import { FcmProvider, parseServiceAccount } from "../../internal/push/providers/fcm.js";
import type { PushProvider } from "../../internal/push/providers/types.js";
import { WebPushProvider } from "../../internal/push/providers/web-push.js";
import { WebhookProvider } from "../../internal/push/providers/webhook.js";
import type { RetryPolicy } from "../../internal/push/retry-policy.js";
import { PRIVATE_BODY, type ProviderSet, Push } from "../../internal/push/service.js";
import { ApnsStandIn } from "../helpers/push-stand-ins/apns.js";
import { FcmStandIn } from "../helpers/push-stand-ins/fcm.js";
import { vapidKeys, WebPushStandIn } from "../helpers/push-stand-ins/web-push.js";
import { WebhookReceiver } from "../helpers/push-stand-ins/webhook.js";

const WEBHOOK_SECRET = "whsec-delivery-test";
const FAST_RETRIES: RetryPolicy = {
  attemptsMax: 5,
  backoffBaseMs: 20,
  backoffMaxMs: 200,
  retryAfterMaxMs: 5_000,
};

let dataDir: string;
let backends: EmbeddedBackends;
let apns: ApnsStandIn;
let fcm: FcmStandIn;
let webPush: WebPushStandIn;
let webhook: WebhookReceiver;
const vapid = vapidKeys();
const pushes: Push[] = [];

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "switchboard-push-"));
  backends = new EmbeddedBackends({ dataDir });
  [apns, fcm, webPush, webhook] = await Promise.all([
    new ApnsStandIn().start(),
    new FcmStandIn().start(),
    new WebPushStandIn(vapid.publicKey).start(),
    new WebhookReceiver(WEBHOOK_SECRET).start(),
  ]);
});

afterEach(async () => {
  await Promise.all(pushes.splice(0).map((p) => p.close()));
  for (const standIn of [apns, fcm, webPush, webhook]) {
    expect(standIn.script.violations).toEqual([]);
    standIn.script.queued.length = 0;
    standIn.script.byToken.clear();
  }
});

afterAll(async () => {
  await Promise.all([apns?.close(), fcm?.close(), webPush?.close(), webhook?.close()]);
  await backends?.close();
  rmSync(dataDir, { recursive: true, force: true });
});

function providers(): ProviderSet {
  return {
    apns: new ApnsProvider({
      keyPem: apns.keyPem,
      keyId: apns.keyId,
      teamId: apns.teamId,
      topic: apns.topic,
      origin: apns.origin,
      ca: apns.ca,
    }),
    fcm: new FcmProvider({
      serviceAccount: parseServiceAccount(fcm.serviceAccountJson(), "test"),
      origin: fcm.origin,
    }),
    webpush: new WebPushProvider({
      vapidPublicKey: vapid.publicKey,
      vapidPrivateKey: vapid.privateKey,
      subject: "mailto:push@switchboard.dev",
      allowHttpEndpoints: true,
    }),
    webhook: new WebhookProvider({ signingSecret: WEBHOOK_SECRET }),
  };
}

function pushService(metrics: Metrics, overrides: Partial<ConstructorParameters<typeof Push>[0]> = {}): Push {
  const push = new Push({
    devices: backends.devices,
    providers: providers(),
    webhookUrl: "",
    retry: FAST_RETRIES,
    collapseWindowMs: 0,
    log: createLogger({ test: "push-delivery" }),
    metrics,
    ...overrides,
  });
  pushes.push(push);
  return push;
}

async function counted(metrics: Metrics, provider: string, result: string): Promise<number> {
  const { values } = await metrics.pushNotifications.get();
  return values.find((v) => v.labels.provider === provider && v.labels.result === result)?.value ?? 0;
}

const settled = (push: Push, timeout = 10_000) =>
  vi.waitFor(() => expect(push.pending).toBe(0), { timeout, interval: 10 });

let users = 0;
/** A user with one device per provider (tokens each stand-in accepts). */
async function userWithEveryDevice(): Promise<{
  userId: string;
  devices: Record<DeviceRecord["provider"], DeviceRecord>;
}> {
  const userId = `user-${++users}`;
  const apnsToken = (users * 1000 + 1).toString(16).padStart(64, "0");
  const records: DeviceRecord[] = [
    { userId, deviceId: "iphone", provider: "apns", token: apnsToken, registeredAtMs: Date.now() },
    { userId, deviceId: "pixel", provider: "fcm", token: `fcm-${userId}`, registeredAtMs: Date.now() },
    {
      userId,
      deviceId: "browser",
      provider: "webpush",
      token: webPush.subscribe().token,
      registeredAtMs: Date.now(),
    },
    {
      userId,
      deviceId: "crm",
      provider: "webhook",
      token: `${webhook.origin}/${userId}`,
      registeredAtMs: Date.now(),
    },
  ];
  for (const r of records) await backends.devices.put(r);
  return { userId, devices: Object.fromEntries(records.map((r) => [r.provider, r])) as never };
}

const webPushSubscriptionId = (token: string) => /\/push\/([0-9a-f]+)"/.exec(token)![1]!;

describe("push service over the four providers", () => {
  it("delivers one notification to every device of an offline user, each through its provider", async () => {
    const metrics = createMetrics();
    const push = pushService(metrics);
    const { userId, devices } = await userWithEveryDevice();
    const before = [apns, fcm, webPush, webhook].map((s) => s.delivered.length);
    expect(await push.notify({ userId, conversationId: "dm:1", title: "bob", body: "hi alice" })).toBe(4);
    await settled(push);
    expect([apns, fcm, webPush, webhook].map((s, i) => s.delivered.length - before[i]!)).toEqual([
      1, 1, 1, 1,
    ]);
    expect(apns.delivered.at(-1)!.token).toBe(devices.apns.token);
    expect(apns.delivered.at(-1)!.payload.aps.alert.body).toBe("hi alice");
    // Without a seq (or read watermarks) the unread count is the notification's own message count.
    expect(apns.delivered.at(-1)!.payload.unread_count).toBe(1);
    expect(fcm.delivered.at(-1)!.message.data?.unread_count).toBe("1");
    expect(webPush.delivered.at(-1)!.payload.unread_count).toBe(1);
    expect(fcm.delivered.at(-1)!.message.token).toBe(devices.fcm.token);
    expect(webPush.delivered.at(-1)!.payload.body).toBe("hi alice");
    expect(webhook.delivered.at(-1)!.path).toBe(`/${userId}`);
    for (const p of ["apns", "fcm", "webpush", "webhook"]) expect(await counted(metrics, p, "sent")).toBe(1);
  });

  it("sends nothing for a muted conversation or inside the user's do-not-disturb window, and again once they end", async () => {
    const metrics = createMetrics();
    const push = pushService(metrics, { settings: backends.settings });
    const { userId } = await userWithEveryDevice();
    const delivered = () => [apns, fcm, webPush, webhook].reduce((n, s) => n + s.delivered.length, 0);
    const before = delivered();
    await backends.settings.mute(userId, { conversationId: "g:muted", untilMs: 0 });
    await backends.settings.mute(userId, { conversationId: "g:briefly", untilMs: Date.now() + 300 });
    expect(await push.notify({ userId, conversationId: "g:muted", title: "t", body: "quiet" })).toBe(0);
    expect(await push.notify({ userId, conversationId: "g:briefly", title: "t", body: "quiet" })).toBe(0);
    expect(await counted(metrics, "none", "muted")).toBe(2);
    // Another conversation is not muted.
    expect(await push.notify({ userId, conversationId: "g:other", title: "t", body: "loud" })).toBe(4);
    await settled(push);
    expect(delivered() - before).toBe(4);

    // A window around now (in the user's zone) silences everything; one that is not on lets it through.
    const minuteNow = minuteOfDay(Date.now(), "Asia/Tokyo");
    const around = {
      startMinute: (minuteNow + 1439) % 1440,
      endMinute: (minuteNow + 2) % 1440,
      timeZone: "Asia/Tokyo",
    };
    await backends.settings.setDoNotDisturb(userId, around);
    expect(await push.notify({ userId, conversationId: "g:other", title: "t", body: "night" })).toBe(0);
    expect(await counted(metrics, "none", "do_not_disturb")).toBe(1);
    const later = {
      startMinute: (minuteNow + 10) % 1440,
      endMinute: (minuteNow + 20) % 1440,
      timeZone: "Asia/Tokyo",
    };
    await backends.settings.setDoNotDisturb(userId, later);
    await new Promise((r) => setTimeout(r, 350)); // the brief mute is over too
    expect(await push.notify({ userId, conversationId: "g:briefly", title: "t", body: "awake" })).toBe(4);
    await settled(push);
    expect(delivered() - before).toBe(8);
    await backends.settings.setDoNotDisturb(userId, undefined);
  });

  it("prunes a dead token from the DeviceStore and keeps the user's other devices", async () => {
    const metrics = createMetrics();
    const push = pushService(metrics);
    const { userId, devices } = await userWithEveryDevice();
    apns.script.byToken.set(devices.apns.token, {
      status: 410,
      body: { reason: "Unregistered", timestamp: 1 },
    });
    fcm.script.byToken.set(devices.fcm.token, {
      status: 404,
      body: { error: { code: 404, status: "NOT_FOUND", details: [{ errorCode: "UNREGISTERED" }] } },
    });
    webPush.script.byToken.set(webPushSubscriptionId(devices.webpush.token), { status: 410 });
    await push.notify({ userId, conversationId: "dm:2", title: "bob", body: "still there?" });
    await settled(push);
    expect((await backends.devices.list(userId)).map((d) => d.deviceId)).toEqual(["crm"]);
    for (const p of ["apns", "fcm", "webpush"]) expect(await counted(metrics, p, "pruned")).toBe(1);
    expect(await counted(metrics, "webhook", "sent")).toBe(1);
  });

  it("retries 5xx and 429 with Retry-After until the provider recovers, delivering once", async () => {
    const metrics = createMetrics();
    const push = pushService(metrics);
    const { userId, devices } = await userWithEveryDevice();
    await backends.devices.remove(userId, "iphone");
    await backends.devices.remove(userId, "browser");
    await backends.devices.remove(userId, "crm");
    fcm.script.queued.push(
      { status: 503, body: { error: { code: 503, status: "UNAVAILABLE" } } },
      { status: 500, body: { error: { code: 500, status: "INTERNAL" } } },
      {
        status: 429,
        headers: { "retry-after": "1" },
        body: {
          error: { code: 429, status: "RESOURCE_EXHAUSTED", details: [{ errorCode: "QUOTA_EXCEEDED" }] },
        },
      },
    );
    const arrivalsBefore = fcm.script.arrivals.length;
    const deliveredBefore = fcm.delivered.length;
    await push.notify({ userId, conversationId: "dm:3", title: "bob", body: "outage" });
    await settled(push);
    const arrivals = fcm.script.arrivals.slice(arrivalsBefore).filter((a) => a.token === devices.fcm.token);
    expect(arrivals.map((a) => a.status)).toEqual([503, 500, 429, 200]);
    // Retry-After: 1 honoured: the recovery attempt came at least a second after the 429.
    expect(arrivals[3]!.atMs - arrivals[2]!.atMs).toBeGreaterThanOrEqual(990);
    expect(fcm.delivered.length - deliveredBefore).toBe(1);
    expect(await counted(metrics, "fcm", "retried")).toBe(3);
    expect(await counted(metrics, "fcm", "sent")).toBe(1);
  });

  it("retries an APNs and a Web Push outage, and a webhook 5xx, until each recovers", async () => {
    const metrics = createMetrics();
    const push = pushService(metrics);
    const { userId, devices } = await userWithEveryDevice();
    await backends.devices.remove(userId, "pixel");
    apns.script.queued.push({ status: 503, body: { reason: "ServiceUnavailable" } });
    apns.script.queued.push({
      status: 429,
      body: { reason: "TooManyRequests" },
      headers: { "retry-after": "1" },
    });
    webPush.script.queued.push({ status: 502 }, { status: 429, headers: { "retry-after": "0" } });
    webhook.script.queued.push({ status: 500 }, { status: 503 });
    await push.notify({ userId, conversationId: "dm:4", title: "bob", body: "outage" });
    await settled(push);
    expect(apns.delivered.filter((d) => d.token === devices.apns.token)).toHaveLength(1);
    expect(
      webPush.delivered.filter((d) => d.subscriptionId === webPushSubscriptionId(devices.webpush.token)),
    ).toHaveLength(1);
    expect(webhook.delivered.filter((d) => d.path === `/${userId}`)).toHaveLength(1);
    for (const p of ["apns", "webpush", "webhook"]) {
      expect(await counted(metrics, p, "retried")).toBe(2);
      expect(await counted(metrics, p, "sent")).toBe(1);
    }
  });

  it("does not retry a permanent failure, and gives up after attemptsMax or a Retry-After beyond the cap", async () => {
    const metrics = createMetrics();
    const push = pushService(metrics, { retry: { ...FAST_RETRIES, attemptsMax: 3, retryAfterMaxMs: 2_000 } });
    const { userId, devices } = await userWithEveryDevice();
    await backends.devices.remove(userId, "crm");
    apns.script.byToken.set(devices.apns.token, { status: 400, body: { reason: "PayloadEmpty" } });
    fcm.script.byToken.set(devices.fcm.token, {
      status: 503,
      body: { error: { code: 503, status: "UNAVAILABLE" } },
    });
    webPush.script.byToken.set(webPushSubscriptionId(devices.webpush.token), {
      status: 429,
      headers: { "retry-after": "3600" },
    });
    const started = Date.now();
    const arrivals = () =>
      [
        apns.script.arrivals.filter((a) => a.token === devices.apns.token).length,
        fcm.script.arrivals.filter((a) => a.token === devices.fcm.token).length,
        webPush.script.arrivals.filter((a) => a.token === webPushSubscriptionId(devices.webpush.token))
          .length,
      ] as const;
    await push.notify({ userId, conversationId: "dm:5", title: "bob", body: "doomed" });
    await settled(push);
    expect(arrivals()).toEqual([1, 3, 1]);
    expect(Date.now() - started).toBeLessThan(2_000); // the hour-long Retry-After was not waited for
    for (const p of ["apns", "fcm", "webpush"]) expect(await counted(metrics, p, "failed")).toBe(1);
    expect((await backends.devices.list(userId)).length).toBe(3); // failures prune nothing
  });

  it("sends 'New message' instead of the body in privacy mode, to every provider", async () => {
    const metrics = createMetrics();
    const push = pushService(metrics, { privacyMode: true });
    const { userId, devices } = await userWithEveryDevice();
    await push.notify({ userId, conversationId: "dm:6", title: "bob", body: "the secret plan" });
    await settled(push);
    expect(apns.delivered.find((d) => d.token === devices.apns.token)!.payload.aps.alert.body).toBe(
      PRIVATE_BODY,
    );
    expect(fcm.delivered.find((d) => d.message.token === devices.fcm.token)!.message.notification!.body).toBe(
      PRIVATE_BODY,
    );
    const browser = webPush.delivered.find(
      (d) => d.subscriptionId === webPushSubscriptionId(devices.webpush.token),
    )!;
    expect(browser.payload.body).toBe(PRIVATE_BODY);
    expect(webhook.delivered.find((d) => d.path === `/${userId}`)!.body.body).toBe(PRIVATE_BODY);
    const everything = JSON.stringify([apns.delivered, fcm.delivered, webPush.delivered, webhook.delivered]);
    expect(everything).not.toContain("the secret plan");
  });

  it("collapses a burst per (user, conversation): the first at once, one summary with the latest and the count when the window closes", async () => {
    const metrics = createMetrics();
    const push = pushService(metrics, { collapseWindowMs: 400, receipts: backends.receipts });
    const { userId } = await userWithEveryDevice();
    // The user has read g:1 up to seq 4 and nothing of g:2: the payloads count what is unread.
    await backends.receipts.raise("g:1", userId, "read", 4);
    await backends.devices.remove(userId, "iphone");
    await backends.devices.remove(userId, "pixel");
    await backends.devices.remove(userId, "browser");
    const counts = [];
    for (const [conversationId, body, seq] of [
      ["g:1", "first", 5],
      ["g:1", "second", 6],
      ["g:1", "third", 7],
      ["g:2", "other", 2],
    ] as const) {
      counts.push(await push.notify({ userId, conversationId, title: "bob", body, seq }));
    }
    expect(counts).toEqual([1, 0, 0, 1]);
    const mine = () => webhook.delivered.filter((d) => d.path === `/${userId}`).map((d) => d.body);
    await vi.waitFor(() => expect(mine()).toHaveLength(3), { timeout: 5_000 });
    expect(mine().map((b) => [b.conversation_id, b.body, b.message_count, b.unread_count])).toEqual([
      ["g:1", "first", 1, 1],
      ["g:2", "other", 1, 2],
      ["g:1", "third", 2, 3],
    ]);
    expect(await counted(metrics, "none", "collapsed")).toBe(2);
    expect(await counted(metrics, "none", "summarized")).toBe(1);
    // The summary opened the next window: a message right after it is held again.
    expect(await push.notify({ userId, conversationId: "g:1", title: "bob", body: "fourth" })).toBe(0);
  });

  it("counts devices of a provider without credentials as unconfigured, and falls back to push.webhookUrl", async () => {
    const metrics = createMetrics();
    const push = pushService(metrics, {
      providers: { webhook: new WebhookProvider({ signingSecret: WEBHOOK_SECRET }) },
      webhookUrl: `${webhook.origin}/fallback`,
    });
    const { userId } = await userWithEveryDevice();
    await backends.devices.remove(userId, "crm");
    expect(await push.notify({ userId, conversationId: "dm:7", title: "bob", body: "x" })).toBe(0);
    for (const p of ["apns", "fcm", "webpush"]) expect(await counted(metrics, p, "unconfigured")).toBe(1);
    expect(
      await push.notify({ userId: "nobody-registered", conversationId: "dm:8", title: "bob", body: "y" }),
    ).toBe(1);
    await settled(push);
    expect(webhook.delivered.at(-1)).toMatchObject({
      path: "/fallback",
      body: { user_id: "nobody-registered" },
    });
  });

  it("keeps a token the device re-registered while the old one was being pruned", async () => {
    const metrics = createMetrics();
    const userId = `user-${++users}`;
    const old: DeviceRecord = {
      userId,
      deviceId: "iphone",
      provider: "apns",
      token: "aa",
      registeredAtMs: 1,
    };
    await backends.devices.put(old);
    const reregisteringApns: PushProvider = {
      name: "apns",
      async send() {
        // The app registered a fresh token while the provider was answering about the old one.
        await backends.devices.put({ ...old, token: "bb", registeredAtMs: 2 });
        return { kind: "prune", reason: "410 Unregistered" };
      },
      async close() {},
    };
    const push = pushService(metrics, { providers: { apns: reregisteringApns } });
    await push.notify({ userId, conversationId: "dm:9", title: "bob", body: "x" });
    await settled(push);
    expect((await backends.devices.list(userId)).map((d) => d.token)).toEqual(["bb"]);
  });

  it("keeps a token the device registered between any two steps of pruning its dead one", async () => {
    const metrics = createMetrics();
    const userId = `user-${++users}`;
    const old: DeviceRecord = {
      userId,
      deviceId: "iphone",
      provider: "apns",
      token: "aa",
      registeredAtMs: 1,
    };
    await backends.devices.put(old);
    let answered = false;
    let registered = false;
    // Once the provider has called the token dead, the app's registration of a fresh one lands right
    // after the next DeviceStore call push makes, whatever that call is.
    const registerOnce = async () => {
      if (!answered || registered) return;
      registered = true;
      await backends.devices.put({ ...old, token: "bb", registeredAtMs: 2 });
    };
    const store = backends.devices;
    const devices: DeviceStore = {
      put: (d) => store.put(d),
      remove: async (u, d) => {
        await store.remove(u, d);
        await registerOnce();
      },
      removeIfToken: async (u, d, token) => {
        const removed = await store.removeIfToken(u, d, token);
        await registerOnce();
        return removed;
      },
      list: async (u) => {
        const list = await store.list(u);
        await registerOnce();
        return list;
      },
      close: async () => {},
    };
    const deadApns: PushProvider = {
      name: "apns",
      async send() {
        answered = true;
        return { kind: "prune", reason: "410 Unregistered" };
      },
      async close() {},
    };
    const push = pushService(metrics, { devices, providers: { apns: deadApns } });
    await push.notify({ userId, conversationId: "dm:9b", title: "bob", body: "x" });
    await settled(push);
    expect(registered).toBe(true);
    expect((await backends.devices.list(userId)).map((d) => d.token)).toEqual(["bb"]);
  });

  it("bounds pending deliveries and abandons waiting retries on close", async () => {
    const metrics = createMetrics();
    const push = pushService(metrics, {
      pendingMax: 1,
      retry: { ...FAST_RETRIES, backoffBaseMs: 60_000, backoffMaxMs: 60_000 },
    });
    const { userId } = await userWithEveryDevice();
    await backends.devices.remove(userId, "iphone");
    await backends.devices.remove(userId, "browser");
    // Devices are listed by id: "crm" (webhook, failing) takes the one pending slot, "pixel" (fcm) is dropped.
    webhook.script.byToken.set(`/${userId}`, { status: 503 });
    expect(await push.notify({ userId, conversationId: "dm:10", title: "bob", body: "x" })).toBe(1);
    expect(await counted(metrics, "fcm", "dropped")).toBe(1);
    await vi.waitFor(async () => expect(await counted(metrics, "webhook", "retried")).toBe(1));
    const closing = Date.now();
    await push.close();
    expect(Date.now() - closing).toBeLessThan(1_000);
    expect(await counted(metrics, "webhook", "abandoned")).toBe(1);
  });
});

describe("durable push jobs (the embedded store)", () => {
  it("keeps a delivery waiting to retry across a restart of the service and sends it once", async () => {
    const jobs = backends.pushJobs;
    const first = pushService(createMetrics(), { jobs });
    const { userId } = await userWithEveryDevice();
    for (const deviceId of ["iphone", "pixel", "browser"]) await backends.devices.remove(userId, deviceId);
    webhook.script.byToken.set(`/${userId}`, { status: 503, headers: { "retry-after": "1" } });
    await first.notify({ userId, conversationId: "dm:11", title: "bob", body: "survive" });
    const stored = () => jobs.list(100).then((all) => all.filter((j) => j.notification.userId === userId));
    await vi.waitFor(async () => expect((await stored())[0]?.attempts).toBeGreaterThanOrEqual(1));
    await first.close(); // as a crash would, the retry never runs in this instance
    expect(await stored()).toHaveLength(1);
    webhook.script.byToken.delete(`/${userId}`);
    const metrics = createMetrics();
    const second = pushService(metrics, { jobs });
    expect(await second.recover()).toBeGreaterThanOrEqual(1);
    await settled(second);
    const got = webhook.delivered.filter((d) => d.path === `/${userId}`);
    expect(got).toHaveLength(1);
    expect(got[0]!.body.body).toBe("survive");
    // The resumed job waited out the Retry-After the first instance was given.
    const tries = webhook.script.arrivals.filter((a) => a.token === `/${userId}`);
    expect(tries.at(-1)!.atMs - tries[0]!.atMs).toBeGreaterThanOrEqual(990);
    expect(await stored()).toEqual([]);
    expect(await counted(metrics, "webhook", "recovered")).toBeGreaterThanOrEqual(1);
  });

  it("sends a message's notification once however often it is asked for, under one notification_id; an unknown message's each time", async () => {
    const jobs = backends.pushJobs;
    const { userId } = await userWithEveryDevice();
    for (const deviceId of ["iphone", "pixel", "browser"]) await backends.devices.remove(userId, deviceId);
    const mine = () => webhook.delivered.filter((d) => d.path === `/${userId}`);
    const message = { userId, conversationId: "dm:13", title: "bob", body: "once", seq: 7 };
    const metrics = createMetrics();
    const first = pushService(metrics, { jobs });
    expect(await first.notify(message)).toBe(1);
    await settled(first);
    // A router re-handling the message after a crash asks again, of this process or the next one.
    expect(await first.notify(message)).toBe(0);
    await first.close();
    const second = pushService(createMetrics(), { jobs });
    expect(await second.notify(message)).toBe(0);
    expect(await counted(metrics, "webhook", "duplicate")).toBe(1);
    // The next message of the conversation is another notification.
    expect(await second.notify({ ...message, seq: 8 })).toBe(1);
    await settled(second);
    const got = mine();
    expect(got.map((d) => d.body.body)).toEqual(["once", "once"]);
    const ids = got.map((d) => d.body.notification_id as string);
    expect(new Set(ids).size).toBe(2);
    for (const id of ids)
      expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    // Without a seq the message is unknown: nothing to recognise it by, so each ask is sent.
    const unknown = { userId, conversationId: "dm:13", title: "bob", body: "unknown" };
    expect(await second.notify(unknown)).toBe(1);
    expect(await second.notify(unknown)).toBe(1);
    await settled(second);
    expect(mine().filter((d) => d.body.body === "unknown")).toHaveLength(2);
  });

  it("dead-letters a permanent failure and an exhausted job with its last error, removes them from the jobs, and replays each once to the device's current token", async () => {
    const jobs = backends.pushJobs;
    const deadLetters = backends.pushDeadLetters;
    const metrics = createMetrics();
    const push = pushService(metrics, { jobs, deadLetters, retry: { ...FAST_RETRIES, attemptsMax: 2 } });
    const { userId, devices } = await userWithEveryDevice();
    for (const deviceId of ["browser", "crm"]) await backends.devices.remove(userId, deviceId);
    apns.script.byToken.set(devices.apns.token, { status: 400, body: { reason: "PayloadEmpty" } });
    fcm.script.byToken.set(devices.fcm.token, {
      status: 503,
      body: { error: { code: 503, status: "UNAVAILABLE" } },
    });
    await push.notify({ userId, conversationId: "dm:12", title: "bob", body: "poison" });
    await settled(push);
    const dead = (await push.deadLetters(1_000)).filter((d) => d.job.notification.userId === userId);
    expect(dead.map((d) => [d.job.provider, d.job.attempts, d.error]).sort()).toEqual([
      ["apns", 1, "apns answered 400 PayloadEmpty"],
      ["fcm", 2, "fcm answered 503 UNAVAILABLE"],
    ]);
    expect((await jobs.list(100)).filter((j) => j.notification.userId === userId)).toEqual([]);

    // Newest first, and a page after one id holds exactly the older ones.
    const all = await push.deadLetters(1_000);
    expect(all.map((d) => d.deadAtMs)).toEqual([...all.map((d) => d.deadAtMs)].sort((a, b) => b - a));
    const [newest, ...older] = all;
    expect((await push.deadLetters(1_000, newest!.id)).map((d) => d.id)).toEqual(older.map((d) => d.id));

    // The providers mended; the iPhone registered a new token since; the Pixel is gone.
    apns.script.byToken.delete(devices.apns.token);
    fcm.script.byToken.delete(devices.fcm.token);
    const renewed = `${"b".repeat(63)}c`;
    await backends.devices.put({ ...devices.apns, token: renewed, registeredAtMs: Date.now() });
    await backends.devices.remove(userId, devices.fcm.deviceId);
    const apnsDead = dead.find((d) => d.job.provider === "apns")!;
    const fcmDead = dead.find((d) => d.job.provider === "fcm")!;
    const before = apns.delivered.length;
    const result = await push.replay([apnsDead.id, fcmDead.id, "000000000000001:no-such-job"]);
    expect(result).toEqual({
      replayed: [apnsDead.id],
      missing: ["000000000000001:no-such-job"],
      deviceGone: [fcmDead.id],
    });
    await settled(push);
    const resent = apns.delivered.slice(before);
    expect(resent.map((d) => d.token)).toEqual([renewed]);
    expect(resent[0]!.payload).toMatchObject({ aps: { alert: { body: "poison" } } });
    expect(await counted(metrics, "apns", "replayed")).toBe(1);
    // Gone from the dead letters: a second replay finds nothing and sends nothing.
    expect((await push.deadLetters(1_000)).map((d) => d.id)).not.toContain(apnsDead.id);
    expect(await push.replay([apnsDead.id])).toEqual({
      replayed: [],
      missing: [apnsDead.id],
      deviceGone: [],
    });
    await settled(push);
    expect(apns.delivered.length).toBe(before + 1);
  });

  it("replays at least once: a job store that fails leaves the dead letters listed under their ids, and a retry sends each once", async () => {
    const deadLetters = backends.pushDeadLetters;
    let down = true;
    const jobs: PushJobStore = {
      add: async (job) => {
        if (down) throw errors.unavailable("STORAGE_UNAVAILABLE", "the job store is out of reach");
        return backends.pushJobs.add(job);
      },
      put: (job) => backends.pushJobs.put(job),
      remove: (id) => backends.pushJobs.remove(id),
      list: (limit) => backends.pushJobs.list(limit),
      deadLetter: (job, error) => backends.pushJobs.deadLetter(job, error),
      close: async () => {},
    };
    const push = pushService(createMetrics(), { jobs, deadLetters });
    const { userId, devices } = await userWithEveryDevice();
    // Letters that failed in one millisecond, whose job ids begin with one another's (…-1, …-10).
    const at = Date.now() - 60_000;
    const now = vi.spyOn(Date, "now").mockReturnValue(at);
    const letters: PushDeadLetter[] = [];
    for (const n of [1, 10, 2, 11]) {
      letters.push(
        await deadLetters.add(
          {
            id: `${String(at).padStart(15, "0")}-replay-${userId}-${n}`,
            provider: "webhook",
            token: devices.webhook.token,
            device: devices.webhook,
            notification: {
              id: randomUUID(),
              userId,
              conversationId: "dm:14",
              title: "bob",
              body: `letter ${n}`,
              ttlSeconds: 60,
              messageCount: 1,
            },
            attempts: 5,
            notBeforeMs: 0,
            createdAtMs: at,
          },
          "webhook answered 503",
        ),
      );
    }
    now.mockRestore();
    const ids = [letters[0]!.id, letters[2]!.id]; // …-1 and …-2, not …-10 or …-11
    const listed = async () =>
      (await push.deadLetters(1_000)).map((d) => d.id).filter((id) => id.includes(userId));

    await expect(push.replay(ids)).rejects.toMatchObject({ reason: "STORAGE_UNAVAILABLE" });
    expect((await listed()).sort()).toEqual(letters.map((d) => d.id).sort());

    down = false;
    expect(await push.replay(ids)).toEqual({ replayed: ids, missing: [], deviceGone: [] });
    await settled(push);
    const received = webhook.delivered.filter((d) => d.path === `/${userId}`).map((d) => d.body.body);
    expect(received.sort()).toEqual(["letter 1", "letter 2"]);
    expect((await listed()).sort()).toEqual([letters[1]!.id, letters[3]!.id].sort());
    expect(await push.replay(ids)).toEqual({ replayed: [], missing: ids, deviceGone: [] });
  });
});
