/**
 * Push in the real server process (role all, embedded backend), configured the single-process way —
 * credentials in files, settings in SWITCHBOARD_PUSH_* — against the protocol-checking stand-ins: a
 * user registers devices over the WebSocket and goes offline, a message to them reaches APNs, FCM,
 * Web Push and the signed webhook; a user who is online gets no push; a notification waiting for its
 * retry survives kill -9 of the process and is delivered once after the restart.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { Provider } from "../../gen/switchboard/push/v1/push_pb.js";
import { TestPki } from "../helpers/certificates.js";
import { firstSampleOf, scrape } from "../helpers/metrics.js";
import { ApnsStandIn } from "../helpers/push-stand-ins/apns.js";
import { FcmStandIn } from "../helpers/push-stand-ins/fcm.js";
import { vapidKeys, WebPushStandIn } from "../helpers/push-stand-ins/web-push.js";
import { WebhookReceiver } from "../helpers/push-stand-ins/webhook.js";
import { expectCase, RawClient } from "../helpers/raw-client.js";
import { devToken, type ServerProcess, startServer } from "../helpers/server.js";

const WEBHOOK_SECRET = "whsec-process-test";
let server: ServerProcess;
let apns: ApnsStandIn;
let fcm: FcmStandIn;
let webPush: WebPushStandIn;
let webhook: WebhookReceiver;
const pki = new TestPki();
const files = mkdtempSync(join(tmpdir(), "switchboard-push-credentials-"));
const vapid = vapidKeys();
let users = 0;

beforeAll(async () => {
  const ca = pki.ca("web-push-ca");
  [apns, fcm, webPush, webhook] = await Promise.all([
    new ApnsStandIn().start(),
    new FcmStandIn().start(),
    new WebPushStandIn(vapid.publicKey, pki.issue(ca, { cn: "localhost" })).start(),
    new WebhookReceiver(WEBHOOK_SECRET).start(),
  ]);
  const file = (name: string, content: string) => {
    writeFileSync(join(files, name), content, { mode: 0o600 });
    return join(files, name);
  };
  server = await startServer({
    env: {
      // The stand-ins' certificates, trusted the way an operator adds a private CA.
      NODE_EXTRA_CA_CERTS: file("stand-in-cas.pem", apns.ca + ca.cert),
      SWITCHBOARD_PUSH_APNS_KEY_FILE: file("AuthKey.p8", apns.keyPem),
      SWITCHBOARD_PUSH_APNS_KEY_ID: apns.keyId,
      SWITCHBOARD_PUSH_APNS_TEAM_ID: apns.teamId,
      SWITCHBOARD_PUSH_APNS_TOPIC: apns.topic,
      SWITCHBOARD_PUSH_APNS_ORIGIN: apns.origin,
      SWITCHBOARD_PUSH_FCM_SERVICE_ACCOUNT_FILE: file("service-account.json", fcm.serviceAccountJson()),
      SWITCHBOARD_PUSH_FCM_ORIGIN: fcm.origin,
      SWITCHBOARD_PUSH_WEBPUSH_VAPID_PUBLIC_KEY: vapid.publicKey,
      SWITCHBOARD_PUSH_WEBPUSH_VAPID_PRIVATE_KEY_FILE: file("vapid.key", vapid.privateKey),
      SWITCHBOARD_PUSH_WEBPUSH_SUBJECT: "mailto:push@switchboard.dev",
      SWITCHBOARD_PUSH_WEBHOOK_SECRET_FILE: file("webhook.secret", WEBHOOK_SECRET),
      // The stand-ins listen on loopback, which users' URLs may not reach otherwise.
      SWITCHBOARD_PUSH_ALLOW_PRIVATE_ENDPOINTS: "true",
    },
  });
});

afterAll(async () => {
  await server?.dispose();
  await Promise.all([apns?.close(), fcm?.close(), webPush?.close(), webhook?.close()]);
  pki.close();
  rmSync(files, { recursive: true, force: true });
});

async function connect(user: string): Promise<RawClient> {
  const client = await RawClient.connect(server.url, { token: await devToken(server.dataDir, user) });
  await client.syncAll();
  return client;
}

/** The first sample of `name` on the server's /metrics whose labels include `label` (0 when none). */
async function metric(name: string, label = ""): Promise<number> {
  return firstSampleOf(await scrape(server.httpUrl), name, label) ?? 0;
}

/** Open WebSocket connections, as the server counts them. */
const connectionsOpen = () => metric("switchboard_gateway_connections");

/**
 * Closes a device's connection and waits until the server has dropped its session. The client sees
 * the close before the server does; a message sent in between still goes to the closing session,
 * and so is not pushed (the device gets it on its next sync).
 */
async function disconnect(client: RawClient): Promise<void> {
  const open = await connectionsOpen();
  client.close();
  await client.closed;
  await vi.waitFor(async () => expect(await connectionsOpen()).toBe(open - 1), {
    timeout: 5_000,
    interval: 20,
  });
}

async function send(from: RawClient, to: string, body: string) {
  const reply = await from.request({
    case: "send",
    value: { target: { case: "toUser", value: to }, clientMsgId: `c-${++users}`, body },
  });
  return expectCase(reply, "ack");
}

describe("push in the server process", () => {
  it("notifies an offline user's registered devices through APNs, FCM, Web Push and the signed webhook", async () => {
    const alice = `alice-${++users}`;
    const bob = `bob-${users}`;
    const apnsToken = "ab".repeat(32);
    const browser = webPush.subscribe();
    const phone = await connect(alice);
    for (const [deviceId, provider, token] of [
      ["iphone", Provider.APNS, apnsToken],
      ["pixel", Provider.FCM, `fcm-${alice}`],
      ["laptop", Provider.WEBPUSH, browser.token],
      ["crm", Provider.WEBHOOK, `${webhook.origin}/${alice}`],
    ] as const) {
      const reply = await phone.request({ case: "registerDevice", value: { deviceId, provider, token } });
      expect(reply.kind.case).toBe("ok");
    }
    const wrong = await phone.request({
      case: "registerDevice",
      value: { deviceId: "ipad", provider: Provider.APNS, token: "not-a-device-token" },
    });
    expect(expectCase(wrong, "error")).toMatchObject({ reason: "INVALID_DEVICE_TOKEN" });
    await disconnect(phone);
    const sender = await connect(bob);
    const ack = await send(sender, alice, "are you there?");
    await vi.waitFor(
      () => {
        expect(apns.delivered.filter((d) => d.token === apnsToken)).toHaveLength(1);
        expect(fcm.delivered.filter((d) => d.message.token === `fcm-${alice}`)).toHaveLength(1);
        expect(webPush.delivered.filter((d) => d.subscriptionId === browser.id)).toHaveLength(1);
        expect(webhook.delivered.filter((d) => d.path === `/${alice}`)).toHaveLength(1);
      },
      { timeout: 15_000, interval: 100 },
    );
    const conversationId = ack.conversationId;
    expect(apns.delivered.find((d) => d.token === apnsToken)!.payload.aps.alert).toEqual({
      title: bob,
      body: "are you there?",
    });
    expect(apns.delivered.find((d) => d.token === apnsToken)!.headers["apns-collapse-id"]).toBe(
      conversationId,
    );
    expect(webPush.delivered.find((d) => d.subscriptionId === browser.id)!.payload).toMatchObject({
      title: bob,
      body: "are you there?",
      conversation_id: conversationId,
    });
    expect(webhook.delivered.find((d) => d.path === `/${alice}`)!.body).toMatchObject({
      user_id: alice,
      conversation_id: conversationId,
    });
    for (const standIn of [apns, fcm, webPush, webhook]) expect(standIn.script.violations).toEqual([]);
    await disconnect(sender);
  });

  it("does not notify a user who is online", async () => {
    const carol = `carol-${++users}`;
    const dave = `dave-${users}`;
    const online = await connect(carol);
    const reply = await online.request({
      case: "registerDevice",
      value: { deviceId: "crm", provider: Provider.WEBHOOK, token: `${webhook.origin}/${carol}` },
    });
    expect(reply.kind.case).toBe("ok");
    const sender = await connect(dave);
    await send(sender, carol, "hello while online");
    await online.nextEvent((f) => f.kind.case === "message");
    // Dave is the sender (never notified) and Carol is connected: nothing reaches the receiver.
    await new Promise((r) => setTimeout(r, 1_000));
    expect(webhook.delivered.filter((d) => d.path === `/${carol}`)).toEqual([]);
    await disconnect(online);
    await disconnect(sender);
  });

  it("keeps quiet for a conversation muted over the WebSocket, and while the user's do-not-disturb window is on", async () => {
    const erin = `erin-${++users}`;
    const frank = `frank-${users}`;
    const phone = await connect(erin);
    expectCase(
      await phone.request({
        case: "registerDevice",
        value: { deviceId: "crm", provider: Provider.WEBHOOK, token: `${webhook.origin}/${erin}` },
      }),
      "ok",
    );
    const sender = await connect(frank);
    // The conversation exists (a message while erin is online: no push), so erin can mute it.
    const conversationId = (await send(sender, erin, "hi, you are online")).conversationId;
    await phone.nextEvent((f) => f.kind.case === "message");
    // Only a member mutes, only into the future, and the settings read back.
    expect(
      expectCase(
        await phone.request({ case: "muteConversation", value: { conversationId: "g:1", untilMs: 0n } }),
        "error",
      ).reason,
    ).toBe("NOT_MEMBER");
    expect(
      expectCase(
        await phone.request({ case: "muteConversation", value: { conversationId, untilMs: 1n } }),
        "error",
      ).reason,
    ).toBe("INVALID_MUTE");
    expectCase(
      await phone.request({ case: "muteConversation", value: { conversationId, untilMs: 0n } }),
      "ok",
    );
    expect(
      expectCase(
        await phone.request({
          case: "setDoNotDisturb",
          value: { window: { startMinute: 60, endMinute: 60, timeZone: "UTC" } },
        }),
        "error",
      ).reason,
    ).toBe("INVALID_DO_NOT_DISTURB");
    const settings = expectCase(
      await phone.request({ case: "getNotificationSettings", value: {} }),
      "notificationSettings",
    );
    expect(settings.muted.map((m) => [m.conversationId, m.untilMs])).toEqual([[conversationId, 0n]]);
    expect(settings.doNotDisturb).toBeUndefined();
    await disconnect(phone);

    // The router asks push (erin is offline) and push keeps quiet: counted, not sent.
    const quieted = (result: string) => metric("switchboard_push_notifications_total", `result="${result}"`);
    const mutedBefore = await quieted("muted");
    await send(sender, erin, "muted, so silent");
    await vi.waitFor(async () => expect(await quieted("muted")).toBe(mutedBefore + 1), {
      timeout: 15_000,
      interval: 100,
    });
    // Unmuted, but inside a do-not-disturb window around now: still silent.
    const viaOther = await connect(erin);
    expectCase(await viaOther.request({ case: "unmuteConversation", value: { conversationId } }), "ok");
    const minute = new Date().getUTCHours() * 60 + new Date().getUTCMinutes();
    expectCase(
      await viaOther.request({
        case: "setDoNotDisturb",
        value: {
          // A link, in the wrong case: kept as the zone spells itself.
          window: {
            startMinute: (minute + 1439) % 1440,
            endMinute: (minute + 2) % 1440,
            timeZone: "etc/utc",
          },
        },
      }),
      "ok",
    );
    expect(
      expectCase(
        await viaOther.request({ case: "getNotificationSettings", value: {} }),
        "notificationSettings",
      ).doNotDisturb?.timeZone,
    ).toBe("UTC");
    await disconnect(viaOther);
    const nightBefore = await quieted("do_not_disturb");
    await send(sender, erin, "night, so silent");
    await vi.waitFor(async () => expect(await quieted("do_not_disturb")).toBe(nightBefore + 1), {
      timeout: 15_000,
      interval: 100,
    });
    // The window cleared: the next message is notified, and it is the only one the receiver got.
    const third = await connect(erin);
    expectCase(await third.request({ case: "setDoNotDisturb", value: {} }), "ok");
    await disconnect(third);
    await send(sender, erin, "now you hear me");
    await vi.waitFor(() => expect(webhook.delivered.filter((d) => d.path === `/${erin}`)).toHaveLength(1), {
      timeout: 15_000,
      interval: 100,
    });
    await new Promise((r) => setTimeout(r, 500));
    const got = webhook.delivered.filter((d) => d.path === `/${erin}`);
    expect(got).toHaveLength(1);
    expect(got[0]!.body).toMatchObject({ conversation_id: conversationId, body: "now you hear me" });
    await disconnect(sender);
  });

  it("delivers a notification pending a retry after kill -9 and restart, once", {
    timeout: 60_000,
  }, async () => {
    const erin = `erin-${++users}`;
    const frank = `frank-${users}`;
    const phone = await connect(erin);
    const reply = await phone.request({
      case: "registerDevice",
      value: { deviceId: "crm", provider: Provider.WEBHOOK, token: `${webhook.origin}/${erin}` },
    });
    expect(reply.kind.case).toBe("ok");
    await disconnect(phone);
    // The receiver is down: the notification waits for its retry in the push job store.
    webhook.script.byToken.set(`/${erin}`, { status: 503, headers: { "retry-after": "2" } });
    const sender = await connect(frank);
    await send(sender, erin, "before the crash");
    // Killed as soon as the first attempt arrives: before the router stored its position past the
    // message, so the restarted router handles it again and asks push for the notification again.
    await vi.waitFor(() => expect(webhook.script.arrivals.some((a) => a.token === `/${erin}`)).toBe(true), {
      timeout: 15_000,
      interval: 2,
    });
    await server.kill();
    sender.close();
    webhook.script.byToken.delete(`/${erin}`);
    server = await server.restart();
    await vi.waitFor(() => expect(webhook.delivered.filter((d) => d.path === `/${erin}`)).toHaveLength(1), {
      timeout: 15_000,
      interval: 100,
    });
    expect(webhook.delivered.find((d) => d.path === `/${erin}`)!.body.body).toBe("before the crash");
    // (That the restarted process keeps the Retry-After is checked in push-delivery.test.ts: here the
    // kill may land before the killed process wrote down the Retry-After it was given.)
    await new Promise((r) => setTimeout(r, 1_000));
    expect(webhook.delivered.filter((d) => d.path === `/${erin}`)).toHaveLength(1);
    expect(webhook.script.violations).toEqual([]);
  });
});
