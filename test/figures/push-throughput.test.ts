/**
 * Push figures, in the opt-in `figures` project (`npx tsc -p tsconfig.json && npx vitest run --project
 * figures`; not part of `npm test`: it measures, it asserts only that everything arrived):
 * notifications per second the push service sustains against each protocol-checking stand-in
 * (every request verified, Web Push payloads decrypted, on the same two cores as the service), and
 * the latency from a message's ack to the provider's request through the real server process.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it, vi } from "vitest";
import { Provider } from "../../gen/switchboard/push/v1/push_pb.js";
import { EmbeddedBackends } from "../../internal/backends/embedded/index.js";
import { createLogger } from "../../internal/lib/log.js";
import { createMetrics } from "../../internal/lib/metrics.js";
import { ApnsProvider } from "../../internal/push/providers/apns.js";
import { FcmProvider, parseServiceAccount } from "../../internal/push/providers/fcm.js";
import type { PushProvider } from "../../internal/push/providers/types.js";
import { WebPushProvider } from "../../internal/push/providers/web-push.js";
import { WebhookProvider } from "../../internal/push/providers/webhook.js";
import { Push } from "../../internal/push/service.js";
import { ApnsStandIn } from "../helpers/push-stand-ins/apns.js";
import { FcmStandIn } from "../helpers/push-stand-ins/fcm.js";
import { vapidKeys, WebPushStandIn } from "../helpers/push-stand-ins/web-push.js";
import { WebhookReceiver } from "../helpers/push-stand-ins/webhook.js";
import { expectCase, RawClient } from "../helpers/raw-client.js";
import { devToken, startServer } from "../helpers/server.js";

const NOTIFICATIONS = 2_000;
const dataDir = mkdtempSync(join(tmpdir(), "switchboard-push-figures-"));
afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

const percentile = (sorted: number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;

describe("push figures", () => {
  it("notifications per second per provider stand-in", { timeout: 120_000 }, async () => {
    const backends = new EmbeddedBackends({ dataDir: join(dataDir, "service") });
    const vapid = vapidKeys();
    const apns = await new ApnsStandIn().start();
    const fcm = await new FcmStandIn().start();
    const webPush = await new WebPushStandIn(vapid.publicKey).start();
    const webhook = await new WebhookReceiver("secret").start();
    const browser = webPush.subscribe();
    const cases: [string, PushProvider, string, () => number][] = [
      [
        "apns",
        new ApnsProvider({
          keyPem: apns.keyPem,
          keyId: apns.keyId,
          teamId: apns.teamId,
          topic: apns.topic,
          origin: apns.origin,
          ca: apns.ca,
        }),
        "ab".repeat(32),
        () => apns.delivered.length,
      ],
      [
        "fcm",
        new FcmProvider({
          serviceAccount: parseServiceAccount(fcm.serviceAccountJson(), "figures"),
          origin: fcm.origin,
        }),
        "fcm-token",
        () => fcm.delivered.length,
      ],
      [
        "webpush",
        new WebPushProvider({
          vapidPublicKey: vapid.publicKey,
          vapidPrivateKey: vapid.privateKey,
          subject: "mailto:a@b.c",
          allowHttpEndpoints: true,
        }),
        browser.token,
        () => webPush.delivered.length,
      ],
      [
        "webhook",
        new WebhookProvider({ signingSecret: "secret" }),
        `${webhook.origin}/hook`,
        () => webhook.delivered.length,
      ],
    ];
    const figures: Record<string, number> = {};
    for (const [name, provider, token, delivered] of cases) {
      const userId = `figures-${name}`;
      await backends.devices.put({
        userId,
        deviceId: "d",
        provider: name as never,
        token,
        registeredAtMs: Date.now(),
      });
      const push = new Push({
        devices: backends.devices,
        providers: { [name]: provider },
        webhookUrl: "",
        collapseWindowMs: 0,
        pendingMax: NOTIFICATIONS,
        log: createLogger(),
        metrics: createMetrics(),
      });
      const started = performance.now();
      for (let i = 0; i < NOTIFICATIONS; i++) {
        await push.notify({ userId, conversationId: `g:${i}`, title: "bob", body: `message ${i}` });
      }
      await vi.waitFor(() => expect(delivered()).toBe(NOTIFICATIONS), { timeout: 100_000, interval: 20 });
      figures[name] = Math.round(NOTIFICATIONS / ((performance.now() - started) / 1000));
      await push.close();
    }
    for (const s of [apns, fcm, webPush, webhook]) expect(s.script.violations).toEqual([]);
    console.log(`push figures: notifications/s per stand-in ${JSON.stringify(figures)}`);
    await Promise.all([apns.close(), fcm.close(), webPush.close(), webhook.close()]);
    await backends.close();
  });

  it("message ack to provider request through the server process", { timeout: 120_000 }, async () => {
    const webhook = await new WebhookReceiver("secret").start();
    const secretFile = join(dataDir, "webhook.secret");
    writeFileSync(secretFile, "secret");
    const server = await startServer({
      env: {
        SWITCHBOARD_PUSH_WEBHOOK_SECRET_FILE: secretFile,
        SWITCHBOARD_PUSH_COLLAPSE_WINDOW_MS: "0",
        SWITCHBOARD_PUSH_ALLOW_PRIVATE_ENDPOINTS: "true",
      },
    });
    try {
      const alice = await RawClient.connect(server.url, { token: await devToken(server.dataDir, "alice") });
      await alice.request({
        case: "registerDevice",
        value: { deviceId: "hook", provider: Provider.WEBHOOK, token: `${webhook.origin}/alice` },
      });
      alice.close();
      await alice.closed;
      const bob = await RawClient.connect(server.url, { token: await devToken(server.dataDir, "bob") });
      await new Promise((r) => setTimeout(r, 500));
      const ackedAt = new Map<string, number>();
      const messages = 400;
      for (let i = 0; i < messages; i++) {
        const reply = await bob.request({
          case: "send",
          value: { target: { case: "toUser", value: "alice" }, clientMsgId: `m-${i}`, body: `m${i}` },
        });
        expectCase(reply, "ack");
        ackedAt.set(`m${i}`, performance.now() + performance.timeOrigin);
        await new Promise((r) => setTimeout(r, 25)); // 40 msgs/s, under the per-connection send rate
      }
      await vi.waitFor(() => expect(webhook.delivered.length).toBe(messages), {
        timeout: 30_000,
        interval: 50,
      });
      const arrivals = webhook.script.arrivals.map((a, i) => ({
        at: a.atMs,
        body: webhook.delivered[i]!.body.body,
      }));
      const latencies = arrivals.map((a) => a.at - ackedAt.get(a.body)!).sort((x, y) => x - y);
      console.log(
        `push figures: ack → webhook request over ${messages} messages: p50 ${percentile(latencies, 0.5).toFixed(1)} ms, p99 ${percentile(latencies, 0.99).toFixed(1)} ms, max ${latencies.at(-1)!.toFixed(1)} ms`,
      );
      bob.close();
    } finally {
      await server.dispose();
      await webhook.close();
    }
  });
});
