/**
 * The push service over in-memory stand-ins for its stores and one recording provider, on fake
 * timers: what a burst's summary checks when its collapse window closes; and the replay of dead
 * letters over a job queue that can fail.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  type DeviceRecord,
  type DeviceStore,
  type DoNotDisturb,
  deadLetterId,
  type NotificationSettingsStore,
  type PushDeadLetter,
  type PushDeadLetterStore,
  type PushJob,
  type PushJobQueue,
  type PushJobStore,
  parseDeadLetterId,
} from "../backends/types.js";
import { Code, errors, type SwitchboardError } from "../lib/errors.js";
import { discardingLogger } from "../lib/log.js";
import { createMetrics, type Metrics } from "../lib/metrics.js";
import type { PushNotification, PushProvider } from "./providers/types.js";
import {
  NOTIFY_CHECKS_IN_FLIGHT_MAX,
  NOTIFY_CHECKS_WAITING_MAX,
  PENDING_PER_USER_MAX,
  type ProviderSet,
  Push,
} from "./service.js";

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

describe("deciding notifications", () => {
  /** Settings whose reads are counted, held until `release()`, and measured for concurrency. */
  function countedSettings() {
    const gate = { open: true, waiters: [] as Array<() => void> };
    const reads = { total: 0, inFlight: 0, peak: 0 };
    const read = async <T>(value: T) => {
      reads.total++;
      reads.inFlight++;
      reads.peak = Math.max(reads.peak, reads.inFlight);
      if (gate.open) await new Promise((r) => setTimeout(r, 1));
      else await new Promise<void>((r) => gate.waiters.push(r));
      reads.inFlight--;
      return value;
    };
    const settings = {
      isMuted: () => read(false),
      doNotDisturb: () => read(undefined),
    } as Partial<NotificationSettingsStore> as NotificationSettingsStore;
    const release = () => {
      gate.open = true;
      for (const w of gate.waiters.splice(0)) w();
    };
    return { settings, reads, gate, release };
  }
  const metrics = createMetrics();
  const pushWith = (settings: NotificationSettingsStore, collapseWindowMs: number) =>
    new Push({
      devices: { list: async () => [] } as Partial<DeviceStore> as DeviceStore,
      settings,
      providers: {},
      webhookUrl: "",
      collapseWindowMs,
      log: discardingLogger(),
      metrics,
    });
  const to = (userId: string) => ({ userId, conversationId: "g:big", title: "bob", body: "hi" });

  it("a burst of 1,000 messages to one offline user reads the user's settings for its first only", async () => {
    const { settings, reads } = countedSettings();
    const push = pushWith(settings, WINDOW_MS);
    await Promise.all(Array.from({ length: 1_000 }, () => push.notify(to("alice"))));
    // isMuted and doNotDisturb, once.
    expect(reads.total).toBe(2);
    await push.close();
  });

  it(`decides at most ${NOTIFY_CHECKS_IN_FLIGHT_MAX} at once, and every one of 2,000 asked together`, async () => {
    const { settings, reads } = countedSettings();
    const push = pushWith(settings, 0);
    const users = Array.from({ length: 2_000 }, (_, i) => `u${i}`);
    expect(await Promise.all(users.map((u) => push.notify(to(u))))).toEqual(users.map(() => 0));
    expect(reads.total).toBe(2 * users.length);
    // Each decision reads two settings at once.
    expect(reads.peak).toBe(2 * NOTIFY_CHECKS_IN_FLIGHT_MAX);
    await push.close();
  });

  it("refuses with RESOURCE_EXHAUSTED (PUSH_BUSY) past NOTIFY_CHECKS_WAITING_MAX waiting, and takes more once they drain", async () => {
    const { settings, gate, release } = countedSettings();
    gate.open = false;
    const push = pushWith(settings, 0);
    const held = Array.from({ length: NOTIFY_CHECKS_IN_FLIGHT_MAX + NOTIFY_CHECKS_WAITING_MAX }, (_, i) =>
      push.notify(to(`u${i}`)),
    );
    const refused = await push.notify(to("one-too-many")).then(
      () => undefined,
      (err: SwitchboardError) => err,
    );
    expect(refused).toMatchObject({ code: Code.RESOURCE_EXHAUSTED, reason: "PUSH_BUSY" });
    expect(await counted(metrics, "busy")).toBe(1);
    release();
    await Promise.all(held);
    expect(await push.notify(to("one-too-many"))).toBe(0);
    await push.close();
  });
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

describe("pending bound", () => {
  it("holds concurrent fan-outs to pendingMax while their jobs are being stored", async () => {
    const stored: PushJob[] = [];
    const jobs = {
      // A store that answers a moment later: every fan-out reaches its bound check first.
      add: async (job: PushJob) => {
        await new Promise((r) => setTimeout(r, 5));
        stored.push(job);
        return true;
      },
      put: async () => {},
      remove: async () => {},
      list: async () => [],
      deadLetter: async () => {},
      close: async () => {},
    } satisfies PushJobStore;
    const push = new Push({
      devices: {
        list: async (userId: string) => [
          {
            userId,
            deviceId: "d",
            provider: "webhook",
            token: `https://${userId}.example/`,
            registeredAtMs: 1,
          },
        ],
      } as Partial<DeviceStore> as DeviceStore,
      settings: {
        isMuted: async () => false,
        doNotDisturb: async () => undefined,
      } as Partial<NotificationSettingsStore> as NotificationSettingsStore,
      jobs,
      providers: { webhook: { name: "webhook", send: () => new Promise(() => {}), async close() {} } },
      webhookUrl: "",
      pendingMax: 10,
      log: discardingLogger(),
      metrics: createMetrics(),
    });
    const queued = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        push.notify({ userId: `u${i}`, conversationId: "g:1", title: "x", body: "m" }),
      ),
    );
    expect(queued.reduce((a, b) => a + b, 0)).toBe(10);
    expect(stored).toHaveLength(10);
  });
});

/** Dead letters in memory, listed and taken as the stores do (newest first, by id). */
function deadLetterStore(letters: PushDeadLetter[]) {
  const byId = new Map(letters.map((d) => [d.id, d]));
  const reads = { list: 0 };
  const store: PushDeadLetterStore = {
    async add(job, error) {
      const dead = { id: deadLetterId(Date.now(), job.id), job, error, deadAtMs: Date.now() };
      byId.set(dead.id, dead);
      return dead;
    },
    async list(limit, beforeId) {
      reads.list++;
      if (beforeId !== undefined && !parseDeadLetterId(beforeId)) return [];
      return [...byId.keys()]
        .filter((id) => beforeId === undefined || id < beforeId)
        .sort((a, b) => (a < b ? 1 : -1))
        .slice(0, limit)
        .map((id) => byId.get(id)!);
    },
    async take(ids) {
      const taken = ids.flatMap((id) => byId.get(id) ?? []);
      for (const d of taken) byId.delete(d.id);
      return taken;
    },
    async close() {},
  };
  return { store, ids: () => [...byId.keys()].sort(), reads };
}

function deadLetter(
  n: number,
  deadAtMs: number,
  provider: DeviceRecord["provider"] = "webhook",
): PushDeadLetter {
  const job: PushJob = {
    id: `000000000000001-n${n}-${n}`,
    provider,
    token: provider === "webhook" ? device.token : iphone.token,
    device: provider === "webhook" ? device : iphone,
    notification: {
      id: `n${n}`,
      userId: "alice",
      conversationId: "g:1",
      title: "bob",
      body: `m${n}`,
      ttlSeconds: 60,
      messageCount: 1,
    },
    attempts: 5,
    notBeforeMs: 0,
    createdAtMs: 1,
  };
  return { id: deadLetterId(deadAtMs, job.id), job, error: "webhook answered 503", deadAtMs };
}

const iphone: DeviceRecord = { ...device, deviceId: "iphone", provider: "apns", token: "a".repeat(64) };

/** A job queue that refuses puts while `down`, as Kafka out of reach does. */
function queueStandIn() {
  const put: PushJob[] = [];
  const state = { down: false, failAfter: Number.POSITIVE_INFINITY };
  const queue = {
    async put(job: PushJob) {
      if (state.down || put.length >= state.failAfter)
        throw errors.unavailable("LOG_UNAVAILABLE", "the push jobs' topic did not take the job");
      put.push(job);
    },
  } as Partial<PushJobQueue> as PushJobQueue;
  return { queue, put, state };
}

function replayService(store: PushDeadLetterStore, queue: PushJobQueue, providers: ProviderSet) {
  return new Push({
    devices: { list: async () => [device, iphone] } as Partial<DeviceStore> as DeviceStore,
    queue,
    deadLetters: store,
    providers,
    webhookUrl: "",
    log: discardingLogger(),
    metrics: createMetrics(),
  });
}

const webhookProvider: PushProvider = {
  name: "webhook",
  send: async () => ({ kind: "delivered" }),
  async close() {},
};

describe("replaying dead letters", () => {
  it("is at least once: a queue that fails leaves the letters listed under their ids, and a retry replays them", async () => {
    const letters = [deadLetter(1, 1_000), deadLetter(2, 2_000), deadLetter(3, 3_000)];
    const dead = deadLetterStore(letters);
    const { queue, put, state } = queueStandIn();
    const push = replayService(dead.store, queue, { webhook: webhookProvider });
    const ids = letters.map((d) => d.id);

    state.down = true;
    await expect(push.replay(ids)).rejects.toMatchObject({ code: Code.UNAVAILABLE });
    expect(dead.ids()).toEqual(ids);
    expect(put).toEqual([]);

    // Down after one was queued: that one is removed (a retry does not send it again), the rest stay.
    state.down = false;
    state.failAfter = 1;
    await expect(push.replay(ids)).rejects.toMatchObject({ code: Code.UNAVAILABLE });
    expect(put.map((j) => j.notification.id)).toEqual(["n1"]);
    expect(dead.ids()).toEqual([ids[1], ids[2]]);

    state.failAfter = Number.POSITIVE_INFINITY;
    expect(await push.replay(ids)).toEqual({ replayed: [ids[1], ids[2]], missing: [ids[0]], deviceGone: [] });
    expect(put.map((j) => j.notification.id)).toEqual(["n1", "n2", "n3"]);
    expect(dead.ids()).toEqual([]);
    // New deliveries with a fresh attempt count, sent whatever the job store's keys say.
    expect(put[1]).toMatchObject({ attempts: 0, notBeforeMs: 0, provider: "webhook" });
    expect(put[1]!.key).toBeUndefined();
  });

  it("refuses a replay whose letters go to a provider without credentials, and leaves every letter listed as it was", async () => {
    const letters = [deadLetter(1, 1_000), deadLetter(2, 2_000, "apns")];
    const dead = deadLetterStore(letters);
    const { queue, put } = queueStandIn();
    const push = replayService(dead.store, queue, { webhook: webhookProvider });
    const ids = letters.map((d) => d.id);
    const refused = await push.replay(ids).catch((err: SwitchboardError) => err);
    expect(refused).toMatchObject({
      code: Code.FAILED_PRECONDITION,
      reason: "PUSH_PROVIDER_NOT_CONFIGURED",
      metadata: { providers: "apns", ids: ids[1] },
    });
    expect(put).toEqual([]);
    expect(dead.ids()).toEqual(ids);
    // The others replay once it is left out.
    expect(await push.replay([ids[0]!])).toEqual({ replayed: [ids[0]], missing: [], deviceGone: [] });
    expect(dead.ids()).toEqual([ids[1]]);
  });

  it("finds the letters asked for among many, in a read per run of listed ones, and tells the missing apart", async () => {
    // Ids that share a time and whose job ids are prefixes of each other's (n1-1, n1-10, …).
    const letters = Array.from({ length: 2_500 }, (_, i) => deadLetter(i, 1_000 + Math.floor(i / 7)));
    const dead = deadLetterStore(letters);
    const { queue, put } = queueStandIn();
    const push = replayService(dead.store, queue, { webhook: webhookProvider });
    const listed = await push.deadLetters(1_000, letters[2_000]!.id); // a page, as an operator lists it
    const scattered = [letters[3]!.id, letters[10]!.id, letters[500]!.id, letters[2_499]!.id];
    const unknown = [
      deadLetterId(1_000, "000000000000001-n3-30"), // between two that exist
      deadLetterId(999, "x"), // older than all
      deadLetterId(9_999, "x"), // newer than all
      "not-an-id",
    ];
    dead.reads.list = 0;
    const pageIds = listed.map((d) => d.id);
    const result = await push.replay([...pageIds, ...scattered, ...unknown]);
    expect(result.replayed).toEqual([...pageIds, ...scattered]);
    expect(result.missing).toEqual(unknown);
    expect(put).toHaveLength(listed.length + scattered.length);
    expect(dead.ids()).toHaveLength(letters.length - listed.length - scattered.length);
    // The page in one read (and a second for what it did not reach), then about one per other id.
    expect(dead.reads.list).toBeLessThanOrEqual(2 + scattered.length + unknown.length);
  });
});
