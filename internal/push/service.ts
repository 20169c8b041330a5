/**
 * Push: the device-token registry and notifications for users with no connected device.
 * Bursts collapse per (user, conversation) within `collapseWindowMs` into the first message and one
 * summary (collapse-windows.ts); each device's notification goes
 * to its provider (internal/push/providers: APNs, FCM, Web Push, webhook), is retried by the retry
 * policy (Retry-After honoured), and a token the provider reports dead is pruned (docs/adr/0008).
 * With a job store (the embedded backend) every delivery is written down before it starts and
 * removed when it ends, so a crash loses none: `recover()` resumes them, and one that fails for good
 * goes to the dead letters with its last error. With a job queue (the distributed backend) a
 * notification is put there and delivered by the push process that owns its partition, so the crash
 * of any process loses none (`consumeQueue`). Delivery is at least once: a request a crash
 * interrupted is sent again (the provider's collapse id and the webhook's notification_id let the
 * device or receiver show it once). With neither, jobs live in memory.
 * Either way they are bounded by `pendingMax`. Nothing is sent for a conversation the user muted or
 * while the user's do-not-disturb window is on (notification settings; dropped, not deferred).
 */
import { createHash, randomUUID } from "node:crypto";
import { Provider, type PushService } from "../../gen/switchboard/push/v1/push_pb.js";
import type {
  DeviceRecord,
  DeviceStore,
  NotificationSettingsStore,
  PushDeadLetter,
  PushDeadLetterStore,
  PushJob,
  PushJobQueue,
  PushJobStore,
  ReceiptStore,
} from "../backends/types.js";
import { parseDeadLetterId, tokenNamesOneDevice } from "../backends/types.js";
import { requireConversationId } from "../conversations/index.js";
import { isValidUserId, requireUserId } from "../lib/auth.js";
import { Code, errors, SwitchboardError } from "../lib/errors.js";
import { Limiter } from "../lib/limiter.js";
import type { Logger } from "../lib/log.js";
import type { Metrics } from "../lib/metrics.js";
import type { ServiceImpl } from "../lib/rpc.js";
import { activeCarrier, context, inSpan, SpanKind, SpanStatusCode, trace, tracing } from "../lib/tracing.js";
import { CollapseWindows } from "./collapse-windows.js";
import { inDoNotDisturb } from "./do-not-disturb.js";
import type { DeliveryOutcome, PushNotification, PushProvider } from "./providers/types.js";
import { DEFAULT_RETRY_POLICY, nextRetry, type RetryPolicy } from "./retry-policy.js";
import { KeyedSendSlots } from "./send-slots.js";
import { tokenProblem } from "./token-format.js";

export const DEVICES_PER_USER_MAX = 20;

/** The active trace's context as a job's `trace` field, when there is one. */
function traceField(): Pick<PushJob, "trace"> {
  const carrier = activeCarrier();
  return carrier ? { trace: carrier } : {};
}

/** How a notification's delivery ended: delivered, given up, refused for a dead token, or left to a later process. */
type DeliveryEnd = { ended: "sent" | "abandoned" } | { ended: "failed" | "gone"; reason: string };

/** Dead letters per ListDeadLetters page by default, and at most (also ids per replay). */
/**
 * One user's sends in flight at most, across providers: one user cannot hold more than this of a
 * provider's slots with endpoints that never answer (a device's endpoint is the user's to choose).
 */
export const SENDS_IN_FLIGHT_PER_USER_MAX = 4;
/**
 * One user's deliveries in flight or waiting to retry at most (20 devices, 10 conversations): past it
 * theirs are dropped, so endpoints that answer 429 with a long Retry-After cannot fill pendingMax.
 */
export const PENDING_PER_USER_MAX = 200;
/**
 * Notifications being decided at once (each reads the user's mute, do-not-disturb, devices and unread
 * count); the rest wait. A group's burst to many offline members asks for thousands at once.
 */
export const NOTIFY_CHECKS_IN_FLIGHT_MAX = 32;
/** Notifications waiting to be decided, at most; past it notify is refused (RESOURCE_EXHAUSTED, retryable). */
export const NOTIFY_CHECKS_WAITING_MAX = 10_000;
const DEAD_LETTERS_PAGE_DEFAULT = 100;
const DEAD_LETTERS_PAGE_MAX = 1_000;
const TOKEN_CHARS_MAX = 4_096;
const DEVICE_ID_CHARS_MAX = 128;
/** The body every payload carries in privacy mode. */
export const PRIVATE_BODY = "New message";
const privateBody = (messageCount: number) =>
  messageCount > 1 ? `${messageCount} new messages` : PRIVATE_BODY;

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
  /** The message's seq (0 or absent: unknown); the payloads' unread count is counted up to it. */
  seq?: number;
}

/** The providers with credentials; a device of a missing one is counted `unconfigured`. */
export type ProviderSet = Partial<Record<DeviceRecord["provider"], PushProvider>>;

export interface PushOptions {
  devices: DeviceStore;
  /** Users' mutes and do-not-disturb windows; undefined: every notification is sent. */
  settings?: NotificationSettingsStore | undefined;
  /** Users' read watermarks, for the unread count in the payloads; undefined: the burst's size stands in. */
  receipts?: Pick<ReceiptStore, "get"> | undefined;
  /** Durable jobs and dead letters of this process (embedded). */
  jobs?: PushJobStore | undefined;
  /**
   * Durable jobs shared by the push processes (distributed): a notification is put there, and the
   * owner of its partition delivers it (`consumeQueue`). Neither: jobs live in memory only.
   */
  queue?: PushJobQueue | undefined;
  /** Where jobs that failed for good are read and replayed from (both backends). */
  deadLetters?: PushDeadLetterStore | undefined;
  providers: ProviderSet;
  /** The generic webhook for a user with no registered device (empty: none). */
  webhookUrl: string;
  /**
   * Sends the jobs of `webhookUrl` (and only those; default: providers.webhook). The operator chose
   * that URL, so its provider may reach it where users' URLs are refused (from-config.ts).
   */
  operatorWebhook?: PushProvider | undefined;
  /**
   * Whether the user has a device connected now. The router notifies only users with none; a burst's
   * summary, due a window later, is not sent to a user who has come online since. Undefined: not
   * asked.
   */
  online?: ((userId: string) => Promise<boolean>) | undefined;
  /** Replace every body with PRIVATE_BODY before a provider sees it. */
  privacyMode?: boolean;
  /** Users' URLs (Web Push endpoints, webhook devices) may name non-public addresses. */
  allowPrivateEndpoints?: boolean;
  /** How long a provider may hold a notification for an unreachable device. */
  ttlSeconds?: number;
  collapseWindowMs?: number;
  retry?: RetryPolicy;
  /** Deliveries (notification × device) in flight or waiting to retry, at most. */
  pendingMax?: number;
  /** Requests in flight to one provider at most (the rest wait their turn). */
  sendsInFlightMax?: number;
  log: Logger;
  metrics: Metrics;
}

/**
 * A notification's id, which receivers drop repeats by (`notification_id`): the same for the same
 * message (or burst summary) to the same user whenever it is asked for, so a router that handles a
 * message again after a crash asks for the same notification, not a new one. Random when the message
 * is not known (seq 0).
 */
function notificationId(n: Notification, messageCount: number): string {
  if (!n.seq) return randomUUID();
  const hex = createHash("sha256")
    .update(`${n.userId}\u0000${n.conversationId}\u0000${n.seq}\u0000${messageCount}`)
    .digest("hex");
  // UUID-shaped (RFC 9562 version 8, custom), as the random ids before it were.
  const variant = ((Number.parseInt(hex[16]!, 16) & 0x3) | 0x8).toString(16);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-8${hex.slice(13, 16)}-${variant}${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

export class Push {
  private readonly windows: CollapseWindows<Notification>;
  /** Summaries being fanned out (awaited on close, so they are stored before the process ends). */
  private readonly summaries = new Set<Promise<unknown>>();
  private readonly retry: RetryPolicy;
  private readonly pendingMax: number;
  private readonly inFlight = new Set<Promise<void>>();
  /**
   * At most sendsInFlightMax requests in flight to one provider: a burst of thousands of notifications
   * must not open thousands of sockets (or HTTP/2 streams past the server's limit), nor trip a
   * provider's per-sender quota at once. Waiters are bounded by pendingMax.
   */
  private readonly slots = new Map<string, Limiter>();
  private readonly userSlots = new KeyedSendSlots(SENDS_IN_FLIGHT_PER_USER_MAX);
  /** Notifications (and summaries) being decided: NOTIFY_CHECKS_IN_FLIGHT_MAX at once. */
  private readonly checks = new Limiter(NOTIFY_CHECKS_IN_FLIGHT_MAX);
  /** Deliveries in flight or waiting to retry, per user (bounded by PENDING_PER_USER_MAX). */
  private readonly pendingByUser = new Map<string, number>();
  /**
   * Slots taken by jobs being written to the job store, not yet in `inFlight`: counted with it, so
   * that concurrent fan-outs cannot all pass the bounds while their writes are awaited (recover()
   * reads back at most pendingMax jobs, trusting the store never to hold more).
   */
  private reserved = 0;
  private readonly reservedByUser = new Map<string, number>();
  private jobSequence = 0;
  /** Wakes a delivery waiting to retry, with false: the process is closing. */
  private readonly sleepers = new Set<() => void>();
  private closing = false;

  /** Whether users' URLs may name loopback and private addresses (checked at registration). */
  get allowsPrivateEndpoints(): boolean {
    return this.options.allowPrivateEndpoints ?? false;
  }

  constructor(private readonly options: PushOptions) {
    this.windows = new CollapseWindows(options.collapseWindowMs ?? 10_000, (_key, burst) => {
      const p = this.summarize(burst.latest, burst.count)
        .catch((err: unknown) =>
          this.options.log.warn("push: burst summary failed", { userId: burst.latest.userId, err }),
        )
        .finally(() => this.summaries.delete(p));
      this.summaries.add(p);
    });
    this.retry = options.retry ?? DEFAULT_RETRY_POLICY;
    this.pendingMax = options.pendingMax ?? 10_000;
  }

  /** Queues a notification; returns how many devices it targets (0 when held for a burst's summary). */
  async notify(n: Notification): Promise<number> {
    // The window first: a burst's later messages are held without a read; its summary is checked
    // for mute and do-not-disturb when it is due, as the first message is now.
    if (!this.windows.admit(`${n.userId}\u0000${n.conversationId}`, n)) {
      this.count("none", "collapsed");
      return 0;
    }
    return this.checked(async () => {
      const quiet = await this.quiet(n);
      if (quiet) {
        this.count("none", quiet);
        return 0;
      }
      return this.fanOut(n, 1);
    });
  }

  /** Decides (and queues) a notification once one of NOTIFY_CHECKS_IN_FLIGHT_MAX places is free. */
  private checked<T>(decide: () => Promise<T>): Promise<T> {
    if (this.checks.waiting >= NOTIFY_CHECKS_WAITING_MAX) {
      this.count("none", "busy");
      return Promise.reject(
        errors.exhausted(
          "PUSH_BUSY",
          `push: ${this.checks.waiting} notifications are waiting to be checked; ask again later`,
          1_000,
        ),
      );
    }
    return this.checks.run(decide);
  }

  /**
   * A burst's summary, a window after its messages: the user may have muted the conversation, begun
   * do-not-disturb or come online since, so it gets the checks a single notification gets.
   */
  private summarize(latest: Notification, messageCount: number): Promise<void> {
    return this.checked(async () => {
      let quiet: string | undefined = await this.quiet(latest);
      if (!quiet && (await this.options.online?.(latest.userId))) quiet = "online";
      if (quiet) return this.count("none", quiet);
      this.count("none", "summarized");
      await this.fanOut(latest, messageCount);
    });
  }

  /** Why the user wants no notification for this now ("muted", "do_not_disturb"), or undefined. */
  private async quiet(n: Notification): Promise<"muted" | "do_not_disturb" | undefined> {
    const settings = this.options.settings;
    if (!settings) return undefined;
    const now = Date.now();
    const [muted, dnd] = await Promise.all([
      settings.isMuted(n.userId, n.conversationId, now),
      settings.doNotDisturb(n.userId),
    ]);
    if (muted) return "muted";
    return dnd && inDoNotDisturb(dnd, now) ? "do_not_disturb" : undefined;
  }

  /** One job per registered device (or the generic webhook) for a notification standing for `messageCount` messages. */
  private async fanOut(n: Notification, messageCount: number): Promise<number> {
    const devices = await this.options.devices.list(n.userId);
    const targets: Array<{ provider: DeviceRecord["provider"]; token: string; device: DeviceRecord | null }> =
      devices.length > 0
        ? devices.map((d) => ({ provider: d.provider, token: d.token, device: d }))
        : this.options.webhookUrl
          ? [{ provider: "webhook", token: this.options.webhookUrl, device: null }]
          : [];
    // Most offline members have nowhere to be notified: no unread count is read for them.
    if (targets.length === 0) return 0;
    const notification: PushJob["notification"] = {
      id: notificationId(n, messageCount),
      userId: n.userId,
      conversationId: n.conversationId,
      title: n.title,
      body: this.options.privacyMode ? privateBody(messageCount) : n.body,
      ttlSeconds: this.options.ttlSeconds ?? 86_400,
      messageCount,
      unreadCount: await this.unreadCount(n, messageCount),
    };
    let queued = 0;
    for (const target of targets) {
      const provider = this.providerFor(target);
      if (!provider) {
        this.count(target.provider, "unconfigured");
        continue;
      }
      const user = notification.userId;
      if (
        this.closing ||
        this.inFlight.size + this.reserved >= this.pendingMax ||
        (this.pendingByUser.get(user) ?? 0) + (this.reservedByUser.get(user) ?? 0) >= PENDING_PER_USER_MAX
      ) {
        this.count(target.provider, "dropped");
        continue;
      }
      this.reserve(user, 1);
      try {
        if (await this.enqueue(provider, this.newJob(target, notification))) queued++;
        else this.count(target.provider, "duplicate");
      } finally {
        this.reserve(user, -1);
      }
    }
    return queued;
  }

  private reserve(userId: string, delta: 1 | -1): void {
    this.reserved += delta;
    const left = (this.reservedByUser.get(userId) ?? 0) + delta;
    if (left === 0) this.reservedByUser.delete(userId);
    else this.reservedByUser.set(userId, left);
  }

  /** Who sends a job: a device's provider, or for `webhookUrl`'s jobs (no device) the operator's webhook. */
  private providerFor(job: Pick<PushJob, "provider" | "device">): PushProvider | undefined {
    if (job.device === null && job.provider === "webhook")
      return this.options.operatorWebhook ?? this.options.providers.webhook;
    return this.options.providers[job.provider];
  }

  /** Messages after the user's read watermark up to this one: what an app shows as the conversation's badge. */
  private async unreadCount(n: Notification, messageCount: number): Promise<number> {
    const receipts = this.options.receipts;
    if (!receipts || !n.seq) return messageCount;
    const read = await receipts.get(n.conversationId, n.userId, "read");
    return Math.max(messageCount, n.seq - read);
  }

  private newJob(
    target: Pick<PushJob, "provider" | "token" | "device">,
    n: PushJob["notification"],
    replay = false,
  ): PushJob {
    const createdAtMs = Date.now();
    return {
      // Zero-padded creation time first: the store lists jobs oldest first.
      id: `${String(createdAtMs).padStart(15, "0")}-${n.id}-${++this.jobSequence}`,
      // The same notification for the same device, asked for again, is the same job; a replayed
      // dead letter is sent regardless.
      ...(replay ? {} : { key: `${n.id}\u0000${target.device?.deviceId ?? ""}` }),
      ...target,
      notification: n,
      attempts: 0,
      notBeforeMs: 0,
      createdAtMs,
      ...(tracing.on && !replay ? traceField() : {}),
    };
  }

  /**
   * Written down before the first attempt: from here a crash does not lose it. False: the job store
   * already took this job (PushJob.key), so it is not sent twice. On a queue the owner of the job's
   * partition makes that check.
   */
  private async enqueue(provider: PushProvider, job: PushJob): Promise<boolean> {
    if (this.options.queue) {
      await this.options.queue.put(job); // its partition's owner delivers it
      return true;
    }
    if (this.options.jobs && !(await this.options.jobs.add(job))) return false;
    this.start(provider, job);
    return true;
  }

  /** Deliveries that failed for good, newest first (none when nothing keeps them). */
  async deadLetters(limit: number, beforeId?: string): Promise<PushDeadLetter[]> {
    return (await this.options.deadLetters?.list(limit, beforeId)) ?? [];
  }

  /**
   * Sends dead letters again as new deliveries with a fresh attempt count, to the device's current
   * token: a device that registered a new token since gets it there, one that unregistered gets
   * nothing. At least once: each is queued before it is removed from the dead letters, so a replay
   * that fails (the queue or the store unavailable) or is cut short by a crash leaves what it had not
   * queued listed under its id, for a retry to replay. A letter queued but not yet removed when that
   * happened, and one that two concurrent replays both queued, is sent twice (under one
   * notification id, which the providers' collapse ids and the webhook's notification_id carry).
   * A letter whose provider has no credentials here is not replayed: the whole replay is refused
   * (PUSH_PROVIDER_NOT_CONFIGURED) before anything is queued or removed.
   */
  async replay(
    requested: string[],
  ): Promise<{ replayed: string[]; missing: string[]; deviceGone: string[] }> {
    const ids = [...new Set(requested)];
    if (!this.options.queue && this.inFlight.size + this.reserved + ids.length > this.pendingMax)
      throw errors.exhausted(
        "PUSH_PENDING_FULL",
        `${this.inFlight.size} deliveries are pending (push.pendingMax ${this.pendingMax}); replay fewer`,
      );
    const store = this.options.deadLetters;
    const found = store ? await findDeadLetters(store, ids) : new Map<string, PushDeadLetter>();
    const result = {
      replayed: [] as string[],
      missing: ids.filter((id) => !found.has(id)),
      deviceGone: [] as string[],
    };
    if (!store || found.size === 0) return result;
    const replays: Array<{ dead: PushDeadLetter; provider: PushProvider; job: PushJob }> = [];
    const unconfigured = new Map<string, string[]>();
    for (const id of ids) {
      const dead = found.get(id);
      if (!dead) continue;
      const target = await this.currentTarget(dead.job);
      if (!target) {
        result.deviceGone.push(id);
        continue;
      }
      const job = this.newJob(target, dead.job.notification, true);
      const provider = this.providerFor(job);
      if (provider) replays.push({ dead, provider, job });
      else unconfigured.set(job.provider, [...(unconfigured.get(job.provider) ?? []), id]);
    }
    if (unconfigured.size > 0) {
      const names = [...unconfigured.keys()];
      const refused = [...unconfigured.values()].flat();
      throw new SwitchboardError(
        Code.FAILED_PRECONDITION,
        "PUSH_PROVIDER_NOT_CONFIGURED",
        `${refused.length} of these dead letters go to ${names.join(", ")}, which has no credentials here: configure it, or replay the others (nothing was replayed; e.g. ${refused.slice(0, 3).join(", ")})`,
        { metadata: { providers: names.join(","), ids: refused.slice(0, 100).join(",") } },
      );
    }
    const queued: string[] = [];
    try {
      for (const { dead, provider, job } of replays) {
        await this.enqueue(provider, job);
        queued.push(dead.id);
        this.count(job.provider, "replayed");
      }
    } catch (err) {
      // The rest stays listed; what was queued goes, so that a retry does not send it again.
      await store.take(queued).catch((takeErr: unknown) =>
        this.options.log.warn("push: replayed dead letters could not be removed (a retry sends them again)", {
          ids: queued,
          err: takeErr,
        }),
      );
      this.options.log.warn("push: dead letter replay failed; the letters not queued stay listed", {
        queued: queued.length,
        left: replays.length - queued.length,
        err,
      });
      throw err;
    }
    // Removed only now that they are queued (a device's gone letter: nothing to queue).
    await store.take([...queued, ...result.deviceGone]);
    result.replayed = queued;
    this.options.log.info("push: dead letters replayed", { ...result });
    return result;
  }

  /** Where a job's notification goes now: its device's current registration, or the configured webhook. */
  private async currentTarget(
    job: PushJob,
  ): Promise<Pick<PushJob, "provider" | "token" | "device"> | undefined> {
    const device = job.device;
    if (!device)
      return this.options.webhookUrl
        ? { provider: "webhook", token: this.options.webhookUrl, device: null }
        : undefined;
    const current = await this.registrationOf(device);
    return current ? { provider: current.provider, token: current.token, device: current } : undefined;
  }

  /** The device's registration as it stands now (it may have a new token, or be gone). */
  private async registrationOf(device: DeviceRecord): Promise<DeviceRecord | undefined> {
    return (await this.options.devices.list(device.userId)).find((d) => d.deviceId === device.deviceId);
  }

  /**
   * Resumes the jobs a previous process left in the store (at most pendingMax; the store never holds
   * more, since a job is written only when a slot is free). Returns how many.
   */
  async recover(): Promise<number> {
    const jobs = this.options.jobs;
    if (!jobs) return 0;
    let resumed = 0;
    for (const job of await jobs.list(this.pendingMax)) {
      const provider = this.providerFor(job);
      if (!provider) {
        // Credentials removed since: nothing can deliver it, keep it where an operator sees it.
        await jobs.deadLetter(job, `provider ${job.provider} is not configured`);
        this.count(job.provider, "failed");
        continue;
      }
      this.start(provider, job);
      this.count(job.provider, "recovered");
      resumed++;
    }
    if (resumed > 0) this.options.log.info("push: resumed jobs of a previous process", { resumed });
    return resumed;
  }

  /** Delivers the queue's jobs this process owns (distributed), until it closes. */
  async consumeQueue(): Promise<void> {
    const queue = this.options.queue;
    if (!queue) return;
    await queue.consume(async (job) => {
      const provider = this.providerFor(job);
      if (!provider) {
        await queue.deadLetter(job, `provider ${job.provider} is not configured`);
        return this.count(job.provider, "failed");
      }
      if (this.closing) return; // left for the partition's next owner
      await this.start(provider, job);
    });
  }

  private start(provider: PushProvider, job: PushJob): Promise<void> {
    const { userId } = job.notification;
    this.pendingByUser.set(userId, (this.pendingByUser.get(userId) ?? 0) + 1);
    const p = this.deliver(provider, job)
      .catch((err: unknown) => {
        // Only the job store can throw here (providers return outcomes); the job stays stored.
        this.options.log.error("push: job store failed during a delivery", { jobId: job.id, err });
      })
      .finally(() => {
        this.inFlight.delete(p);
        const left = (this.pendingByUser.get(userId) ?? 1) - 1;
        if (left === 0) this.pendingByUser.delete(userId);
        else this.pendingByUser.set(userId, left);
      });
    this.inFlight.add(p);
    return p;
  }

  /** The job ended (delivered or pruned): removed from wherever it is kept. */
  private async ended(job: PushJob): Promise<void> {
    if (this.options.queue) await this.options.queue.finish(job);
    else await this.options.jobs?.remove(job.id);
  }

  private async kept(job: PushJob): Promise<void> {
    if (this.options.queue) await this.options.queue.put(job);
    else await this.options.jobs?.put(job);
  }

  private async dead(job: PushJob, error: string): Promise<void> {
    if (this.options.queue) await this.options.queue.deadLetter(job, error);
    else await this.options.jobs?.deadLetter(job, error);
  }

  /** Deliveries in flight or waiting to retry. */
  get pending(): number {
    return this.inFlight.size;
  }

  private async deliver(provider: PushProvider, job: PushJob): Promise<void> {
    // A notification for a traced message is a client span of its trace: the one its job carries (set
    // where it was decided, also when another process delivers it from the distributed push queue,
    // whose consumer runs in no message's context), else the active one (a job stored without it).
    if (!tracing.on || (job.trace === undefined && trace.getSpan(context.active()) === undefined)) {
      await this.attempts(provider, job);
      return;
    }
    await inSpan(
      `push ${provider.name}`,
      {
        kind: SpanKind.CLIENT,
        attributes: { "switchboard.push.provider": provider.name },
        ...(job.trace ? { parent: job.trace } : {}),
      },
      async (span) => {
        const end = await this.attempts(provider, job);
        span.setAttribute("switchboard.push.result", end.ended);
        // A notification that did not reach the device is a failed client operation (OpenTelemetry).
        if (end.ended === "failed" || end.ended === "gone") {
          span.setAttribute("error.type", end.ended);
          span.setStatus({ code: SpanStatusCode.ERROR, message: end.reason });
        }
      },
    );
  }

  /** Sends `job` until it is delivered, given up or abandoned (the service closing); says which. */
  private async attempts(provider: PushProvider, job: PushJob): Promise<DeliveryEnd> {
    const n: PushNotification = job.notification;
    const where = { userId: n.userId, deviceId: job.device?.deviceId, provider: provider.name };
    const kept = this.options.jobs !== undefined || this.options.queue !== undefined;
    const resumedWait = job.notBeforeMs - Date.now();
    if (resumedWait > 0 && !(await this.sleep(resumedWait))) {
      this.count(provider.name, "abandoned");
      return { ended: "abandoned" };
    }
    for (let attempt = job.attempts + 1; ; attempt++) {
      const outcome = await this.sendOnce(provider, job.token, n);
      if (outcome.kind === "delivered") {
        await this.ended(job);
        this.count(provider.name, "sent");
        return { ended: "sent" };
      }
      if (outcome.kind === "prune") {
        await this.prune(job, outcome.reason);
        await this.ended(job);
        return { ended: "gone", reason: outcome.reason };
      }
      const decision =
        outcome.kind === "failed"
          ? ({ retry: false, why: "permanent" } as const)
          : nextRetry(this.retry, attempt, outcome.afterMs);
      if (!decision.retry) {
        this.count(provider.name, "failed");
        await this.dead({ ...job, attempts: attempt }, outcome.reason);
        this.options.log.warn("push: delivery failed", {
          ...where,
          reason: outcome.reason,
          why: decision.why,
        });
        return { ended: "failed", reason: outcome.reason };
      }
      this.count(provider.name, "retried");
      // The attempt count and the wait survive a crash: attemptsMax and Retry-After hold across restarts.
      await this.kept({ ...job, attempts: attempt, notBeforeMs: Date.now() + decision.delayMs });
      if (!(await this.sleep(decision.delayMs))) {
        this.count(provider.name, "abandoned");
        this.options.log.info("push: closing with a delivery waiting to retry", {
          ...where,
          reason: outcome.reason,
          kept,
        });
        return { ended: "abandoned" };
      }
    }
  }

  /** Providers return outcomes; a throw is a bug in one, treated as transient so it is seen and retried. */
  private async sendOnce(
    provider: PushProvider,
    token: string,
    n: PushNotification,
  ): Promise<DeliveryOutcome> {
    let slots = this.slots.get(provider.name);
    if (!slots) {
      slots = new Limiter(this.options.sendsInFlightMax ?? 64);
      this.slots.set(provider.name, slots);
    }
    try {
      // A user's own sends first take one of a few slots of theirs: their devices' endpoints are
      // theirs to choose, and endpoints that never answer must not hold every slot of a provider.
      return await this.userSlots.run(n.userId, () => slots.run(() => provider.send(token, n)));
    } catch (err) {
      return { kind: "retry", reason: `${provider.name} threw: ${(err as Error).message}` };
    }
  }

  /** Removes a dead token, unless the device registered a new one since it was sent to. */
  private async prune(job: PushJob, reason: string): Promise<void> {
    const device = job.device;
    if (!device) {
      // The generic webhook is configuration, not a registration: report it, remove nothing.
      this.count(job.provider, "failed");
      this.options.log.warn("push: push.webhookUrl reports gone", { reason });
      return;
    }
    try {
      // One conditional step: a registration landing between a read and a remove would be lost.
      await this.options.devices.removeIfToken(device.userId, device.deviceId, job.token);
      this.count(device.provider, "pruned");
      this.options.log.info("push: pruned a dead token", {
        userId: device.userId,
        deviceId: device.deviceId,
        provider: device.provider,
        reason,
      });
    } catch (err) {
      this.count(device.provider, "failed");
      this.options.log.warn("push: could not prune a dead token", {
        userId: device.userId,
        deviceId: device.deviceId,
        err,
      });
    }
  }

  private sleep(ms: number): Promise<boolean> {
    if (this.closing) return Promise.resolve(false);
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.sleepers.delete(wake);
        resolve(false);
      };
      const timer = setTimeout(() => {
        this.sleepers.delete(wake);
        resolve(true);
      }, ms);
      this.sleepers.add(wake);
    });
  }

  private count(provider: string, result: string): void {
    this.options.metrics.pushNotifications.inc({ provider, result });
  }

  /**
   * Stops retries (abandoned, counted; with a job store they stay stored for the next process), waits
   * for sends under way, closes the providers.
   */
  async close(): Promise<void> {
    // Held bursts are summarised now, so their jobs are stored (and resumed by the next process).
    this.windows.flushAll();
    await Promise.allSettled([...this.summaries]);
    this.closing = true;
    for (const wake of [...this.sleepers]) wake();
    await Promise.allSettled([...this.inFlight]);
    const providers = [...Object.values(this.options.providers), this.options.operatorWebhook];
    await Promise.allSettled(providers.map((p) => p?.close()));
  }
}

/**
 * The dead letters of these ids, read without removing them (the store's only read by id, `take`,
 * removes): through its listing, whose pages run newest first in the order of the ids, `beforeId`
 * excluded. A page from just above the newest id not yet settled holds that id first if it is
 * there, and the older ids asked for as far as it reaches: a replay of a listed page costs one read,
 * and every read settles at least one id.
 */
async function findDeadLetters(
  store: PushDeadLetterStore,
  ids: readonly string[],
): Promise<Map<string, PushDeadLetter>> {
  const found = new Map<string, PushDeadLetter>();
  // Newest first, as the store lists them (the ids' order; one that is not an id is never found).
  const wanted = ids.filter((id) => parseDeadLetterId(id) !== undefined).sort((a, b) => (a < b ? 1 : -1));
  let i = 0;
  while (i < wanted.length) {
    const limit = Math.min(wanted.length - i, DEAD_LETTERS_PAGE_MAX);
    // The id followed by U+0000 comes right after it: nothing lies between the two.
    const page = await store.list(limit, `${wanted[i]}\u0000`);
    let j = 0;
    for (; i < wanted.length; i++) {
      const id = wanted[i]!;
      while (j < page.length && page[j]!.id > id) j++;
      if (j < page.length && page[j]!.id === id) found.set(id, page[j++]!);
      // Past a full page: the rest may be further down, read from the next one on. Past the last: none.
      else if (j === page.length && page.length === limit) break;
    }
  }
  return found;
}

/** A device id is part of storage keys: bounded, and never empty. */
const isValidDeviceId = (id: string): boolean => id.length > 0 && id.length <= DEVICE_ID_CHARS_MAX;

export function pushServiceImpl(push: Push, devices: DeviceStore): ServiceImpl<typeof PushService> {
  return {
    async registerDevice(req) {
      const d = req.device;
      const provider = d ? providerNames[d.provider] : undefined;
      if (!d || !isValidUserId(d.userId) || !isValidDeviceId(d.deviceId) || !provider) {
        throw errors.invalid(
          "INVALID_DEVICE",
          `device needs user_id, a device_id of 1-${DEVICE_ID_CHARS_MAX} characters and a provider`,
        );
      }
      if (d.token.length === 0 || d.token.length > TOKEN_CHARS_MAX) {
        throw errors.invalid("INVALID_TOKEN_LENGTH", `token must have 1-${TOKEN_CHARS_MAX} characters`);
      }
      const problem = tokenProblem(provider, d.token, push.allowsPrivateEndpoints);
      if (problem) throw errors.invalid("INVALID_DEVICE_TOKEN", problem);
      const existing = await devices.list(d.userId);
      // A registration this one replaces does not count: the same device id, or one of the user's
      // devices that held the token (an app reinstalled), which the registration takes over.
      const replaces = (e: (typeof existing)[number]) =>
        e.deviceId === d.deviceId ||
        (tokenNamesOneDevice(provider) && e.provider === provider && e.token === d.token);
      if (existing.length >= DEVICES_PER_USER_MAX && !existing.some(replaces)) {
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
      if (!isValidUserId(req.userId) || !isValidDeviceId(req.deviceId)) {
        throw errors.invalid(
          "INVALID_DEVICE",
          `unregistering needs a user_id and a device_id of 1-${DEVICE_ID_CHARS_MAX} characters`,
        );
      }
      await devices.remove(req.userId, req.deviceId);
      return {};
    },
    async listDevices(req) {
      const list = await devices.list(requireUserId(req.userId));
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
    async listDeadLetters(req) {
      const limit = req.limit === 0 ? DEAD_LETTERS_PAGE_DEFAULT : req.limit;
      if (limit > DEAD_LETTERS_PAGE_MAX)
        throw errors.invalid("INVALID_LIMIT", `limit must be at most ${DEAD_LETTERS_PAGE_MAX}`);
      const page = await push.deadLetters(limit, req.beforeId === "" ? undefined : req.beforeId);
      return {
        deadLetters: page.map((d) => ({
          id: d.id,
          userId: d.job.notification.userId,
          deviceId: d.job.device?.deviceId ?? "",
          provider: providerOf(d.job.provider),
          conversationId: d.job.notification.conversationId,
          error: d.error,
          attempts: d.job.attempts,
          createdAtMs: BigInt(d.job.createdAtMs),
          deadAtMs: BigInt(d.deadAtMs),
        })),
      };
    },
    async replayDeadLetters(req) {
      if (req.ids.length === 0 || req.ids.length > DEAD_LETTERS_PAGE_MAX)
        throw errors.invalid("INVALID_IDS", `ids must hold 1-${DEAD_LETTERS_PAGE_MAX} dead letter ids`);
      const r = await push.replay([...new Set(req.ids)]);
      return { replayedIds: r.replayed, missingIds: r.missing, deviceGoneIds: r.deviceGone };
    },
    async notify(req) {
      const n = await push.notify({
        userId: requireUserId(req.userId),
        conversationId: requireConversationId(req.conversationId),
        title: req.title,
        body: req.body,
        seq: Number(req.seq),
      });
      return { devices: n };
    },
  };
}
