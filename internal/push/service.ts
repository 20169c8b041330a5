/**
 * Push: the device-token registry and notifications for users with no connected device.
 * Bursts collapse per (user, conversation) within `collapseWindowMs`, sends retry with exponential
 * backoff, and tokens a provider reports gone are pruned. Providers implemented here: the generic
 * webhook. Web Push, APNs and FCM tokens are registered and listed but not yet delivered (counted
 * as `unsupported` in switchboard_push_notifications_total) — see the push issue.
 */
import { Provider, type PushService } from "../../gen/switchboard/push/v1/push_pb.js";
import type { DeviceRecord, DeviceStore } from "../backends/types.js";
import { errors } from "../lib/errors.js";
import type { Logger } from "../lib/log.js";
import type { Metrics } from "../lib/metrics.js";
import type { ServiceImpl } from "../lib/rpc.js";
import { activeCarrier, context, inSpan, SpanKind, trace, tracing } from "../lib/tracing.js";

export const DEVICES_PER_USER_MAX = 20;
const TOKEN_CHARS_MAX = 4_096;
const DEVICE_ID_CHARS_MAX = 128;
const RETRIES_MAX = 3;

const providerNames: Record<number, DeviceRecord["provider"]> = {
  [Provider.WEBPUSH]: "webpush",
  [Provider.APNS]: "apns",
  [Provider.FCM]: "fcm",
  [Provider.WEBHOOK]: "webhook",
};
const providerOf = (name: DeviceRecord["provider"]): Provider =>
  Number(Object.entries(providerNames).find(([, n]) => n === name)?.[0] ?? 0) as Provider;

export interface Notification {
  userId: string;
  conversationId: string;
  title: string;
  body: string;
}

export interface PushOptions {
  devices: DeviceStore;
  webhookUrl: string;
  collapseWindowMs?: number;
  log: Logger;
  metrics: Metrics;
  fetchImpl?: typeof fetch;
}

export class Push {
  private readonly recent = new Map<string, number>();
  private readonly collapseWindowMs: number;
  private readonly fetchImpl: typeof fetch;
  private readonly inFlight = new Set<Promise<void>>();

  constructor(private readonly options: PushOptions) {
    this.collapseWindowMs = options.collapseWindowMs ?? 10_000;
    this.fetchImpl = options.fetchImpl ?? fetch;
  }

  /** Queues a notification; returns how many devices it targets (0 when collapsed). */
  async notify(n: Notification): Promise<number> {
    const key = `${n.userId}\u0000${n.conversationId}`;
    const now = Date.now();
    const last = this.recent.get(key);
    if (last !== undefined && now - last < this.collapseWindowMs) {
      this.options.metrics.pushNotifications.inc({ result: "collapsed" });
      return 0;
    }
    this.recent.set(key, now);
    if (this.recent.size > 100_000) this.recent.clear(); // bound memory; worst case one extra notification
    const devices = await this.options.devices.list(n.userId);
    const targets = devices.length > 0 ? devices : this.options.webhookUrl ? [null] : [];
    for (const device of targets) {
      const p = this.deliver(n, device).finally(() => this.inFlight.delete(p));
      this.inFlight.add(p);
    }
    return targets.length;
  }

  private deliver(n: Notification, device: DeviceRecord | null): Promise<void> {
    // A notification for a traced message is a client span of its trace (the router's fan-out).
    if (!tracing.on || !trace.getSpan(context.active())) return this.send(n, device);
    const provider = device?.provider ?? "webhook";
    return inSpan(
      `push ${provider}`,
      { kind: SpanKind.CLIENT, attributes: { "switchboard.push.provider": provider } },
      () => this.send(n, device),
    );
  }

  private async send(n: Notification, device: DeviceRecord | null): Promise<void> {
    const provider = device?.provider ?? "webhook";
    if (provider !== "webhook") {
      this.options.metrics.pushNotifications.inc({ result: "unsupported" });
      return;
    }
    const url = device?.token || this.options.webhookUrl;
    if (!url) return;
    for (let attempt = 0; ; attempt++) {
      try {
        const res = await this.fetchImpl(url, {
          method: "POST",
          // W3C trace context, so the receiving service can join the message's trace.
          headers: { "content-type": "application/json", ...(tracing.on ? activeCarrier() : undefined) },
          body: JSON.stringify({
            user_id: n.userId,
            conversation_id: n.conversationId,
            title: n.title,
            body: n.body,
          }),
          signal: AbortSignal.timeout(5_000),
        });
        if (res.status === 404 || res.status === 410) {
          if (device) await this.options.devices.remove(device.userId, device.deviceId);
          this.options.metrics.pushNotifications.inc({ result: "pruned" });
          return;
        }
        if (!res.ok) throw new Error(`webhook answered ${res.status}`);
        this.options.metrics.pushNotifications.inc({ result: "sent" });
        return;
      } catch (err) {
        if (attempt >= RETRIES_MAX) {
          this.options.metrics.pushNotifications.inc({ result: "failed" });
          this.options.log.warn("push: giving up", { userId: n.userId, err });
          return;
        }
        await new Promise((r) => setTimeout(r, 200 * 2 ** attempt));
      }
    }
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.inFlight]);
  }
}

export function pushServiceImpl(push: Push, devices: DeviceStore): ServiceImpl<typeof PushService> {
  return {
    async registerDevice(req) {
      const d = req.device;
      const provider = d ? providerNames[d.provider] : undefined;
      if (!d?.userId || !d.deviceId || d.deviceId.length > DEVICE_ID_CHARS_MAX || !provider) {
        throw errors.invalid(
          "INVALID_DEVICE",
          `device needs user_id, a device_id of 1-${DEVICE_ID_CHARS_MAX} characters and a provider`,
        );
      }
      if (d.token.length === 0 || d.token.length > TOKEN_CHARS_MAX) {
        throw errors.invalid("INVALID_TOKEN_LENGTH", `token must have 1-${TOKEN_CHARS_MAX} characters`);
      }
      const existing = await devices.list(d.userId);
      if (existing.length >= DEVICES_PER_USER_MAX && !existing.some((e) => e.deviceId === d.deviceId)) {
        throw errors.exhausted(
          "TOO_MANY_DEVICES",
          `a user may register at most ${DEVICES_PER_USER_MAX} devices`,
        );
      }
      await devices.put({
        userId: d.userId,
        deviceId: d.deviceId,
        provider,
        token: d.token,
        registeredAtMs: Date.now(),
      });
      return {};
    },
    async unregisterDevice(req) {
      await devices.remove(req.userId, req.deviceId);
      return {};
    },
    async listDevices(req) {
      const list = await devices.list(req.userId);
      return {
        devices: list.map((d) => ({
          userId: d.userId,
          deviceId: d.deviceId,
          provider: providerOf(d.provider),
          token: d.token,
          registeredAtMs: BigInt(d.registeredAtMs),
        })),
      };
    },
    async notify(req) {
      const n = await push.notify({
        userId: req.userId,
        conversationId: req.conversationId,
        title: req.title,
        body: req.body,
      });
      return { devices: n };
    },
  };
}
