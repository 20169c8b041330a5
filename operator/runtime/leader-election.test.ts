/** Lease-based leader election against a real kube-apiserver (test/infra/up.sh kube). */
import { randomBytes } from "node:crypto";
import { KubeConfig } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Logger } from "../../internal/lib/log.js";
import { ensureServer } from "../../test/infra/servers.js";
import { KubeApiError, KubeClient } from "../kube/client.js";
import { LeaderElector } from "./leader-election.js";
import { createOperatorRuntimeMetrics, type OperatorRuntimeMetrics } from "./metrics.js";

const log: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => log };
const NS = `sb-le-${randomBytes(3).toString("hex")}`;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
let kc: KubeConfig;
let kube: KubeClient;

interface LeaseJson {
  metadata: { resourceVersion: string };
  spec: {
    holderIdentity?: string;
    leaseDurationSeconds?: number;
    acquireTime?: string;
    renewTime?: string;
    leaseTransitions?: number;
  };
}
const leaseRef = (name: string) => ({
  apiVersion: "coordination.k8s.io/v1",
  kind: "Lease",
  namespace: NS,
  name,
});

async function until(what: string, check: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** A client whose requests can be made to fail, as during a network partition from the API server. */
class PartitionableClient extends KubeClient {
  partitioned = false;
  override async request(
    method: string,
    path: string,
    body?: unknown,
    contentType?: string,
  ): Promise<unknown> {
    if (this.partitioned)
      throw new KubeApiError(method, path, 503, "ServiceUnavailable", "simulated partition");
    return super.request(method, path, body, contentType);
  }
}

/** Leads until its signal aborts, recording who leads when (to catch any overlap). */
class Candidate {
  readonly stop = new AbortController();
  readonly elector: LeaderElector;
  readonly metrics: OperatorRuntimeMetrics = createOperatorRuntimeMetrics();
  signal: AbortSignal | undefined;
  run: Promise<void> | undefined;

  constructor(
    readonly identity: string,
    lease: string,
    private readonly leading: Set<string>,
    private readonly overlaps: string[],
    client?: KubeClient,
  ) {
    this.elector = new LeaderElector({
      kubeConfig: kc,
      namespace: NS,
      name: lease,
      identity,
      leaseDurationSeconds: 3,
      renewDeadlineSeconds: 2,
      retryPeriodSeconds: 0.5,
      log,
      metrics: this.metrics,
      ...(client ? { client } : {}),
    });
  }

  start(): Promise<void> {
    this.run = this.elector.run(async (signal) => {
      this.signal = signal;
      if (this.leading.size > 0)
        this.overlaps.push(`${this.identity} started while ${[...this.leading]} led`);
      this.leading.add(this.identity);
      await new Promise<void>((r) => signal.addEventListener("abort", () => r(), { once: true }));
      this.leading.delete(this.identity);
    }, this.stop.signal);
    // Observed by the tests that expect a rejection; never left unhandled.
    this.run.catch(() => undefined);
    return this.run;
  }

  async leaderGauge(): Promise<number | undefined> {
    return (await this.metrics.leader.get()).values[0]?.value;
  }
}

beforeAll(async () => {
  const env = await ensureServer("kube");
  kc = new KubeConfig();
  kc.loadFromFile(env.KUBECONFIG as string);
  kube = new KubeClient(kc);
  await kube.create({ apiVersion: "v1", kind: "Namespace", metadata: { name: NS } });
});

afterAll(async () => {
  await kube?.delete({ apiVersion: "v1", kind: "Namespace", name: NS });
});

describe("LeaderElector", () => {
  it("lets exactly one of two candidates lead, and hands over at once when the leader stops", async () => {
    const leading = new Set<string>();
    const overlaps: string[] = [];
    const a = new Candidate("a", "handover", leading, overlaps);
    const b = new Candidate("b", "handover", leading, overlaps);
    void a.start();
    await until("a leads", () => a.elector.isLeader);
    void b.start();
    // Sampled over several renewals (every 0.5 s) and b's campaign attempts.
    for (let i = 0; i < 60; i++) {
      expect([a.elector.isLeader, b.elector.isLeader]).toEqual([true, false]);
      await sleep(50);
    }
    expect(await a.leaderGauge()).toBe(1);
    expect(await b.leaderGauge()).toBe(0);
    const held = await kube.get<LeaseJson>(leaseRef("handover"));
    expect(held.spec).toMatchObject({ holderIdentity: "a", leaseDurationSeconds: 3, leaseTransitions: 0 });
    expect(held.spec.renewTime).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);

    const stoppedAt = Date.now();
    a.stop.abort();
    await a.run;
    expect(a.elector.isLeader).toBe(false);
    expect(a.signal?.aborted).toBe(true);
    await until("b leads", () => b.elector.isLeader);
    // Released, not expired: b's next attempt (every 0.5 s) takes it, well before the 3 s lease runs out.
    expect(Date.now() - stoppedAt).toBeLessThan(1_500);
    expect(overlaps).toEqual([]);
    expect(await a.leaderGauge()).toBe(0);
    expect(await b.leaderGauge()).toBe(1);
    const taken = await kube.get<LeaseJson>(leaseRef("handover"));
    expect(taken.spec).toMatchObject({ holderIdentity: "b", leaseTransitions: 1 });
    expect(taken.spec.acquireTime).not.toBe(held.spec.acquireTime);

    b.stop.abort();
    await b.run;
    const released = await kube.get<LeaseJson>(leaseRef("handover"));
    expect(released.spec.holderIdentity ?? "").toBe("");
    expect(released.spec.leaseDurationSeconds).toBe(1);
  });

  it("a leader whose renewals fail stops leading within the renew deadline; the other waits out the lease", async () => {
    const leading = new Set<string>();
    const overlaps: string[] = [];
    const client = new PartitionableClient(kc);
    const a = new Candidate("a", "partition", leading, overlaps, client);
    const b = new Candidate("b", "partition", leading, overlaps);
    void a.start();
    await until("a leads", () => a.elector.isLeader);
    void b.start();
    await sleep(1_000);
    const cutAt = Date.now();
    client.partitioned = true;

    const err = await a.run?.then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    const lostAfter = Date.now() - cutAt;
    expect(err?.message).toMatch(/leadership lost: no renewal succeeded within the renew deadline/);
    expect(a.signal?.aborted).toBe(true);
    expect(a.elector.isLeader).toBe(false);
    // The last renewal was at most one retry period (0.5 s) before the cut; the deadline is 2 s.
    expect(lostAfter).toBeGreaterThanOrEqual(1_400);
    expect(lostAfter).toBeLessThan(2_300);

    await until("b leads", () => b.elector.isLeader, 10_000);
    // b waited the full 3 s lease, on its own clock, from the last renewal it saw (at most one retry
    // period, 0.5 s, before the cut).
    expect(Date.now() - cutAt).toBeGreaterThanOrEqual(2_400);
    expect(overlaps).toEqual([]);
    b.stop.abort();
    await b.run;
  });

  it("a leader that sees another holder on the Lease stops leading at once", async () => {
    const leading = new Set<string>();
    const a = new Candidate("a", "usurped", leading, []);
    void a.start();
    await until("a leads", () => a.elector.isLeader);
    // Another client overwrites the holder (as a misconfigured second operator or a human might).
    const lease = await kube.get<LeaseJson & { apiVersion: string; kind: string }>(leaseRef("usurped"));
    await kube.replace({
      ...lease,
      metadata: { ...lease.metadata, name: "usurped", namespace: NS },
      spec: { ...lease.spec, holderIdentity: "intruder" },
    });
    const overwrittenAt = Date.now();
    const err = await a.run?.then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toMatch(/leadership lost: the Lease is now held by intruder/);
    expect(a.signal?.aborted).toBe(true);
    expect(a.elector.isLeader).toBe(false);
    // Its next renewal attempt (within a retry period) noticed, well before the renew deadline.
    expect(Date.now() - overwrittenAt).toBeLessThan(1_500);
    expect(leading.size).toBe(0);
    // Lost, not released: the intruder keeps the Lease.
    expect((await kube.get<LeaseJson>(leaseRef("usurped"))).spec.holderIdentity).toBe("intruder");
  });

  it("rejects timings that could let two leaders overlap", () => {
    const make = (lease: number, renew: number, retry: number) =>
      new LeaderElector({
        kubeConfig: kc,
        namespace: NS,
        name: "x",
        identity: "x",
        leaseDurationSeconds: lease,
        renewDeadlineSeconds: renew,
        retryPeriodSeconds: retry,
        log,
      });
    expect(() => make(10, 10, 2)).toThrow(/leaseDuration > renewDeadline > retryPeriod/);
    expect(() => make(15, 10, 10)).toThrow(/leaseDuration > renewDeadline > retryPeriod/);
    expect(() => make(15, 10, 2)).not.toThrow();
  });
});
