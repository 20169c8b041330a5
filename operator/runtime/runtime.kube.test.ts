/** Leader election and the informer's watchdog against a real kube-apiserver. */
import { randomBytes } from "node:crypto";
import { KubeConfig, type V1ConfigMap } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Logger } from "../../internal/lib/log.js";
import { ensureServer } from "../../test/infra/servers.js";
import { KubeApiError, KubeClient, resourcePath } from "../kube/client.js";
import { Informer, type InformerEvent, type WatchFactory } from "./informer.js";
import { LeaderElector } from "./leader-election.js";
import { createOperatorRuntimeMetrics } from "./metrics.js";

const log: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => log };
const NS = `sb-rt-${randomBytes(3).toString("hex")}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
let kc: KubeConfig;
let kube: KubeClient;

async function until(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 20_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
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
  const elector = (identity: string, client?: KubeClient) =>
    new LeaderElector({
      kubeConfig: kc,
      namespace: NS,
      name: `lease-${identity.split("-")[0]}`,
      identity,
      leaseDurationSeconds: 3,
      renewDeadlineSeconds: 2,
      retryPeriodSeconds: 0.5,
      log,
      ...(client ? { client } : {}),
    });

  it("lets exactly one of two candidates lead, and hands over at once when the leader stops", async () => {
    const a = elector("one-a");
    const b = elector("one-b");
    const stopA = new AbortController();
    const stopB = new AbortController();
    const leading = new Set<string>();
    let overlap = false;
    const lead = (id: string) => async (signal: AbortSignal) => {
      if (leading.size > 0) overlap = true;
      leading.add(id);
      await new Promise<void>((r) => signal.addEventListener("abort", () => r(), { once: true }));
      leading.delete(id);
    };
    const runA = a.run(lead("a"), stopA.signal);
    await until("a leads", () => a.isLeader);
    const runB = b.run(lead("b"), stopB.signal);
    for (let i = 0; i < 20; i++) {
      expect(a.isLeader && b.isLeader).toBe(false);
      await sleep(100);
    }
    expect(a.isLeader).toBe(true);
    expect(b.isLeader).toBe(false);
    const stoppedAt = Date.now();
    stopA.abort();
    await runA;
    await until("b leads", () => b.isLeader);
    // Released, not expired: well under the 3 s lease duration.
    expect(Date.now() - stoppedAt).toBeLessThan(2_000);
    expect(overlap).toBe(false);
    const lease = await kube.get<{ spec: { holderIdentity: string; leaseTransitions: number } }>({
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      namespace: NS,
      name: "lease-one",
    });
    expect(lease.spec.holderIdentity).toBe("one-b");
    expect(lease.spec.leaseTransitions).toBe(1);
    stopB.abort();
    await runB;
  });

  it("takes over a Lease whose holder vanished, only after it expires", async () => {
    const crashed = elector("two-crashed");
    const stop = new AbortController();
    const run = crashed.run(async (signal) => {
      await new Promise<void>((r) => signal.addEventListener("abort", () => r(), { once: true }));
    }, stop.signal);
    await until("crashed leads", () => crashed.isLeader);
    // Simulate a crash: the holder's renewals stop, nothing is released. (A client whose every call
    // fails stands in for the dead process; the run below loses leadership on its own.)
    const dead = Object.create(kube) as KubeClient;
    dead.request = async () => {
      throw new KubeApiError("PUT", "/", 503, "ServiceUnavailable", "simulated");
    };
    (crashed as unknown as { client: KubeClient }).client = dead;
    const lost = await run.then(
      () => "returned",
      (err: Error) => err.message,
    );
    expect(lost).toMatch(/lost the Lease/);
    expect(crashed.isLeader).toBe(false);

    const successor = elector("two-successor");
    const stop2 = new AbortController();
    const started = Date.now();
    const run2 = successor.run(async (signal) => {
      await new Promise<void>((r) => signal.addEventListener("abort", () => r(), { once: true }));
    }, stop2.signal);
    await until("successor leads", () => successor.isLeader, 10_000);
    // It had to watch the record stay unchanged for the lease duration (3 s) on its own clock.
    expect(Date.now() - started).toBeGreaterThanOrEqual(2_900);
    stop2.abort();
    await run2;
    stop.abort();
  });
});

describe("Informer", () => {
  const cmPath = resourcePath({ apiVersion: "v1", kind: "ConfigMap", namespace: NS });
  const configMap = (name: string, value = "1"): V1ConfigMap => ({
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: { name, namespace: NS, labels: { "informer-test": "yes" } },
    data: { value },
  });
  const list = () =>
    kube.list<V1ConfigMap>({ apiVersion: "v1", kind: "ConfigMap", namespace: NS }, "informer-test=yes");

  it("syncs with a list, then follows adds, updates and deletes through the watch", async () => {
    await kube.create(configMap("before"));
    const events: string[] = [];
    const informer = new Informer<V1ConfigMap>({
      kubeConfig: kc,
      name: "cm",
      path: cmPath,
      list,
      labelSelector: "informer-test=yes",
      log,
    });
    informer.on((event: InformerEvent, obj) => events.push(`${event}:${obj.metadata?.name}`));
    await informer.start();
    try {
      expect(informer.synced).toBe(true);
      expect(informer.get(NS, "before")?.data?.value).toBe("1");
      await kube.create(configMap("live"));
      await until("add", () => events.includes("add:live"));
      await kube.mergePatch(
        { apiVersion: "v1", kind: "ConfigMap", namespace: NS, name: "live" },
        { data: { value: "2" } },
      );
      await until("update", () => informer.get(NS, "live")?.data?.value === "2");
      expect(events).toContain("update:live");
      await kube.delete({ apiVersion: "v1", kind: "ConfigMap", namespace: NS, name: "live" });
      await until("delete", () => events.includes("delete:live"));
      expect(informer.get(NS, "live")).toBeUndefined();
    } finally {
      await informer.stop();
      await kube.delete({ apiVersion: "v1", kind: "ConfigMap", namespace: NS, name: "before" });
    }
  });

  it("recovers what a silent, stalled watch missed: it restarts the watch and the relist diff emits the events", async () => {
    const metrics = createOperatorRuntimeMetrics();
    // The first watch is accepted by the server but delivers nothing (a stalled connection).
    let watches = 0;
    const stalledThenReal: WatchFactory = async (path, query, onEvent, onDone) => {
      watches++;
      if (watches === 1) return () => {};
      const { Watch } = await import("@kubernetes/client-node");
      const c = await new Watch(kc).watch(path, query, onEvent, onDone);
      return () => c.abort();
    };
    await kube.create(configMap("gone-later"));
    const events: string[] = [];
    const informer = new Informer<V1ConfigMap>({
      kubeConfig: kc,
      name: "stalled",
      path: cmPath,
      list,
      labelSelector: "informer-test=yes",
      silenceTimeoutMs: 1_000,
      relistPeriodMs: 60_000,
      log,
      metrics,
      watchFactory: stalledThenReal,
    });
    informer.on((event, obj) => events.push(`${event}:${obj.metadata?.name}`));
    await informer.start();
    try {
      // Changes while the watch is stalled.
      await kube.create(configMap("missed"));
      await kube.delete({ apiVersion: "v1", kind: "ConfigMap", namespace: NS, name: "gone-later" });
      await sleep(300);
      expect(events).not.toContain("add:missed");
      await until(
        "missed add and delete recovered",
        () => events.includes("add:missed") && events.includes("delete:gone-later"),
        10_000,
      );
      expect(watches).toBeGreaterThanOrEqual(2);
      const restarts = await metrics.watchRestartsTotal.get();
      expect(restarts.values.find((v) => v.labels.reason === "silent")?.value).toBeGreaterThanOrEqual(1);
      expect((await metrics.relistsTotal.get()).values[0]?.value).toBeGreaterThanOrEqual(2);
      // And the real watch that replaced it works.
      await kube.create(configMap("after"));
      await until("live add after recovery", () => events.includes("add:after"));
    } finally {
      await informer.stop();
      for (const name of ["missed", "after"])
        await kube.delete({ apiVersion: "v1", kind: "ConfigMap", namespace: NS, name });
    }
  });
});
