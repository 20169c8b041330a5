/**
 * Leader election on a coordination.k8s.io/v1 Lease, as client-go does it, so two operator replicas
 * never both act: a candidate takes the Lease when it is absent, released, or has not been renewed
 * for its duration — judged on this process's clock from when the record last changed, never from
 * the holder's timestamps (clocks differ). Writes are conditional on resourceVersion, so of two
 * candidates exactly one wins. The leader renews every retry period; if no renewal succeeds within the
 * renew deadline it stops leading (the signal aborts) and `run` rejects: the process should exit and
 * come back as a candidate, since work it started may still be running.
 */
import type { KubeConfig } from "@kubernetes/client-node";
import type { Logger } from "../../internal/lib/log.js";
import { isConflict, isNotFound, KubeClient } from "../kube/client.js";
import type { OperatorRuntimeMetrics } from "./metrics.js";

export interface LeaderElectionOptions {
  kubeConfig: KubeConfig;
  namespace: string;
  name: string;
  identity: string;
  leaseDurationSeconds?: number;
  renewDeadlineSeconds?: number;
  retryPeriodSeconds?: number;
  log: Logger;
  metrics?: OperatorRuntimeMetrics;
  /** For tests: the API client (e.g. one whose writes fail). */
  client?: KubeClient;
}

/** A Lease as JSON (times are strings on the wire; client-node's V1Lease types them as Date). */
interface Lease {
  apiVersion: "coordination.k8s.io/v1";
  kind: "Lease";
  metadata: { name: string; namespace: string; resourceVersion?: string };
  spec: {
    holderIdentity?: string;
    leaseDurationSeconds?: number;
    acquireTime?: string;
    renewTime?: string;
    leaseTransitions?: number;
  };
}

/** MicroTime: RFC 3339 with microseconds. */
const microTime = (ms: number) => new Date(ms).toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");
const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(resolve, ms);
    signal.addEventListener(
      "abort",
      () => {
        clearTimeout(t);
        resolve();
      },
      { once: true },
    );
  });

export class LeaderElector {
  private leading = false;
  private readonly client: KubeClient;
  private readonly leaseMs: number;
  private readonly renewDeadlineMs: number;
  private readonly retryMs: number;
  /** The last record seen and when (local clock) it was first seen: how expiry is judged. */
  private observed: { key: string; atMs: number } | undefined;

  constructor(private readonly o: LeaderElectionOptions) {
    this.client = o.client ?? new KubeClient(o.kubeConfig);
    this.leaseMs = (o.leaseDurationSeconds ?? 15) * 1000;
    this.renewDeadlineMs = (o.renewDeadlineSeconds ?? 10) * 1000;
    this.retryMs = (o.retryPeriodSeconds ?? 2) * 1000;
    if (!(this.leaseMs > this.renewDeadlineMs && this.renewDeadlineMs > this.retryMs))
      throw new Error("leader election: need leaseDuration > renewDeadline > retryPeriod");
  }

  get isLeader(): boolean {
    return this.leading;
  }

  async run(lead: (signal: AbortSignal) => Promise<void>, stop: AbortSignal): Promise<void> {
    const log = this.o.log.child({ lease: `${this.o.namespace}/${this.o.name}`, identity: this.o.identity });
    // --- campaign ---
    while (!stop.aborted) {
      if (await this.tryAcquireOrRenew(log)) break;
      await sleep(this.retryMs, stop);
    }
    if (stop.aborted) return;
    this.setLeading(true);
    log.info("became leader");

    // --- lead and renew ---
    const leadership = new AbortController();
    const onStop = () => leadership.abort();
    stop.addEventListener("abort", onStop, { once: true });
    const work = lead(leadership.signal);
    // A `lead` that fails ends leadership too (its error is reported by run()).
    let workError: unknown;
    work.catch((err: unknown) => {
      workError = err;
      leadership.abort();
    });
    let lastRenew = Date.now();
    let lost = false;
    while (!leadership.signal.aborted) {
      await sleep(this.retryMs, leadership.signal);
      if (leadership.signal.aborted) break;
      if (await this.tryAcquireOrRenew(log)) lastRenew = Date.now();
      else if (Date.now() - lastRenew > this.renewDeadlineMs) {
        lost = true;
        break;
      }
    }
    this.setLeading(false);
    leadership.abort();
    stop.removeEventListener("abort", onStop);
    await work.catch(() => undefined);
    if (lost) {
      log.error("leadership lost: no renewal within the renew deadline");
      throw new Error(
        `lost the Lease ${this.o.namespace}/${this.o.name}: not renewed within ${this.renewDeadlineMs} ms`,
      );
    }
    if (workError !== undefined) {
      await this.release(log);
      throw workError;
    }
    await this.release(log);
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

  /** One attempt; true when this process holds the Lease afterwards. */
  private async tryAcquireOrRenew(log: Logger): Promise<boolean> {
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
        return true;
      }
      const s = lease.spec;
      const key = `${s.holderIdentity}|${s.renewTime}|${lease.metadata.resourceVersion}`;
      if (this.observed?.key !== key) this.observed = { key, atMs: now };
      const holder = s.holderIdentity ?? "";
      const ours = holder === this.o.identity;
      const durationMs = (s.leaseDurationSeconds ?? this.leaseMs / 1000) * 1000;
      if (!ours && holder !== "" && this.observed.atMs + durationMs > now) return false;
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
      return true;
    } catch (err) {
      if (!isConflict(err) && !isNotFound(err)) log.warn("lease request failed", { err });
      return false;
    }
  }

  /** Gives the Lease up so a successor need not wait for it to expire. */
  private async release(log: Logger): Promise<void> {
    try {
      const lease = await this.client.find<Lease>(this.ref());
      if (!lease || lease.spec.holderIdentity !== this.o.identity) return;
      await this.client.replace<Lease>({
        ...lease,
        spec: {
          ...lease.spec,
          holderIdentity: "",
          leaseDurationSeconds: 1,
          renewTime: microTime(Date.now()),
        },
      });
      log.info("released the Lease");
    } catch (err) {
      log.warn("could not release the Lease; the successor waits for it to expire", { err });
    }
  }
}
