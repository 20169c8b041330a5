/**
 * Leader election on a coordination.k8s.io/v1 Lease, as client-go does it, so two operator replicas
 * never both act:
 * - a candidate takes the Lease when it is absent, released (no holder), ours, or expired — expiry is
 *   judged on this process's monotonic clock from when it first saw the current record, never from the
 *   holder's timestamps (clocks differ between machines);
 * - every write is conditional on resourceVersion, so of two candidates exactly one wins (409 = lost);
 * - the leader renews every retry period; if no renewal succeeds within the renew deadline, or it sees
 *   another holder, it stops leading (the signal aborts) and `run` rejects. The caller should exit and
 *   come back as a candidate: work it started may still be running. renewDeadline < leaseDuration is
 *   what makes this safe: the leader gives up before any candidate can consider the Lease expired.
 */
import type { KubeConfig } from "@kubernetes/client-node";
import type { Logger } from "../../internal/lib/log.js";
import { isConflict, isNotFound, KubeClient } from "../kube/client.js";
import type { OperatorRuntimeMetrics } from "./metrics.js";
import { sleep } from "./sleep.js";

export interface LeaderElectionOptions {
  kubeConfig: KubeConfig;
  namespace: string;
  name: string;
  /** Unique per process (e.g. pod name + random suffix): two processes with one identity both lead. */
  identity: string;
  /** How long a candidate waits on an unchanged record before taking it over. Default 15. */
  leaseDurationSeconds?: number;
  /** How long the leader keeps leading without a successful renewal. Default 10. */
  renewDeadlineSeconds?: number;
  /** Interval between attempts (campaign and renewal). Default 2. */
  retryPeriodSeconds?: number;
  log: Logger;
  metrics?: OperatorRuntimeMetrics;
  /** For tests: the API client to use (e.g. one whose requests can be made to fail). */
  client?: KubeClient;
}

/** A Lease as JSON (times are strings on the wire; client-node's V1Lease types them as Date). */
interface Lease {
  apiVersion: "coordination.k8s.io/v1";
  kind: "Lease";
  metadata: { name: string; namespace: string; resourceVersion?: string };
  spec: {
    holderIdentity?: string | null;
    leaseDurationSeconds?: number;
    acquireTime?: string;
    renewTime?: string;
    leaseTransitions?: number;
  };
}

/** held: this process holds the Lease now; other: someone else validly does; failed: unknown (retry). */
type Attempt = { outcome: "held" } | { outcome: "other"; holder: string } | { outcome: "failed" };

/** MicroTime: RFC 3339 with microseconds. */
const microTime = (ms: number) => new Date(ms).toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");

export class LeaderElector {
  private leading = false;
  private running = false;
  private readonly client: KubeClient;
  private readonly leaseMs: number;
  private readonly renewDeadlineMs: number;
  private readonly retryMs: number;
  /** The last record seen (its resourceVersion) and when, on the local monotonic clock, it was first seen. */
  private observed: { version: string; atMs: number } | undefined;

  constructor(private readonly o: LeaderElectionOptions) {
    this.client = o.client ?? new KubeClient(o.kubeConfig);
    this.leaseMs = (o.leaseDurationSeconds ?? 15) * 1000;
    this.renewDeadlineMs = (o.renewDeadlineSeconds ?? 10) * 1000;
    this.retryMs = (o.retryPeriodSeconds ?? 2) * 1000;
    if (!(this.leaseMs > this.renewDeadlineMs && this.renewDeadlineMs > this.retryMs && this.retryMs > 0))
      throw new Error(
        `leader election ${o.namespace}/${o.name}: need leaseDuration > renewDeadline > retryPeriod > 0, got ` +
          `${this.leaseMs} ms, ${this.renewDeadlineMs} ms, ${this.retryMs} ms`,
      );
    // The Lease API takes whole seconds.
    if (!Number.isInteger(this.leaseMs / 1000))
      throw new Error(`leader election ${o.namespace}/${o.name}: leaseDurationSeconds must be an integer`);
  }

  get isLeader(): boolean {
    return this.leading;
  }

  /**
   * Campaigns until it holds the Lease, then calls lead(signal) and keeps renewing. Resolves when `stop`
   * aborts (after `lead` has returned, renewing meanwhile) or `lead` returns on its own, and releases
   * the Lease so a successor takes over at once. Rejects when leadership is lost (renewal deadline
   * missed, or another holder seen), without waiting for `lead`, whose signal has aborted; and with
   * `lead`'s error if it throws (after releasing).
   */
  async run(lead: (signal: AbortSignal) => Promise<void>, stop: AbortSignal): Promise<void> {
    if (this.running) throw new Error(`leader election ${this.o.namespace}/${this.o.name}: already running`);
    this.running = true;
    try {
      await this.runOnce(lead, stop);
    } finally {
      this.running = false;
    }
  }

  private async runOnce(lead: (signal: AbortSignal) => Promise<void>, stop: AbortSignal): Promise<void> {
    const log = this.o.log.child({ lease: `${this.o.namespace}/${this.o.name}`, identity: this.o.identity });

    // --- campaign ---------------------------------------------------------------------------
    let acquiredAt: number | undefined;
    while (!stop.aborted) {
      const attemptAt = performance.now();
      if ((await this.tryAcquireOrRenew(log)).outcome === "held") {
        acquiredAt = attemptAt;
        break;
      }
      // Jitter keeps candidates that started together from asking in lockstep.
      await sleep(this.retryMs * (1 + Math.random() * 0.2), stop);
    }
    if (acquiredAt === undefined) return;
    if (stop.aborted) return this.release(log);
    this.setLeading(true);
    log.info("became leader");

    // --- lead and renew ---------------------------------------------------------------------
    const leadership = new AbortController();
    const ended = new AbortController(); // ends the renew loop
    const onStop = () => leadership.abort();
    stop.addEventListener("abort", onStop, { once: true });

    let lostError: Error | undefined;
    let signalLost: () => void = () => {};
    const lost = new Promise<void>((resolve) => {
      signalLost = resolve;
    });
    const lose = (why: string) => {
      if (lostError || ended.signal.aborted) return;
      lostError = new Error(`leader election ${this.o.namespace}/${this.o.name}: leadership lost: ${why}`);
      leadership.abort();
      ended.abort();
      signalLost();
    };
    let deadline: NodeJS.Timeout | undefined;
    const armDeadline = (renewedAt: number) => {
      clearTimeout(deadline);
      deadline = setTimeout(
        () => lose(`no renewal succeeded within the renew deadline (${this.renewDeadlineMs} ms)`),
        Math.max(0, renewedAt + this.renewDeadlineMs - performance.now()),
      );
    };
    armDeadline(acquiredAt);

    let workFailed = false;
    let workError: unknown;
    // `async` wrapper: a `lead` that throws synchronously is a failed lead, not a crashed run.
    const work = (async () => lead(leadership.signal))().then(
      () => undefined,
      (err: unknown) => {
        workFailed = true;
        workError = err;
      },
    );

    const renewing = (async () => {
      while (!ended.signal.aborted) {
        await sleep(this.retryMs, ended.signal);
        if (ended.signal.aborted) return;
        // Counted from when the request was sent: the renewTime written is no later than that.
        const attemptAt = performance.now();
        const attempt = await this.tryAcquireOrRenew(log);
        if (ended.signal.aborted) return;
        if (attempt.outcome === "held") armDeadline(attemptAt);
        else if (attempt.outcome === "other") lose(`the Lease is now held by ${attempt.holder}`);
      }
    })();

    const outcome = await Promise.race([
      work.then(() => "returned" as const),
      lost.then(() => "lost" as const),
    ]);
    stop.removeEventListener("abort", onStop);
    if (outcome === "returned") {
      // Let an in-flight renewal finish so it cannot overwrite the release below.
      ended.abort();
      await renewing;
    }
    clearTimeout(deadline);
    this.setLeading(false);
    if (lostError) {
      log.error("leadership lost; stop working now", { err: lostError });
      throw lostError;
    }
    if (workFailed) log.error("lead failed; releasing the Lease", { err: workError });
    await this.release(log);
    if (workFailed) throw workError;
  }

  private setLeading(on: boolean): void {
    this.leading = on;
    this.o.metrics?.leader.set(on ? 1 : 0);
  }

  private ref() {
    return {
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      namespace: this.o.namespace,
      name: this.o.name,
    };
  }

  /** One attempt to take or keep the Lease. Never rejects. */
  private async tryAcquireOrRenew(log: Logger): Promise<Attempt> {
    const now = Date.now();
    const spec = {
      holderIdentity: this.o.identity,
      leaseDurationSeconds: this.leaseMs / 1000,
      renewTime: microTime(now),
    };
    try {
      const lease = await this.client.find<Lease>(this.ref());
      if (!lease) {
        await this.client.create<Lease>({
          apiVersion: "coordination.k8s.io/v1",
          kind: "Lease",
          metadata: { name: this.o.name, namespace: this.o.namespace },
          spec: { ...spec, acquireTime: microTime(now), leaseTransitions: 0 },
        });
        return { outcome: "held" };
      }
      const s = lease.spec;
      const version = lease.metadata.resourceVersion ?? "";
      const seenAt = performance.now();
      if (this.observed?.version !== version) this.observed = { version, atMs: seenAt };
      const holder = s.holderIdentity ?? "";
      const ours = holder === this.o.identity;
      const durationMs = (s.leaseDurationSeconds ?? this.leaseMs / 1000) * 1000;
      if (!ours && holder !== "" && this.observed.atMs + durationMs > seenAt)
        return { outcome: "other", holder };
      await this.client.replace<Lease>({
        ...lease,
        spec: {
          ...s,
          ...spec,
          acquireTime: ours && s.acquireTime ? s.acquireTime : microTime(now),
          leaseTransitions: (s.leaseTransitions ?? 0) + (ours ? 0 : 1),
        },
      });
      if (!ours) log.info("took over the Lease", { previous: holder || "(released)" });
      return { outcome: "held" };
    } catch (err) {
      // 409: another candidate wrote first (it won this round); 404: deleted under us. Both: retry.
      if (!isConflict(err) && !isNotFound(err)) log.warn("lease request failed", { err });
      return { outcome: "failed" };
    }
  }

  /** Gives the Lease up so a successor need not wait for it to expire. Never rejects. */
  private async release(log: Logger): Promise<void> {
    try {
      const lease = await this.client.find<Lease>(this.ref());
      if (!lease || lease.spec.holderIdentity !== this.o.identity) return;
      const now = microTime(Date.now());
      await this.client.replace<Lease>({
        ...lease,
        spec: {
          ...lease.spec,
          holderIdentity: null,
          leaseDurationSeconds: 1,
          acquireTime: now,
          renewTime: now,
        },
      });
      log.info("released the Lease");
    } catch (err) {
      log.warn("could not release the Lease; the successor waits for it to expire", { err });
    }
  }
}
