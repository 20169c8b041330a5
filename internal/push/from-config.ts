/**
 * The push service of a process, and the providers it can use, from its configuration: each provider whose credentials are
 * configured (files, so the same settings serve single-process mode and a Pod mounting the
 * ChatCluster's Secrets). Misconfiguration (a key file missing, a half-configured provider) stops the
 * process at start with the setting named, rather than failing every notification later.
 */
import { readFileSync } from "node:fs";
import type {
  DeviceStore,
  NotificationSettingsStore,
  PushDeadLetterStore,
  PushJobQueue,
  PushJobStore,
  ReceiptStore,
} from "../backends/types.js";
import type { Config } from "../lib/config.js";
import type { Logger } from "../lib/log.js";
import type { Metrics } from "../lib/metrics.js";
import { guardedFetch, operatorUrlFetch } from "./outbound-guard.js";
import { APNS_DEVELOPMENT_ORIGIN, APNS_PRODUCTION_ORIGIN, ApnsProvider } from "./providers/apns.js";
import { FcmProvider, parseServiceAccount } from "./providers/fcm.js";
import { WebPushProvider } from "./providers/web-push.js";
import { WebhookProvider } from "./providers/webhook.js";
import { type ProviderSet, Push } from "./service.js";

function readSetting(file: string, setting: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (err) {
    throw new Error(`${setting}: cannot read ${file}: ${(err as Error).message}`);
  }
}

function requireAll(prefix: string, values: Record<string, string>): void {
  const missing = Object.entries(values)
    .filter(([, v]) => v === "")
    .map(([k]) => `${prefix}.${k}`);
  if (missing.length > 0) throw new Error(`${prefix} is half configured: set ${missing.join(", ")}`);
}

/**
 * The providers with credentials, and the webhook provider for push.webhookUrl's own jobs (undefined
 * when it is not set).
 */
export function providersFromConfig(push: Config["push"]): {
  providers: ProviderSet;
  operatorWebhook: WebhookProvider | undefined;
} {
  // Users choose Web Push endpoints and webhook device URLs: those requests go through the guard,
  // even a device that names push.webhookUrl's host (only that URL's own jobs are the operator's).
  const userUrlFetch = guardedFetch({ allowPrivate: push.allowPrivateEndpoints });
  const signingSecret = push.webhookSecretFile
    ? readSetting(push.webhookSecretFile, "push.webhookSecretFile").trim()
    : "";
  const providers: ProviderSet = {
    webhook: new WebhookProvider({ signingSecret, fetchImpl: userUrlFetch }),
  };
  const operatorWebhook = push.webhookUrl
    ? new WebhookProvider({ signingSecret, fetchImpl: operatorUrlFetch(push.webhookUrl) })
    : undefined;
  const { apns, fcm, webpush } = push;
  if (apns.keyFile) {
    requireAll("push.apns", { keyId: apns.keyId, teamId: apns.teamId, topic: apns.topic });
    providers.apns = new ApnsProvider({
      keyPem: readSetting(apns.keyFile, "push.apns.keyFile"),
      keyId: apns.keyId,
      teamId: apns.teamId,
      topic: apns.topic,
      origin:
        apns.origin ||
        (apns.environment === "development" ? APNS_DEVELOPMENT_ORIGIN : APNS_PRODUCTION_ORIGIN),
    });
  }
  if (fcm.serviceAccountFile) {
    const json = readSetting(fcm.serviceAccountFile, "push.fcm.serviceAccountFile");
    providers.fcm = new FcmProvider({
      serviceAccount: parseServiceAccount(json, `push.fcm.serviceAccountFile ${fcm.serviceAccountFile}`),
      origin: fcm.origin,
    });
  }
  if (webpush.vapidPublicKey) {
    requireAll("push.webpush", {
      vapidPrivateKeyFile: webpush.vapidPrivateKeyFile,
      subject: webpush.subject,
    });
    if (!/^(mailto:|https:)/.test(webpush.subject)) {
      throw new Error(
        `push.webpush.subject must be a mailto: or https: URL, not ${JSON.stringify(webpush.subject)}`,
      );
    }
    providers.webpush = new WebPushProvider({
      vapidPublicKey: webpush.vapidPublicKey,
      vapidPrivateKey: readSetting(webpush.vapidPrivateKeyFile, "push.webpush.vapidPrivateKeyFile").trim(),
      subject: webpush.subject,
      fetchImpl: userUrlFetch,
    });
  }
  return { providers, operatorWebhook };
}

/**
 * The push service as configured: its providers, privacy mode, expiry and retry bounds; `jobs` makes
 * its deliveries durable (call `recover()` once to resume a previous process's).
 */
export function pushFromConfig(
  config: Config,
  devices: DeviceStore,
  settings: NotificationSettingsStore,
  stores: {
    /** For the unread count in the payloads. */
    receipts?: Pick<ReceiptStore, "get"> | undefined;
    jobs?: PushJobStore | undefined;
    queue?: PushJobQueue | undefined;
    deadLetters?: PushDeadLetterStore | undefined;
    /** Whether the user has a device connected now (a burst's summary is not sent then). */
    online?: ((userId: string) => Promise<boolean>) | undefined;
  },
  log: Logger,
  metrics: Metrics,
): Push {
  const push = config.push;
  const { providers, operatorWebhook } = providersFromConfig(push);
  log.info("push: providers", { configured: Object.keys(providers), privacyMode: push.privacyMode });
  return new Push({
    devices,
    settings,
    receipts: stores.receipts,
    jobs: stores.jobs,
    queue: stores.queue,
    deadLetters: stores.deadLetters,
    providers,
    operatorWebhook,
    online: stores.online,
    webhookUrl: push.webhookUrl,
    privacyMode: push.privacyMode,
    allowPrivateEndpoints: push.allowPrivateEndpoints,
    ttlSeconds: push.ttlSeconds,
    collapseWindowMs: push.collapseWindowMs,
    retry: {
      attemptsMax: push.attemptsMax,
      backoffBaseMs: 500,
      backoffMaxMs: 30_000,
      retryAfterMaxMs: push.retryAfterMaxMs,
    },
    pendingMax: push.pendingMax,
    sendsInFlightMax: push.sendsInFlightMax,
    log,
    metrics,
  });
}
