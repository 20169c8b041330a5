/** The informer (list+watch cache) and its watchdog against a real kube-apiserver (test/infra/up.sh kube). */
import { randomBytes } from "node:crypto";
import { KubeConfig, type V1ConfigMap, Watch } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Logger } from "../../internal/lib/log.js";
import { ensureServer } from "../../test/infra/servers.js";
import { KubeClient, resourcePath } from "../kube/client.js";
import { Informer, type InformerOptions, type WatchFactory } from "./informer.js";
import { createOperatorRuntimeMetrics, type OperatorRuntimeMetrics } from "./metrics.js";

const log: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => log };
const NS = `sb-inf-${randomBytes(3).toString("hex")}`;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
let kc: KubeConfig;
let kube: KubeClient;
const informers: Array<Informer<V1ConfigMap>> = [];

async function until(what: string, check: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
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
  await Promise.all(informers.map((i) => i.stop()));
  await kube?.delete({ apiVersion: "v1", kind: "Namespace", name: NS });
});

/** Each test labels its ConfigMaps with its own value, so tests sharing the namespace see only theirs. */
function fixture(test: string) {
  const selector = `informer-test=${test}`;
  const ref = (name: string) => ({ apiVersion: "v1", kind: "ConfigMap", namespace: NS, name });
  const events: string[] = [];
  return {
    events,
    create: (name: string, value = "1", labelled = true) =>
      kube.create<V1ConfigMap>({
        apiVersion: "v1",
        kind: "ConfigMap",
        metadata: { name, namespace: NS, ...(labelled ? { labels: { "informer-test": test } } : {}) },
        data: { value },
      }),
    update: (name: string, value: string) => kube.mergePatch(ref(name), { data: { value } }),
    remove: (name: string) => kube.delete(ref(name)),
    informer(o: Partial<InformerOptions<V1ConfigMap>> = {}) {
      const informer = new Informer<V1ConfigMap>({
        kubeConfig: kc,
        name: test,
        path: resourcePath({ apiVersion: "v1", kind: "ConfigMap", namespace: NS }),
        list: () => kube.list<V1ConfigMap>({ apiVersion: "v1", kind: "ConfigMap", namespace: NS }, selector),
        labelSelector: selector,
        log,
        ...o,
      });
      informer.on((event, obj, old) =>
        events.push(
          `${event}:${obj.metadata?.name}` +
            (event === "update" ? `:${old?.data?.value}->${obj.data?.value}` : ""),
        ),
      );
      informers.push(informer);
      return informer;
    },
  };
}

/** client-node's Watch, as the informer opens it by default, counting opens and closes. */
function realWatch(counts: { opened: number; closed: number }): WatchFactory {
  return async (path, query, onEvent, onDone) => {
    const controller = await new Watch(kc).watch(path, query, onEvent, onDone);
    counts.opened++;
    return () => {
      counts.closed++;
      controller.abort();
    };
  };
}

/** A watch the server accepted but that never delivers anything (a stalled connection). */
function deadWatch(counts: { opened: number; closed: number }): WatchFactory {
  return async () => {
    counts.opened++;
    return () => {
      counts.closed++;
    };
  };
}

async function value(metrics: OperatorRuntimeMetrics, metric: keyof OperatorRuntimeMetrics, labels: object) {
  const m = metrics[metric] as { get(): Promise<{ values: Array<{ labels: object; value: number }> }> };
  const found = (await m.get()).values.filter((v) =>
    Object.entries(labels).every(([k, want]) => (v.labels as Record<string, unknown>)[k] === want),
  );
  return found.reduce((sum, v) => sum + v.value, 0);
}

describe("Informer", () => {
  it("syncs with a list, then follows adds, updates and deletes through the watch", async () => {
    const f = fixture("live");
    await f.create("before-1");
    await f.create("before-2", "x");
    await f.create("unlabelled", "1", false);
    const informer = f.informer();
    expect(informer.synced).toBe(false);
    await informer.start();
    expect(informer.synced).toBe(true);
    expect(
      informer
        .list()
        .map((c) => c.metadata?.name)
        .sort(),
    ).toEqual(["before-1", "before-2"]);
    expect(informer.get(NS, "before-2")?.data?.value).toBe("x");
    expect(informer.get(NS, "unlabelled")).toBeUndefined();
    expect(f.events.sort()).toEqual(["add:before-1", "add:before-2"]);

    f.events.length = 0;
    await f.create("live");
    await until("add", () => f.events.includes("add:live"));
    await f.update("live", "2");
    await until("update", () => f.events.includes("update:live:1->2"));
    expect(informer.get(NS, "live")?.data?.value).toBe("2");
    await f.remove("live");
    await until("delete", () => f.events.includes("delete:live"));
    expect(informer.get(NS, "live")).toBeUndefined();
    expect(f.events).toEqual(["add:live", "update:live:1->2", "delete:live"]);

    await informer.stop();
    await f.create("after-stop");
    await sleep(300);
    expect(f.events).not.toContain("add:after-stop");
  });

  it("a watch that never delivers: the watchdog restarts it and the relist delivers the missed add, update and delete", async () => {
    const f = fixture("silent");
    const metrics = createOperatorRuntimeMetrics();
    const dead = { opened: 0, closed: 0 };
    const real = { opened: 0, closed: 0 };
    // The first two watches stall; the third is real.
    const dead2 = deadWatch(dead);
    const real2 = realWatch(real);
    const watchFactory: WatchFactory = (...args) => (dead.opened < 2 ? dead2 : real2)(...args);
    await f.create("changed", "1");
    await f.create("deleted");
    const informer = f.informer({ silenceTimeoutMs: 1_500, relistPeriodMs: 600_000, metrics, watchFactory });
    await informer.start();
    await until("the stalled watch is open", () => dead.opened === 1);
    f.events.length = 0;

    // Changes while the watch is stalled.
    await f.create("missed");
    await f.update("changed", "2");
    await f.remove("deleted");
    await sleep(300);
    expect(f.events).toEqual([]);
    await until("the missed events, recovered", () => f.events.length === 3, 10_000);
    expect(f.events.sort()).toEqual(["add:missed", "delete:deleted", "update:changed:1->2"]);
    expect(informer.get(NS, "deleted")).toBeUndefined();
    expect(informer.get(NS, "changed")?.data?.value).toBe("2");
    expect(
      await value(metrics, "watchRestartsTotal", { informer: "silent", reason: "silent" }),
    ).toBeGreaterThanOrEqual(1);
    expect(
      await value(metrics, "relistsTotal", { informer: "silent", reason: "silent" }),
    ).toBeGreaterThanOrEqual(1);
    expect(await value(metrics, "relistsTotal", { informer: "silent", reason: "start" })).toBe(1);

    // Then the real watch takes over and follows live changes.
    await until("the real watch is open", () => real.opened === 1, 10_000);
    const restarts = await value(metrics, "watchRestartsTotal", { informer: "silent" });
    await f.create("after");
    await until("live add after recovery", () => f.events.includes("add:after"));
    expect(await value(metrics, "watchRestartsTotal", { informer: "silent" })).toBe(restarts);
    // Every watch opened was closed: the stalled ones by the watchdog, the real one by stop().
    await informer.stop();
    expect(dead).toEqual({ opened: 2, closed: 2 });
    expect(real).toEqual({ opened: 1, closed: 1 });
  });

  it("a watch broken for good: the periodic relist keeps the cache converging, and the silence shows in the gauge", async () => {
    const f = fixture("periodic");
    const metrics = createOperatorRuntimeMetrics();
    const dead = { opened: 0, closed: 0 };
    const informer = f.informer({
      silenceTimeoutMs: 60_000,
      relistPeriodMs: 500,
      metrics,
      watchFactory: deadWatch(dead),
    });
    await f.create("p-gone-later");
    await informer.start();
    f.events.length = 0;
    await f.create("p-missed");
    await f.remove("p-gone-later");
    await until("converged", () => f.events.length === 2, 10_000);
    expect(f.events.sort()).toEqual(["add:p-missed", "delete:p-gone-later"]);
    expect(
      await value(metrics, "relistsTotal", { informer: "periodic", reason: "periodic" }),
    ).toBeGreaterThanOrEqual(1);
    // A periodic relist is routine: the watch it closed does not count as a restart.
    expect(await value(metrics, "watchRestartsTotal", { informer: "periodic" })).toBe(0);
    // The relists hide nothing: the watch's last event stays where it was, so its silence grows.
    const lastEvent = async () => {
      const text = await metrics.registry.metrics();
      const m =
        /^switchboard_operator_watch_last_event_timestamp_seconds\{informer="periodic"\} ([\d.e+]+)$/m.exec(
          text,
        );
      return Number(m?.[1]);
    };
    const heard = await lastEvent();
    expect(heard).toBeGreaterThan(Date.now() / 1000 - 60);
    await sleep(1_200);
    expect(await lastEvent()).toBe(heard);
    expect(Date.now() / 1000 - heard).toBeGreaterThanOrEqual(1);
    await informer.stop();
    expect(dead.opened).toBeGreaterThanOrEqual(2);
    expect(dead.closed).toBe(dead.opened);
    // A stopped informer's series is dropped, so it cannot look stalled.
    expect(await metrics.registry.metrics()).not.toMatch(
      /last_event_timestamp_seconds\{informer="periodic"\}/,
    );
  });

  it("relists on 410 Gone and resumes watching", async () => {
    const f = fixture("gone");
    const metrics = createOperatorRuntimeMetrics();
    const real = { opened: 0, closed: 0 };
    const realFactory = realWatch(real);
    let opens = 0;
    // The first watch answers 410 Gone (its resourceVersion was compacted away), as a Status event.
    const watchFactory: WatchFactory = async (path, query, onEvent, onDone) => {
      if (++opens > 1) return realFactory(path, query, onEvent, onDone);
      setTimeout(() => {
        onEvent("ERROR", {
          kind: "Status",
          code: 410,
          reason: "Expired",
          message: "too old resource version",
        });
        onDone(null);
      }, 50);
      return () => {};
    };
    const informer = f.informer({ metrics, watchFactory });
    await informer.start();
    await until("relisted after 410", () => real.opened === 1, 10_000);
    expect(await value(metrics, "relistsTotal", { informer: "gone", reason: "gone" })).toBe(1);
    expect(await value(metrics, "watchRestartsTotal", { informer: "gone", reason: "gone" })).toBe(1);
    await f.create("after-gone");
    await until("live add", () => f.events.includes("add:after-gone"));
    await informer.stop();
  });

  it("reopens a watch the server closed on its timeout, without a restart or a relist", async () => {
    const f = fixture("timeout");
    const metrics = createOperatorRuntimeMetrics();
    const real = { opened: 0, closed: 0 };
    // A 4 s silence timeout asks the server to end each watch after 3 s (80%, in whole seconds).
    const informer = f.informer({ silenceTimeoutMs: 4_000, metrics, watchFactory: realWatch(real) });
    await informer.start();
    await until("two watches ended on their timeout", () => real.opened >= 3, 20_000);
    await f.create("still-followed");
    await until("live add", () => f.events.includes("add:still-followed"));
    expect(await value(metrics, "watchRestartsTotal", { informer: "timeout" })).toBe(0);
    expect(await value(metrics, "relistsTotal", { informer: "timeout" })).toBe(1);
    await informer.stop();
    expect(real.closed).toBe(real.opened);
  });
});
