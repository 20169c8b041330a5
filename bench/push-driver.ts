/**
 * The push service under load, in a process of its own (started by push.ts with an IPC channel): the
 * real `Push` built the way the server builds it — pushFromConfig from SWITCHBOARD_PUSH_* settings and
 * credential files, over the embedded backend's device store, notification settings and durable job
 * store — driven closed loop against one provider's stand-in, which runs in the parent.
 *
 * A process of its own so that its CPU is told apart from the stand-in's protocol checks, and so that
 * NODE_EXTRA_CA_CERTS (read by Node at start only) trusts the stand-ins' CAs the way an operator trusts
 * a private CA: the providers then run exactly as configured in production.
 *
 * The loop keeps `window` notifications between notify() and the end of their job (removed from the
 * job store: delivered; or dead-lettered: failed for good); each one that ends lets the next one in.
 * The rate is the `switchboard_push_notifications_total{result="sent"}` delta over a window of steady
 * state (after a warm-up, with the loop still full at both ends), the CPU that of this whole process
 * (all threads: LMDB's writes included) over the same window.
 */
import { mkdirSync } from "node:fs";
import { EmbeddedBackends } from "../internal/backends/embedded/index.js";
import type { PushJobStore } from "../internal/backends/types.js";
import { loadConfig } from "../internal/lib/config.js";
import { createLogger } from "../internal/lib/log.js";
import { createMetrics, type Metrics } from "../internal/lib/metrics.js";
import { pushFromConfig } from "../internal/push/index.js";

export type ProviderName = "apns" | "fcm" | "webpush" | "webhook";

/** What the parent asks for. */
export interface DriverRun {
  type: "run";
  provider: ProviderName;
  /** One device each, of `provider`, with a token its stand-in accepts. */
  devices: Array<{ userId: string; token: string }>;
  dataDir: string;
  warmupMs: number;
  measureMs: number;
  /** The measured window also ends once this many were sent in it (0: no cap). */
  countMax: number;
  window: number;
}

export interface DriverResult {
  provider: ProviderName;
  /** Sent (the metric) in the measured window. */
  notifications: number;
  seconds: number;
  per_second: number;
  cpu_seconds: number;
  cpu_us_per_notification: number | null;
  /** Whole run (warm-up, window and drain): the metric's count by result for this provider. */
  totals: Record<string, number>;
  /** notify() calls in the whole run, and those that queued nothing or threw. */
  issued: number;
  refused: number;
  /** From the window's end until every job had ended. */
  drain_ms: number;
}

/** What the driver tells the parent: set up, the window's start and end (for the parent's own CPU), the result. */
export type DriverMessage =
  | { type: "ready" }
  | { type: "measuring" }
  | { type: "measured" }
  | { type: "result"; result: DriverResult }
  | { type: "error"; message: string };

/** Resolves once the message is handed to the channel (so a disconnect after it does not lose it). */
const tell = (m: DriverMessage) =>
  new Promise<void>((resolve) => {
    if (!process.send) return resolve();
    process.send(m, undefined, undefined, () => resolve());
  });

/**
 * The job store, with a callback when a job ends. A Proxy rather than a class implementing the
 * interface, so the store keeps whatever else the service may call on it.
 */
function withEndSignal(store: PushJobStore, ended: () => void): PushJobStore {
  return new Proxy(store, {
    get(target, key) {
      if (key === "remove")
        return async (id: string) => {
          await target.remove(id);
          ended();
        };
      if (key === "deadLetter")
        return async (...args: Parameters<PushJobStore["deadLetter"]>) => {
          await target.deadLetter(...args);
          ended();
        };
      const value: unknown = Reflect.get(target, key, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

async function countsOf(metrics: Metrics, provider: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const v of (await metrics.pushNotifications.get()).values)
    if (v.labels.provider === provider) out[String(v.labels.result)] = v.value;
  return out;
}

async function run(r: DriverRun): Promise<DriverResult> {
  mkdirSync(r.dataDir, { recursive: true });
  const config = loadConfig(process.env);
  const log = createLogger({ role: "push-bench" });
  const metrics = createMetrics();
  const backends = new EmbeddedBackends({ dataDir: r.dataDir });
  let issued = 0;
  let ended = 0;
  let refused = 0;
  let wake: (() => void) | undefined;
  const progress = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const jobs = withEndSignal(backends.pushJobs, () => {
    ended++;
    progress();
  });
  const push = pushFromConfig(config, backends.devices, backends.settings, { jobs }, log, metrics);
  let watchdog: NodeJS.Timeout | undefined;
  try {
    await Promise.all(
      r.devices.map((d) =>
        backends.devices.put({
          userId: d.userId,
          deviceId: `bench-${r.provider}`,
          provider: r.provider,
          token: d.token,
          registeredAtMs: Date.now(),
        }),
      ),
    );
    await tell({ type: "ready" });
    const open = () => issued - ended - refused;
    /** Keeps `window` notifications open until `done()`; each user gets its own conversation. */
    const drive = async (done: () => boolean) => {
      while (!done()) {
        if (open() >= r.window) {
          await new Promise<void>((resolve) => {
            wake = resolve;
          });
          continue;
        }
        const i = issued++;
        const d = r.devices[i % r.devices.length]!;
        push
          .notify({
            userId: d.userId,
            conversationId: `dm-${d.userId}`,
            title: "bench",
            body: `notification ${i}`,
          })
          .then(
            (n) => {
              if (n !== 1) {
                refused++;
                progress();
              }
            },
            (err: unknown) => {
              refused++;
              log.warn("push bench: notify failed", { err });
              progress();
            },
          );
      }
    };
    // Woken by a job's end, or every second to look at the clock again (a stalled provider).
    watchdog = setInterval(progress, 1000);
    const warmEnd = performance.now() + r.warmupMs;
    await drive(() => performance.now() >= warmEnd);
    const sent0 = (await countsOf(metrics, r.provider)).sent ?? 0;
    const ended0 = ended;
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    void tell({ type: "measuring" });
    await drive(
      () => performance.now() - t0 >= r.measureMs || (r.countMax > 0 && ended - ended0 >= r.countMax),
    );
    const seconds = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const sent = ((await countsOf(metrics, r.provider)).sent ?? 0) - sent0;
    void tell({ type: "measured" });
    const drainStart = performance.now();
    while (open() > 0) {
      if (performance.now() - drainStart > 120_000)
        throw new Error(`push bench: ${open()} notifications still open 120 s after the window`);
      await new Promise<void>((resolve) => {
        wake = resolve;
      });
    }
    const drainMs = performance.now() - drainStart;
    // A job's end reaches the job store a few promise hops before the service counts it as sent.
    await new Promise((r) => setImmediate(r));
    const cpuSeconds = (cpu.user + cpu.system) / 1e6;
    return {
      provider: r.provider,
      notifications: sent,
      seconds: Math.round(seconds * 1000) / 1000,
      per_second: Math.round(sent / seconds),
      cpu_seconds: Math.round(cpuSeconds * 1000) / 1000,
      cpu_us_per_notification: sent > 0 ? Math.round((cpuSeconds * 1e6) / sent) : null,
      totals: await countsOf(metrics, r.provider),
      issued,
      refused,
      drain_ms: Math.round(drainMs),
    };
  } finally {
    clearInterval(watchdog);
    // The APNs provider's HTTP/2 session is unref'd: without a handle of ours the process would end
    // while its close is under way, before the result is sent.
    const keepAlive = setTimeout(() => undefined, 30_000);
    await push.close();
    await backends.close();
    clearTimeout(keepAlive);
  }
}

process.once("message", (m: DriverRun) => {
  run(m)
    .then(
      (result) => tell({ type: "result", result }),
      (err: unknown) => {
        process.exitCode = 1;
        return tell({
          type: "error",
          message: err instanceof Error ? (err.stack ?? err.message) : String(err),
        });
      },
    )
    .finally(() => process.disconnect?.());
});
