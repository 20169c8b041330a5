/**
 * Push notifications (`--push`, opt-in): two figures, against the protocol-checking provider stand-ins
 * of test/helpers/push-stand-ins (APNs over HTTP/2 + TLS verifying the ES256 provider token, an OAuth2
 * token endpoint and FCM v1 verifying the RS256 grant and the bearer, a Web Push service over TLS
 * verifying VAPID and decrypting every RFC 8291 payload, a webhook receiver recomputing the HMAC and
 * refusing replays). The stand-ins run in this process, on the generator's core.
 *
 *   1. Throughput per provider: the push service as the server builds it, in a process of its own on
 *      the server's core (push-driver.ts: pushFromConfig, the embedded backend's device store,
 *      settings and durable job store), keeps `window` notifications open to `users` users with one
 *      device each, collapse off. Notifications sent per second over a steady-state window, CPU µs
 *      per notification of the push process and of the stand-in.
 *   2. Latency: `switchboard start` (embedded) configured the single-process way (credential files,
 *      SWITCHBOARD_PUSH_*, collapse window 0) with the webhook and APNs stand-ins; a recipient
 *      registers a webhook and an APNs device over the WebSocket and disconnects; a sender sends to
 *      it open loop. Per message and provider: from the sender's ack to the stand-in's receipt of the
 *      provider request (matched by the message body the notification carries).
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { SwitchboardClient } from "../sdk/src/index.js";
import { TestPki } from "../test/helpers/certificates.js";
import { ApnsStandIn } from "../test/helpers/push-stand-ins/apns.js";
import { FcmStandIn } from "../test/helpers/push-stand-ins/fcm.js";
import type { Script } from "../test/helpers/push-stand-ins/scripted.js";
import { vapidKeys, WebPushStandIn } from "../test/helpers/push-stand-ins/web-push.js";
import { WebhookReceiver } from "../test/helpers/push-stand-ins/webhook.js";
import { nearestRank } from "./hist.js";
import type { ServerSettings } from "./options.js";
import type { DriverMessage, DriverResult, DriverRun, ProviderName } from "./push-driver.js";
import {
  forget,
  hasTaskset,
  type Killable,
  killOnExit,
  machineBusySeconds,
  procCpuSeconds,
} from "./server.js";
import { ProcessSystem } from "./sut.js";

export const PUSH_PROVIDERS: readonly ProviderName[] = ["apns", "fcm", "webpush", "webhook"];
const DRIVER_BIN = resolve(fileURLToPath(import.meta.url), "../push-driver.js");
const WEBHOOK_SECRET = "whsec-bench";
const RECIPIENT = "push-recipient";
const SENDER = "push-sender";
const RECIPIENT_APNS_TOKEN = "cd".repeat(32);

export interface PushOptions {
  providers: ProviderName[];
  /** Throughput: users, one device each. */
  users: number;
  /** Throughput: notifications between notify() and their job's end, at most. */
  window: number;
  warmupMs: number;
  measureMs: number;
  /** Throughput: the window also ends after this many sent (0: none). */
  countMax: number;
  /** Throughput: extra node flags of the push processes (e.g. --cpu-prof). */
  nodeArgs: string[];
  /** Latency: messages per second (open loop) and for how long; 0 seconds: not measured. */
  latencyRate: number;
  latencySeconds: number;
  bodyBytes: number;
  server: ServerSettings;
  /** Before each measurement, wait up to quietWaitMs for other work to use less than quietThreshold cores. */
  quietThreshold: number;
  quietWaitMs: number;
  log: (s: string) => void;
}

export interface PushThroughput extends DriverResult {
  /** Push process cores over the window (its CPU / the window). */
  service_cores: number;
  /** The stand-in's requests accepted in the window, per second, and this process's CPU for them. */
  stand_in_per_second: number;
  stand_in_cores: number;
  stand_in_cpu_us_per_notification: number | null;
  /** Requests the stand-in accepted in the whole run (must equal totals.sent). */
  stand_in_delivered: number;
  /** Cores other processes used in the window (neither the push process nor this one). */
  other_cores: number;
  violations: string[];
  verdict: string;
}

export interface Spread {
  p50_ms: number;
  p90_ms: number;
  p99_ms: number;
  max_ms: number;
}

export interface PushLatencyByProvider {
  provider: ProviderName;
  /** Messages acked, each of which must reach this provider once. */
  expected: number;
  received: number;
  missing: number;
  duplicates: number;
  /** From the sender's ack (negative: the provider request came first). */
  ack_to_provider: Spread;
  /** From the message's scheduled send. */
  send_to_provider: Spread;
  /** switchboard_push_notifications_total{provider,result} on the server, whole run (warm-up included). */
  server_counts: Record<string, number>;
}

export interface PushLatency {
  rate: number;
  seconds: number;
  messages: number;
  acked: number;
  send_errors: number;
  /** Scheduled send → ack. */
  ack: Spread;
  /** Cores of the server, and of other processes than the server and this one, while sending. */
  server_cores: number;
  other_cores: number;
  by_provider: PushLatencyByProvider[];
  violations: string[];
}

export interface PushResult {
  users: number;
  window: number;
  throughput: PushThroughput[];
  latency: PushLatency | null;
}

/** The four stand-ins, their credentials as files, and the settings that point a push service at them. */
class StandIns {
  readonly apns = new ApnsStandIn();
  readonly fcm = new FcmStandIn();
  readonly webhook = new WebhookReceiver(WEBHOOK_SECRET);
  readonly webPush: WebPushStandIn;
  private readonly vapid = vapidKeys();
  private readonly pki = new TestPki();
  private readonly webPushCa: string;
  private readonly subscriptions: string[] = [];

  private constructor(private readonly dir: string) {
    const ca = this.pki.ca("web-push-ca");
    this.webPushCa = ca.cert;
    this.webPush = new WebPushStandIn(this.vapid.publicKey, this.pki.issue(ca, { cn: "localhost" }));
  }

  static async start(dataRoot: string): Promise<StandIns> {
    const s = new StandIns(mkdtempSync(join(dataRoot, "switchboard-bench-push-credentials-")));
    await Promise.all([s.apns.start(), s.fcm.start(), s.webPush.start(), s.webhook.start()]);
    return s;
  }

  private file(name: string, content: string): string {
    const path = join(this.dir, name);
    writeFileSync(path, content, { mode: 0o600 });
    return path;
  }

  /** SWITCHBOARD_PUSH_* for `providers` (the webhook's signing key always), as an operator sets them. */
  env(providers: readonly ProviderName[]): Record<string, string> {
    const env: Record<string, string> = {
      // The stand-ins' certificates, trusted the way an operator adds a private CA.
      NODE_EXTRA_CA_CERTS: this.file("stand-in-cas.pem", this.apns.ca + this.webPushCa),
      SWITCHBOARD_PUSH_WEBHOOK_SECRET_FILE: this.file("webhook.secret", WEBHOOK_SECRET),
      // The stand-ins listen on loopback, which users' URLs may not reach otherwise.
      SWITCHBOARD_PUSH_ALLOW_PRIVATE_ENDPOINTS: "true",
      // Every message notifies: no burst is held for a summary.
      SWITCHBOARD_PUSH_COLLAPSE_WINDOW_MS: "0",
      SWITCHBOARD_LOG_LEVEL: "warn",
    };
    if (providers.includes("apns"))
      Object.assign(env, {
        SWITCHBOARD_PUSH_APNS_KEY_FILE: this.file("AuthKey.p8", this.apns.keyPem),
        SWITCHBOARD_PUSH_APNS_KEY_ID: this.apns.keyId,
        SWITCHBOARD_PUSH_APNS_TEAM_ID: this.apns.teamId,
        SWITCHBOARD_PUSH_APNS_TOPIC: this.apns.topic,
        SWITCHBOARD_PUSH_APNS_ORIGIN: this.apns.origin,
      });
    if (providers.includes("fcm"))
      Object.assign(env, {
        SWITCHBOARD_PUSH_FCM_SERVICE_ACCOUNT_FILE: this.file(
          "service-account.json",
          this.fcm.serviceAccountJson(),
        ),
        SWITCHBOARD_PUSH_FCM_ORIGIN: this.fcm.origin,
      });
    if (providers.includes("webpush"))
      Object.assign(env, {
        SWITCHBOARD_PUSH_WEBPUSH_VAPID_PUBLIC_KEY: this.vapid.publicKey,
        SWITCHBOARD_PUSH_WEBPUSH_VAPID_PRIVATE_KEY_FILE: this.file("vapid.key", this.vapid.privateKey),
        SWITCHBOARD_PUSH_WEBPUSH_SUBJECT: "mailto:bench@switchboard.dev",
      });
    return env;
  }

  /** The device token of user `i` for `provider`: one its stand-in accepts (a browser subscription each for Web Push). */
  token(provider: ProviderName, i: number): string {
    switch (provider) {
      case "apns":
        return (i + 1).toString(16).padStart(64, "0");
      case "fcm":
        return `fcm-push-user-${i}`;
      case "webpush":
        while (this.subscriptions.length <= i) this.subscriptions.push(this.webPush.subscribe().token);
        return this.subscriptions[i]!;
      case "webhook":
        return `${this.webhook.origin}/push-user-${i}`;
    }
  }

  script(provider: ProviderName): Script {
    return this.of(provider).script;
  }

  delivered(provider: ProviderName): number {
    return this.of(provider).delivered.length;
  }

  private of(provider: ProviderName) {
    return { apns: this.apns, fcm: this.fcm, webpush: this.webPush, webhook: this.webhook }[provider];
  }

  async close(): Promise<void> {
    await Promise.all([this.apns.close(), this.fcm.close(), this.webPush.close(), this.webhook.close()]);
    this.pki.close();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export async function runPush(o: PushOptions): Promise<PushResult> {
  const standIns = await StandIns.start(o.server.dataRoot);
  try {
    const throughput: PushThroughput[] = [];
    for (const provider of o.providers) {
      o.log(
        `push throughput: ${provider}, ${o.users} users, ${o.window} open, ${o.measureMs / 1000} s after ${o.warmupMs / 1000} s warm-up`,
      );
      const r = await measureThroughput(provider, standIns, o);
      o.log(
        `  ${r.per_second} notifications/s, push process ${r.cpu_us_per_notification} µs and stand-in ${r.stand_in_cpu_us_per_notification} µs per notification; ${r.verdict}`,
      );
      throughput.push(r);
    }
    const latency = o.latencySeconds > 0 ? await measureLatency(standIns, o) : null;
    return { users: o.users, window: o.window, throughput, latency };
  } finally {
    await standIns.close();
  }
}

const cpuSeconds = (u: NodeJS.CpuUsage) => (u.user + u.system) / 1e6;
const round2 = (x: number) => Math.round(x * 100) / 100;

/**
 * Waits until processes other than this one and `alsoOurs` (CPU seconds so far) used less than the
 * threshold over a second, or the wait ran out: on a shared 2-core box their work is in the figures.
 * Returns the last load seen, in cores.
 */
async function quietDown(alsoOurs: () => number, o: PushOptions): Promise<number> {
  const deadline = performance.now() + o.quietWaitMs;
  for (let first = true; ; first = false) {
    const [m0, c0, p0, t0] = [machineBusySeconds(), alsoOurs(), process.cpuUsage(), performance.now()];
    await new Promise((r) => setTimeout(r, 1000));
    const ours = alsoOurs() - c0 + cpuSeconds(process.cpuUsage(p0));
    const other = (machineBusySeconds() - m0 - ours) / ((performance.now() - t0) / 1000);
    if (other < o.quietThreshold || performance.now() >= deadline) {
      if (!first || other >= o.quietThreshold) o.log(`  other processes: ${other.toFixed(2)} cores`);
      return other;
    }
    if (first)
      o.log(`  waiting for other processes (${other.toFixed(2)} cores) to drop below ${o.quietThreshold}`);
  }
}

/** One provider: a fresh push process and data dir, driven by push-driver.ts. */
async function measureThroughput(
  provider: ProviderName,
  standIns: StandIns,
  o: PushOptions,
): Promise<PushThroughput> {
  const dataDir = mkdtempSync(join(o.server.dataRoot, "switchboard-bench-push-"));
  const devices = Array.from({ length: o.users }, (_, i) => ({
    userId: `push-user-${i}`,
    token: standIns.token(provider, i),
  }));
  const script = standIns.script(provider);
  const deliveredBefore = standIns.delivered(provider);
  const violationsBefore = script.violations.length;
  await quietDown(() => 0, o);
  let argv = [process.execPath, ...o.nodeArgs, DRIVER_BIN];
  if (o.server.serverCpus !== undefined && hasTaskset())
    argv = ["taskset", "-c", o.server.serverCpus, ...argv];
  if (o.server.nice) argv = ["nice", "-n", String(o.server.nice), ...argv];
  const child = spawn(argv[0]!, argv.slice(1), {
    env: { ...process.env, ...standIns.env([provider]) },
    stdio: ["ignore", "ignore", "pipe", "ipc"],
  });
  const guard: Killable = { killNow: () => child.kill("SIGKILL") };
  killOnExit(guard);
  const stderr: string[] = [];
  child.stderr!.on("data", (chunk: Buffer) => {
    stderr.push(...chunk.toString("utf8").split("\n").filter(Boolean));
    if (stderr.length > 30) stderr.splice(0, stderr.length - 30);
  });
  const exited = new Promise<number | null>((res) => child.once("exit", (code) => res(code)));
  let window:
    | { cpu: NodeJS.CpuUsage; delivered: number; at: number; busy: number; driver: number }
    | undefined;
  let standIn = { cpuSeconds: 0, delivered: 0, seconds: 0, otherCores: 0 };
  const driverCpu = () => {
    try {
      return procCpuSeconds(child.pid!);
    } catch {
      return 0;
    }
  };
  try {
    const result = await new Promise<DriverResult>((res, rej) => {
      child.on("message", (m: DriverMessage) => {
        if (m.type === "measuring")
          window = {
            cpu: process.cpuUsage(),
            delivered: standIns.delivered(provider),
            at: performance.now(),
            busy: machineBusySeconds(),
            driver: driverCpu(),
          };
        else if (m.type === "measured" && window) {
          const seconds = (performance.now() - window.at) / 1000;
          const own = cpuSeconds(process.cpuUsage(window.cpu));
          const busy = machineBusySeconds() - window.busy;
          standIn = {
            cpuSeconds: own,
            delivered: standIns.delivered(provider) - window.delivered,
            seconds,
            otherCores: (busy - own - (driverCpu() - window.driver)) / seconds,
          };
        } else if (m.type === "result") res(m.result);
        else if (m.type === "error") rej(new Error(`push driver (${provider}): ${m.message}`));
      });
      // Its exit can be seen before its last messages are read: those come until the channel closes.
      const closed = new Promise<void>((r) => (child.connected ? child.once("disconnect", () => r()) : r()));
      void Promise.all([exited, closed]).then(([code]) =>
        setTimeout(
          () =>
            rej(
              new Error(`push driver (${provider}) exited (${code}) before its result: ${stderr.join("\n")}`),
            ),
          100,
        ),
      );
      const run: DriverRun = {
        type: "run",
        provider,
        devices,
        dataDir,
        warmupMs: o.warmupMs,
        measureMs: o.measureMs,
        countMax: o.countMax,
        window: o.window,
      };
      child.send(run);
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(timer);
    const delivered = standIns.delivered(provider) - deliveredBefore;
    const violations = script.violations.slice(violationsBefore);
    const problems = [
      ...(delivered !== (result.totals.sent ?? 0)
        ? [`stand-in accepted ${delivered}, push sent ${result.totals.sent ?? 0}`]
        : []),
      ...(violations.length > 0 ? [`${violations.length} protocol violations`] : []),
      ...["failed", "dropped", "retried", "pruned"]
        .filter((k) => (result.totals[k] ?? 0) > 0)
        .map((k) => `${result.totals[k]} ${k}`),
      ...(result.refused > 0 ? [`${result.refused} notify() queued nothing`] : []),
    ];
    for (const line of stderr) o.log(`  push driver: ${line}`);
    return {
      ...result,
      service_cores: result.seconds > 0 ? round2(result.cpu_seconds / result.seconds) : 0,
      stand_in_per_second: standIn.seconds > 0 ? Math.round(standIn.delivered / standIn.seconds) : 0,
      stand_in_cores: standIn.seconds > 0 ? round2(standIn.cpuSeconds / standIn.seconds) : 0,
      stand_in_cpu_us_per_notification:
        standIn.delivered > 0 ? Math.round((standIn.cpuSeconds * 1e6) / standIn.delivered) : null,
      stand_in_delivered: delivered,
      other_cores: round2(Math.max(0, standIn.otherCores)),
      violations: violations.slice(0, 10),
      verdict: problems.length === 0 ? "ok" : problems.join("; "),
    };
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    forget(guard);
    if (!o.server.keepData) rmSync(dataDir, { recursive: true, force: true });
  }
}

function spread(values: number[]): Spread {
  const sorted = [...values].sort((a, b) => a - b);
  const r = (x: number) => Math.round(x * 1000) / 1000;
  return {
    p50_ms: r(nearestRank(sorted, 50)),
    p90_ms: r(nearestRank(sorted, 90)),
    p99_ms: r(nearestRank(sorted, 99)),
    max_ms: r(sorted.at(-1) ?? Number.NaN),
  };
}

/**
 * When each of a stand-in's accepted requests arrived, by its index in the stand-in's `delivered`:
 * the stand-in records a request it accepts in the same synchronous step as its answer, so the
 * answer's time belongs to the delivery that is next in line. Returns the times and an undo.
 */
function stampArrivals(
  script: Script,
  delivered: readonly unknown[],
): { at: Map<number, number>; undo: () => void } {
  const at = new Map<number, number>();
  const answer = script.answer;
  script.answer = (token, success) => {
    at.set(delivered.length, performance.now());
    return answer.call(script, token, success);
  };
  return { at, undo: () => (script.answer = answer) };
}

const waitUntil = async (ok: () => boolean, timeoutMs: number) => {
  const deadline = Date.now() + timeoutMs;
  while (!ok() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  return ok();
};

/** Ack → provider request on the real server process, webhook and APNs. */
async function measureLatency(standIns: StandIns, o: PushOptions): Promise<PushLatency> {
  const providers = ["webhook", "apns"] as const;
  const sut = await ProcessSystem.start("switchboard", o.server, { env: standIns.env(providers) });
  o.log(
    `push latency: ${sut.description}, ${o.latencyRate} msgs/s for ${o.latencySeconds} s to an offline user`,
  );
  const { webhook, apns } = standIns;
  const stamps = {
    webhook: stampArrivals(webhook.script, webhook.delivered),
    apns: stampArrivals(apns.script, apns.delivered),
  };
  const firsts = { webhook: webhook.delivered.length, apns: apns.delivered.length };
  const violationsBefore = { webhook: webhook.script.violations.length, apns: apns.script.violations.length };
  /** Bodies of the notifications that reached each stand-in for the recipient, with their arrival time. */
  const arrivals = (provider: "webhook" | "apns"): Array<{ body: string; at: number }> => {
    const out: Array<{ body: string; at: number }> = [];
    const stamp = stamps[provider].at;
    if (provider === "webhook") {
      for (let j = firsts.webhook; j < webhook.delivered.length; j++) {
        const d = webhook.delivered[j]!;
        if (d.path === `/${RECIPIENT}`) out.push({ body: d.body.body, at: stamp.get(j) ?? Number.NaN });
      }
    } else {
      for (let j = firsts.apns; j < apns.delivered.length; j++) {
        const d = apns.delivered[j]!;
        if (d.token === RECIPIENT_APNS_TOKEN)
          out.push({ body: d.payload.aps.alert.body, at: stamp.get(j) ?? Number.NaN });
      }
    }
    return out;
  };
  let sender: SwitchboardClient | undefined;
  try {
    const [senderToken, recipientToken] = await sut.tokens([SENDER, RECIPIENT]);
    const recipient = new SwitchboardClient({
      url: sut.receiverUrl,
      token: recipientToken!,
      encoding: "binary",
    });
    await recipient.connect();
    await recipient.registerDevice({
      deviceId: "crm",
      provider: "webhook",
      token: `${webhook.origin}/${RECIPIENT}`,
    });
    await recipient.registerDevice({ deviceId: "iphone", provider: "apns", token: RECIPIENT_APNS_TOKEN });
    await recipient.close();
    sender = new SwitchboardClient({ url: sut.senderUrl, token: senderToken!, encoding: "binary" });
    await sender.connect();
    // The router learns that the recipient went offline from the routing events: until then a
    // message reaches no provider. Warm-up messages until one reaches both (also opening the
    // APNs session and the webhook's connection).
    const warmDeadline = Date.now() + 30_000;
    let warm = 0;
    const bothWarm = () => providers.every((p) => arrivals(p).some((a) => a.body.startsWith("warm-")));
    while (!bothWarm()) {
      if (Date.now() > warmDeadline)
        throw new Error("push latency: no warm-up notification reached both stand-ins in 30 s");
      await sender.send({ toUser: RECIPIENT }, `warm-${warm++}`);
      await waitUntil(bothWarm, 250);
    }
    await new Promise((r) => setTimeout(r, 500));
    const serverCpu = () => sut.serverCpuSeconds().server ?? 0;
    await quietDown(serverCpu, o);

    const n = Math.round(o.latencyRate * o.latencySeconds);
    const pad = (k: number) => {
      const head = `pl-${k}-`;
      return head + "x".repeat(Math.max(0, o.bodyBytes - head.length));
    };
    const scheduled: number[] = new Array(n);
    const ackAt: number[] = new Array(n).fill(Number.NaN);
    let sendErrors = 0;
    const acks: Array<Promise<void>> = [];
    const t0 = performance.now() + 20;
    const s = sender;
    const [busy0, server0, own0] = [machineBusySeconds(), serverCpu(), process.cpuUsage()];
    await new Promise<void>((done) => {
      let k = 0;
      // Open loop: whatever is due goes out, however the server keeps up.
      const timer = setInterval(() => {
        const now = performance.now();
        while (k < n && t0 + (k * 1000) / o.latencyRate <= now) {
          const i = k++;
          scheduled[i] = t0 + (i * 1000) / o.latencyRate;
          acks.push(
            s.send({ toUser: RECIPIENT }, pad(i)).then(
              () => {
                ackAt[i] = performance.now();
              },
              () => {
                sendErrors++;
              },
            ),
          );
        }
        if (k >= n) {
          clearInterval(timer);
          done();
        }
      }, 1);
    });
    await Promise.all(acks);
    const sendSeconds = (performance.now() - t0) / 1000;
    const serverSeconds = serverCpu() - server0;
    const otherSeconds = machineBusySeconds() - busy0 - serverSeconds - cpuSeconds(process.cpuUsage(own0));
    const acked = ackAt.filter((x) => !Number.isNaN(x)).length;
    // Every acked message reaches both stand-ins, or they stop receiving for 10 s.
    const received = () =>
      providers.reduce((sum, p) => sum + arrivals(p).filter((a) => a.body.startsWith("pl-")).length, 0);
    let seen = received();
    let changedAt = Date.now();
    while (seen < acked * providers.length && Date.now() - changedAt < 10_000) {
      await new Promise((r) => setTimeout(r, 20));
      const now = received();
      if (now !== seen) [seen, changedAt] = [now, Date.now()];
    }
    const counted = await sut.metrics(
      providers.flatMap((p) =>
        ["sent", "retried", "failed", "dropped"].map(
          (r) => `switchboard_push_notifications_total{provider="${p}",result="${r}"}`,
        ),
      ),
    );
    const byProvider = providers.map((provider): PushLatencyByProvider => {
      const first = new Map<number, number>();
      let duplicates = 0;
      for (const a of arrivals(provider)) {
        const k = /^pl-(\d+)-/.exec(a.body)?.[1];
        if (k === undefined) continue;
        if (first.has(Number(k))) duplicates++;
        else first.set(Number(k), a.at);
      }
      const fromAck: number[] = [];
      const fromSend: number[] = [];
      let missing = 0;
      for (let k = 0; k < n; k++) {
        if (Number.isNaN(ackAt[k]!)) continue;
        const at = first.get(k);
        if (at === undefined) {
          missing++;
          continue;
        }
        fromAck.push(at - ackAt[k]!);
        fromSend.push(at - scheduled[k]!);
      }
      const serverCounts: Record<string, number> = {};
      for (const r of ["sent", "retried", "failed", "dropped"])
        serverCounts[r] =
          counted?.[`switchboard_push_notifications_total{provider="${provider}",result="${r}"}`] ?? 0;
      return {
        provider,
        expected: acked,
        received: first.size,
        missing,
        duplicates,
        ack_to_provider: spread(fromAck),
        send_to_provider: spread(fromSend),
        server_counts: serverCounts,
      };
    });
    return {
      rate: o.latencyRate,
      seconds: o.latencySeconds,
      messages: n,
      acked,
      send_errors: sendErrors,
      ack: spread(ackAt.flatMap((a, k) => (Number.isNaN(a) ? [] : [a - scheduled[k]!]))),
      server_cores: round2(serverSeconds / sendSeconds),
      other_cores: round2(Math.max(0, otherSeconds / sendSeconds)),
      by_provider: byProvider,
      violations: [
        ...webhook.script.violations.slice(violationsBefore.webhook),
        ...apns.script.violations.slice(violationsBefore.apns),
      ].slice(0, 10),
    };
  } finally {
    await sender?.close();
    stamps.webhook.undo();
    stamps.apns.undo();
    await sut.stop();
  }
}
