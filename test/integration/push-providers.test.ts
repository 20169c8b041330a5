/**
 * Each push provider against a local stand-in that checks the real protocol (test/helpers/push-stand-ins):
 * signatures verified with the public half of the test keys, Web Push payloads decrypted with the
 * subscription's private key, webhook HMACs recomputed. Also the mapping of provider answers to
 * outcomes (docs/adr/0008 §3) and the renewal of provider credentials.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ApnsProvider } from "../../internal/push/providers/apns.js";
import { FcmProvider, parseServiceAccount } from "../../internal/push/providers/fcm.js";
import type { PushNotification } from "../../internal/push/providers/types.js";
import { WebPushProvider } from "../../internal/push/providers/web-push.js";
import { WebhookProvider } from "../../internal/push/providers/webhook.js";
import { ApnsStandIn } from "../helpers/push-stand-ins/apns.js";
import { FcmStandIn } from "../helpers/push-stand-ins/fcm.js";
import { vapidKeys, WebPushStandIn } from "../helpers/push-stand-ins/web-push.js";
import { WebhookReceiver } from "../helpers/push-stand-ins/webhook.js";

let sequence = 0;
const notification = (overrides: Partial<PushNotification> = {}): PushNotification => ({
  id: `n-${++sequence}`,
  userId: "alice",
  conversationId: "g:382805782816620547",
  title: "bob",
  body: "lunch at noon? 🍜",
  ttlSeconds: 3600,
  messageCount: 1,
  unreadCount: 4,
  ...overrides,
});
const deviceToken = (n: number) => n.toString(16).padStart(64, "0");

describe("APNs provider against an HTTP/2 stand-in", () => {
  let apns: ApnsStandIn;
  let provider: ApnsProvider;
  const now = Date.now();
  beforeAll(async () => {
    apns = await new ApnsStandIn().start();
    provider = new ApnsProvider({
      keyPem: apns.keyPem,
      keyId: apns.keyId,
      teamId: apns.teamId,
      topic: apns.topic,
      origin: apns.origin,
      ca: apns.ca,
      nowMs: () => now,
    });
  });
  afterAll(async () => {
    await provider?.close();
    await apns?.close();
  });

  it("delivers with a verified ES256 provider token and every required header", async () => {
    const n = notification();
    expect(await provider.send(deviceToken(1), n)).toEqual({ kind: "delivered" });
    expect(apns.script.violations).toEqual([]);
    const got = apns.delivered.at(-1)!;
    expect(got.token).toBe(deviceToken(1));
    expect(got.payload.aps.alert).toEqual({ title: "bob", body: "lunch at noon? 🍜" });
    expect(got.payload.aps["thread-id"]).toBe(n.conversationId);
    expect(got.payload.unread_count).toBe(4);
    expect(got.headers["apns-push-type"]).toBe("alert");
    expect(got.headers["apns-collapse-id"]).toBe(n.conversationId);
    expect(Number(got.headers["apns-expiration"])).toBe(Math.floor(now / 1000) + 3600);
  });

  it("reuses the provider token within 50 minutes and signs a new one after", async () => {
    // The stand-in checks iat against the real clock, so the provider's clock starts 51 minutes back.
    let clock = Date.now() - 51 * 60 * 1000;
    const renewing = new ApnsProvider({
      keyPem: apns.keyPem,
      keyId: apns.keyId,
      teamId: apns.teamId,
      topic: apns.topic,
      origin: apns.origin,
      ca: apns.ca,
      nowMs: () => clock,
    });
    try {
      const before = apns.providerTokens.size;
      await renewing.send(deviceToken(2), notification());
      clock += 49 * 60 * 1000;
      await renewing.send(deviceToken(3), notification());
      expect(apns.providerTokens.size).toBe(before + 1);
      clock = Date.now();
      expect(await renewing.send(deviceToken(4), notification())).toEqual({ kind: "delivered" });
      expect(apns.providerTokens.size).toBe(before + 2);
      expect(apns.script.violations).toEqual([]);
    } finally {
      await renewing.close();
    }
  });

  it("hashes a conversation id longer than 64 bytes into apns-collapse-id", async () => {
    await provider.send(deviceToken(5), notification({ conversationId: `g:${"x".repeat(100)}` }));
    expect(apns.script.violations).toEqual([]);
    expect(String(apns.delivered.at(-1)!.headers["apns-collapse-id"]).length).toBeLessThanOrEqual(64);
  });

  it("maps dead tokens to prune, 429 and 5xx to retry (Retry-After honoured), other 4xx to failed", async () => {
    apns.script.byToken.set(deviceToken(10), { status: 410, body: { reason: "Unregistered", timestamp: 1 } });
    apns.script.byToken.set(deviceToken(11), { status: 400, body: { reason: "BadDeviceToken" } });
    apns.script.byToken.set(deviceToken(12), { status: 400, body: { reason: "DeviceTokenNotForTopic" } });
    apns.script.byToken.set(deviceToken(13), {
      status: 429,
      body: { reason: "TooManyRequests" },
      headers: { "retry-after": "7" },
    });
    apns.script.byToken.set(deviceToken(14), { status: 503, body: { reason: "ServiceUnavailable" } });
    apns.script.byToken.set(deviceToken(15), { status: 400, body: { reason: "PayloadEmpty" } });
    const outcomes = await Promise.all(
      [10, 11, 12, 13, 14, 15].map((t) => provider.send(deviceToken(t), notification())),
    );
    expect(outcomes.map((o) => o.kind)).toEqual(["prune", "prune", "prune", "retry", "retry", "failed"]);
    expect(outcomes[0]).toMatchObject({ reason: "apns answered 410 Unregistered" });
    expect(outcomes[3]).toMatchObject({ afterMs: 7000 });
    expect(outcomes[4]).toMatchObject({ afterMs: undefined });
    expect(await provider.send("not-hex/../../x", notification())).toMatchObject({ kind: "prune" });
  });

  it("answers ExpiredProviderToken by signing a new token and asking for an immediate retry", async () => {
    const before = apns.providerTokens.size;
    apns.script.queued.push({ status: 403, body: { reason: "ExpiredProviderToken" } });
    expect(await provider.send(deviceToken(20), notification())).toEqual({
      kind: "retry",
      reason: "apns answered 403 ExpiredProviderToken",
      afterMs: 0,
    });
    expect(await provider.send(deviceToken(20), notification())).toEqual({ kind: "delivered" });
    expect(apns.providerTokens.size).toBe(before + 1);
  });

  it("reports an unreachable APNs as a retry", async () => {
    const offline = new ApnsProvider({
      keyPem: apns.keyPem,
      keyId: apns.keyId,
      teamId: apns.teamId,
      topic: apns.topic,
      origin: "https://127.0.0.1:1",
      ca: apns.ca,
    });
    try {
      expect(await offline.send(deviceToken(1), notification())).toMatchObject({ kind: "retry" });
    } finally {
      await offline.close();
    }
  });
});

describe("FCM HTTP v1 provider against a token endpoint and messages:send stand-in", () => {
  let fcm: FcmStandIn;
  let provider: FcmProvider;
  beforeAll(async () => {
    fcm = await new FcmStandIn().start();
    provider = new FcmProvider({
      serviceAccount: parseServiceAccount(fcm.serviceAccountJson(), "test key"),
      origin: fcm.origin,
    });
  });
  afterAll(async () => {
    await provider?.close();
    await fcm?.close();
  });

  it("delivers with one verified JWT-bearer grant shared by concurrent sends, and the overrides set", async () => {
    const sends = await Promise.all([1, 2, 3].map((i) => provider.send(`fcm-token-${i}`, notification())));
    expect(sends).toEqual([{ kind: "delivered" }, { kind: "delivered" }, { kind: "delivered" }]);
    expect(fcm.script.violations).toEqual([]);
    expect(fcm.granted.size).toBe(1);
    const { message } = fcm.delivered.at(-1)!;
    expect(message.notification).toEqual({ title: "bob", body: "lunch at noon? 🍜" });
    expect(message.data).toMatchObject({ conversation_id: "g:382805782816620547", unread_count: "4" });
    expect(message.android).toMatchObject({
      collapse_key: "g:382805782816620547",
      ttl: "3600s",
      priority: "HIGH",
    });
    expect(message.apns?.headers).toMatchObject({ "apns-collapse-id": "g:382805782816620547" });
    expect(message.webpush?.headers).toMatchObject({ TTL: "3600", Urgency: "high" });
  });

  it("asks for a new access token a minute before the cached one expires, and after a 401", async () => {
    let clock = Date.now();
    const renewing = new FcmProvider({
      serviceAccount: parseServiceAccount(fcm.serviceAccountJson(), "test key"),
      origin: fcm.origin,
      nowMs: () => clock,
    });
    const before = fcm.granted.size;
    await renewing.send("fcm-token-4", notification());
    clock += 3530 * 1000; // 70 s before expiry: still cached
    await renewing.send("fcm-token-5", notification());
    expect(fcm.granted.size).toBe(before + 1);
    clock += 20 * 1000; // 50 s before expiry: renewed
    await renewing.send("fcm-token-6", notification());
    expect(fcm.granted.size).toBe(before + 2);
    fcm.script.queued.push({ status: 401, body: { error: { code: 401, status: "UNAUTHENTICATED" } } });
    expect(await renewing.send("fcm-token-7", notification())).toMatchObject({ kind: "retry", afterMs: 0 });
    expect(await renewing.send("fcm-token-7", notification())).toEqual({ kind: "delivered" });
    expect(fcm.granted.size).toBe(before + 3);
    expect(fcm.script.violations).toEqual([]);
  });

  it("maps UNREGISTERED and a token INVALID_ARGUMENT to prune, quota and 5xx to retry, other errors to failed", async () => {
    const fcmError = (code: number, status: string, errorCode: string, field?: string) => ({
      status: code,
      body: {
        error: {
          code,
          status,
          message: "test",
          details: [
            { "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", errorCode },
            ...(field
              ? [{ "@type": "type.googleapis.com/google.rpc.BadRequest", fieldViolations: [{ field }] }]
              : []),
          ],
        },
      },
    });
    fcm.script.byToken.set("gone", fcmError(404, "NOT_FOUND", "UNREGISTERED"));
    fcm.script.byToken.set(
      "malformed",
      fcmError(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "message.token"),
    );
    fcm.script.byToken.set(
      "bad-ttl",
      fcmError(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "message.android.ttl"),
    );
    fcm.script.byToken.set("quota", {
      ...fcmError(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
      headers: { "retry-after": "3" },
    });
    fcm.script.byToken.set("down", fcmError(503, "UNAVAILABLE", "UNAVAILABLE"));
    fcm.script.byToken.set("other-project", fcmError(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH"));
    const tokens = ["gone", "malformed", "bad-ttl", "quota", "down", "other-project"];
    const outcomes = await Promise.all(tokens.map((t) => provider.send(t, notification())));
    expect(outcomes.map((o) => o.kind)).toEqual(["prune", "prune", "failed", "retry", "retry", "prune"]);
    expect(outcomes[3]).toMatchObject({ afterMs: 3000 });
  });

  it("fails when the token endpoint refuses the key, and retries when it is down", async () => {
    const other = new FcmStandIn(); // a different key: its assertion does not verify at `fcm`
    const wrongKey = JSON.parse(other.serviceAccountJson()) as Record<string, string>;
    const refused = new FcmProvider({
      serviceAccount: parseServiceAccount(
        JSON.stringify({
          ...wrongKey,
          client_email: fcm.clientEmail,
          token_uri: fcm.tokenUri,
          project_id: fcm.projectId,
        }),
        "wrong key",
      ),
      origin: fcm.origin,
    });
    expect(await refused.send("fcm-token-1", notification())).toMatchObject({ kind: "failed" });
    expect(fcm.script.violations).toEqual(["invalid_grant"]);
    fcm.script.violations.length = 0;
    const down = new FcmProvider({
      serviceAccount: parseServiceAccount(
        JSON.stringify({ ...JSON.parse(fcm.serviceAccountJson()), token_uri: "http://127.0.0.1:1/token" }),
        "unreachable token endpoint",
      ),
      origin: fcm.origin,
    });
    expect(await down.send("fcm-token-1", notification())).toMatchObject({ kind: "retry" });
  });

  it("names the missing field of a service-account key", () => {
    expect(() => parseServiceAccount(JSON.stringify({ client_email: "a" }), "key.json")).toThrow(
      'key.json: a service-account key needs "private_key"',
    );
  });
});

describe("Web Push provider against a push service stand-in that decrypts", () => {
  const vapid = vapidKeys();
  let service: WebPushStandIn;
  let provider: WebPushProvider;
  beforeAll(async () => {
    service = await new WebPushStandIn(vapid.publicKey).start();
    provider = new WebPushProvider({
      vapidPublicKey: vapid.publicKey,
      vapidPrivateKey: vapid.privateKey,
      subject: "mailto:push@switchboard.dev",
      allowHttpEndpoints: true,
    });
  });
  afterAll(async () => {
    await provider?.close();
    await service?.close();
  });

  it("delivers an aes128gcm payload the subscription's private key decrypts, with a valid VAPID JWT, TTL, Urgency and Topic", async () => {
    const browser = service.subscribe();
    const n = notification();
    expect(await provider.send(browser.token, n)).toEqual({ kind: "delivered" });
    expect(service.script.violations).toEqual([]);
    const got = service.delivered.at(-1)!;
    expect(got.subscriptionId).toBe(browser.id);
    expect(got.payload).toEqual({
      title: "bob",
      body: "lunch at noon? 🍜",
      conversation_id: n.conversationId,
      notification_id: n.id,
      message_count: 1,
      unread_count: 4,
    });
    expect(got.headers.ttl).toBe("3600");
    expect(got.headers.urgency).toBe("high");
    expect(got.headers.topic).toMatch(/^[A-Za-z0-9_-]{32}$/);
  });

  it("encrypts every payload afresh (same text, different bodies) and decrypts each", async () => {
    const browser = service.subscribe();
    await provider.send(browser.token, notification({ id: "same" }));
    await provider.send(browser.token, notification({ id: "same" }));
    expect(service.script.violations).toEqual([]);
    expect(service.delivered.slice(-2).map((d) => d.payload.notification_id)).toEqual(["same", "same"]);
  });

  it("maps 404 and 410 to prune, 429 and 5xx to retry, 413 to failed; prunes an unusable subscription", async () => {
    const subs = [1, 2, 3, 4, 5].map(() => service.subscribe());
    service.script.byToken.set(subs[0]!.id, { status: 404 });
    service.script.byToken.set(subs[1]!.id, { status: 410 });
    service.script.byToken.set(subs[2]!.id, { status: 429, headers: { "retry-after": "2" } });
    service.script.byToken.set(subs[3]!.id, { status: 502 });
    service.script.byToken.set(subs[4]!.id, { status: 413 });
    const outcomes = await Promise.all(subs.map((s) => provider.send(s.token, notification())));
    expect(outcomes.map((o) => o.kind)).toEqual(["prune", "prune", "retry", "retry", "failed"]);
    expect(outcomes[2]).toMatchObject({ afterMs: 2000 });
    for (const token of [
      "not json",
      JSON.stringify({ endpoint: "https://push.example/x", keys: { p256dh: "AAAA", auth: "AAAA" } }),
      JSON.stringify({ endpoint: "ftp://push.example/x" }),
    ]) {
      expect(await provider.send(token, notification())).toMatchObject({ kind: "prune" });
    }
    const https = new WebPushProvider({
      ...vapid,
      vapidPublicKey: vapid.publicKey,
      vapidPrivateKey: vapid.privateKey,
      subject: "mailto:a@b.c",
    });
    expect(await https.send(service.subscribe().token, notification())).toMatchObject({
      kind: "prune",
      reason: "webpush: the endpoint is not https",
    });
  });

  it("is refused by the push service when signing with another VAPID key", async () => {
    const other = vapidKeys();
    const wrong = new WebPushProvider({
      vapidPublicKey: other.publicKey,
      vapidPrivateKey: other.privateKey,
      subject: "mailto:push@switchboard.dev",
      allowHttpEndpoints: true,
    });
    expect(await wrong.send(service.subscribe().token, notification())).toMatchObject({ kind: "failed" });
    expect(service.script.violations).toEqual(["not the subscription's application server key"]);
    service.script.violations.length = 0;
  });
});

describe("webhook provider against a receiver that checks the HMAC", () => {
  let receiver: WebhookReceiver;
  beforeAll(async () => {
    receiver = await new WebhookReceiver("whsec-test-secret").start();
  });
  afterAll(async () => {
    await receiver?.close();
  });

  it("signs timestamp and body so the receiver's HMAC check passes", async () => {
    const provider = new WebhookProvider({ signingSecret: "whsec-test-secret" });
    const n = notification();
    expect(await provider.send(`${receiver.origin}/hook`, n)).toEqual({ kind: "delivered" });
    expect(receiver.script.violations).toEqual([]);
    expect(receiver.delivered.at(-1)!.body).toEqual({
      notification_id: n.id,
      user_id: "alice",
      conversation_id: n.conversationId,
      title: "bob",
      body: "lunch at noon? 🍜",
      message_count: 1,
      unread_count: 4,
    });
  });

  it("is refused with a wrong secret, an unsigned request, or a timestamp outside the replay window", async () => {
    const wrong = new WebhookProvider({ signingSecret: "another" });
    const unsigned = new WebhookProvider({ signingSecret: "" });
    const stale = new WebhookProvider({
      signingSecret: "whsec-test-secret",
      nowMs: () => Date.now() - 301_000,
    });
    for (const provider of [wrong, unsigned, stale]) {
      expect(await provider.send(`${receiver.origin}/hook`, notification())).toMatchObject({
        kind: "failed",
      });
    }
    expect(receiver.script.violations).toEqual([
      "bad signature",
      "no timestamp",
      "timestamp outside the replay window",
    ]);
    receiver.script.violations.length = 0;
  });

  it("maps 404/410 and a token that is no URL to prune, 429/5xx to retry, other 4xx to failed", async () => {
    const provider = new WebhookProvider({ signingSecret: "whsec-test-secret" });
    for (const [path, answer] of [
      ["/gone", { status: 410 }],
      ["/missing", { status: 404 }],
      ["/busy", { status: 429, headers: { "retry-after": "1" } }],
      ["/down", { status: 500 }],
      ["/bad", { status: 400 }],
    ] as const) {
      receiver.script.byToken.set(path, answer);
    }
    const outcomes = await Promise.all(
      ["/gone", "/missing", "/busy", "/down", "/bad"].map((p) =>
        provider.send(`${receiver.origin}${p}`, notification()),
      ),
    );
    expect(outcomes.map((o) => o.kind)).toEqual(["prune", "prune", "retry", "retry", "failed"]);
    expect(outcomes[2]).toMatchObject({ afterMs: 1000 });
    expect(await provider.send("not a url", notification())).toMatchObject({ kind: "prune" });
  });
});
