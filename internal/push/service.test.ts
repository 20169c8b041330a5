/**
 * The push service over in-memory stand-ins for its stores and one recording provider, on fake
 * timers: what a burst's summary checks when its collapse window closes.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type {
  DeviceRecord,
  DeviceStore,
  DoNotDisturb,
  NotificationSettingsStore,
} from "../backends/types.js";
import { discardingLogger } from "../lib/log.js";
import { createMetrics, type Metrics } from "../lib/metrics.js";
import type { PushNotification, PushProvider } from "./providers/types.js";
import { PENDING_PER_USER_MAX, Push } from "./service.js";

const WINDOW_MS = 10_000;
const device: DeviceRecord = {
  userId: "alice",
  deviceId: "crm",
  provider: "webhook",
  token: "https://hooks.example.com/alice",
  registeredAtMs: 1,
};

function setup() {
  const sent: PushNotification[] = [];
  const provider: PushProvider = {
    name: "webhook",
    async send(_token, n) {
      sent.push(n);
      return { kind: "delivered" };
    },
    async close() {},
  };
  const muted = new Set<string>();
  const user = { dnd: undefined as DoNotDisturb | undefined, online: false };
  const settings = {
    isMuted: async (userId: string, conversationId: string) => muted.has(`${userId}/${conversationId}`),
    doNotDisturb: async () => user.dnd,
  } as Partial<NotificationSettingsStore> as NotificationSettingsStore;
  const devices = { list: async () => [device] } as Partial<DeviceStore> as DeviceStore;
  const metrics = createMetrics();
  const push = new Push({
    devices,
    settings,
    providers: { webhook: provider },
    webhookUrl: "",
    collapseWindowMs: WINDOW_MS,
    online: async () => user.online,
    log: discardingLogger(),
    metrics,
  });
  return { push, sent, muted, user, metrics };
}

async function counted(metrics: Metrics, result: string): Promise<number> {
  const { values } = await metrics.pushNotifications.get();
  return values.find((v) => v.labels.result === result)?.value ?? 0;
}

const message = (body: string) => ({ userId: "alice", conversationId: "g:1", title: "bob", body });

describe("a burst's summary", () => {
  beforeEach(() => {
    // Noon UTC: inside a do-not-disturb window of 11:00-13:00 UTC.
    vi.useFakeTimers({ now: Date.UTC(2026, 0, 5, 12, 0), toFake: ["setTimeout", "clearTimeout", "Date"] });
  });
  afterEach(() => vi.useRealTimers());

  it("goes out when the window closes", async () => {
    const { push, sent } = setup();
    expect(await push.notify(message("m1"))).toBe(1);
    expect(await push.notify(message("m2"))).toBe(0);
    await vi.advanceTimersByTimeAsync(WINDOW_MS + 1);
    await vi.waitFor(() => expect(sent).toHaveLength(2));
    await push.close();
    expect(sent.map((n) => [n.body, n.messageCount])).toEqual([
      ["m1", 1],
      ["m2", 1],
    ]);
  });

  for (const [result, change] of [
    ["muted", (s) => s.muted.add("alice/g:1")],
    ["do_not_disturb", (s) => (s.user.dnd = { startMinute: 660, endMinute: 780, timeZone: "UTC" })],
    ["online", (s) => (s.user.online = true)],
  ] as Array<[string, (s: ReturnType<typeof setup>) => void]>) {
    it(`is not sent when, before the window closed, the user became ${result}`, async () => {
      const s = setup();
      expect(await s.push.notify(message("m1"))).toBe(1);
      expect(await s.push.notify(message("m2"))).toBe(0);
      change(s);
      await vi.advanceTimersByTimeAsync(WINDOW_MS + 1);
      // Decided when the window closed (not by close(), which summarises what is still held).
      const decided = async () =>
        (await counted(s.metrics, result)) + (await counted(s.metrics, "summarized"));
      await vi.waitFor(async () => expect(await decided()).toBe(1));
      await s.push.close();
      expect(s.sent.map((n) => n.body)).toEqual(["m1"]);
      expect(await counted(s.metrics, result)).toBe(1);
    });
  }
});

describe("send slots", () => {
  it("keeps a user whose endpoints never answer from holding every slot of a provider", async () => {
    const delivered: string[] = [];
    const provider: PushProvider = {
      name: "webhook",
      send(token, n) {
        if (n.userId === "mallory") return new Promise(() => {}); // an endpoint that never answers
        delivered.push(token);
        return Promise.resolve({ kind: "delivered" });
      },
      async close() {},
    };
    const devicesOf = (userId: string, count: number): DeviceRecord[] =>
      Array.from({ length: count }, (_, i) => ({
        userId,
        deviceId: `d${i}`,
        provider: "webhook",
        token: `https://${userId}.example/${i}`,
        registeredAtMs: 1,
      }));
    const devices = {
      list: async (userId: string) => devicesOf(userId, userId === "mallory" ? 20 : 1),
    } as Partial<DeviceStore> as DeviceStore;
    const settings = {
      isMuted: async () => false,
      doNotDisturb: async () => undefined,
    } as Partial<NotificationSettingsStore> as NotificationSettingsStore;
    const push = new Push({
      devices,
      settings,
      providers: { webhook: provider },
      webhookUrl: "",
      sendsInFlightMax: 8,
      log: discardingLogger(),
      metrics: createMetrics(),
    });
    // Two conversations' notifications to mallory: 40 sends that hang, then one to alice.
    await push.notify({ userId: "mallory", conversationId: "g:1", title: "x", body: "a" });
    await push.notify({ userId: "mallory", conversationId: "g:2", title: "x", body: "b" });
    await push.notify({ userId: "alice", conversationId: "g:1", title: "x", body: "c" });
    await vi.waitFor(() => expect(delivered).toEqual(["https://alice.example/0"]), { timeout: 1_000 });
    // And one user's deliveries waiting are bounded, so theirs cannot fill pendingMax for everyone.
    let queued = 0;
    for (let c = 3; c < 3 + PENDING_PER_USER_MAX / 20 + 1; c++)
      queued += await push.notify({ userId: "mallory", conversationId: `g:${c}`, title: "x", body: "d" });
    expect(queued + 40).toBe(PENDING_PER_USER_MAX);
    expect(await push.notify({ userId: "alice", conversationId: "g:2", title: "x", body: "e" })).toBe(1);
  });
});
