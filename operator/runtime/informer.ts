/**
 * A list+watch cache with a watchdog. client-node's own informer can stop or stall silently (a watch
 * that ends without an error, a connection that stays open and delivers nothing), so this one owns
 * one loop that holds at most one watch at a time and:
 *   - reopens the watch from the last resourceVersion when it ends (with backoff when it fails), and
 *     relists first on 410 Gone (the resourceVersion is too old to resume from);
 *   - restarts the watch, relisting first, when nothing (bookmarks included) arrived for
 *     `silenceTimeoutMs`. Healthy watches are opened with a server-side timeout shorter than that, so
 *     a quiet resource ends its watch cleanly before the watchdog fires (the API server sends
 *     bookmarks only about once a minute, and not at all while the resourceVersion stands still);
 *   - relists every `relistPeriodMs` and diffs the list against the cache, emitting the adds, updates
 *     and deletes a broken watch missed — which is what makes a missed event harmless.
 * The watch is closed while listing, so a list never races the events of a watch.
 * Handlers see each cache transition once; they should only enqueue keys.
 */
import { type KubeConfig, type KubernetesObject, Watch } from "@kubernetes/client-node";
import type { Logger } from "../../internal/lib/log.js";
import { forgetWatch, type OperatorRuntimeMetrics, recordWatchEvent } from "./metrics.js";
import { sleep } from "./sleep.js";

export interface InformerOptions<T extends KubernetesObject> {
  kubeConfig: KubeConfig;
  /** Names the informer in metrics (label informer) and logs. */
  name: string;
  /** Collection path, e.g. /apis/apps/v1/deployments or /api/v1/namespaces/ns/pods. */
  path: string;
  /** Lists the collection (same selector as the watch); its resourceVersion is where the watch starts. */
  list: () => Promise<{ items: T[]; metadata?: { resourceVersion?: string } }>;
  labelSelector?: string;
  /** Full relist (and cache diff) period. Default 5 min. */
  relistPeriodMs?: number;
  /** Restart the watch (relisting first) when no event, bookmarks included, arrived for this long. Default 60 s. */
  silenceTimeoutMs?: number;
  log: Logger;
  metrics?: OperatorRuntimeMetrics;
  /** For tests: opens a watch instead of client-node's Watch (e.g. one that never delivers). */
  watchFactory?: WatchFactory;
}

/**
 * Opens a watch on `path` with `query` (watch=true is implied). Events go to onEvent (type ADDED,
 * MODIFIED, DELETED, BOOKMARK or ERROR, and the object); onDone is called once when the watch ends,
 * with an error or null. Resolves with a function that closes the watch.
 */
export type WatchFactory = (
  path: string,
  query: Record<string, string | number | boolean>,
  onEvent: (type: string, obj: unknown) => void,
  onDone: (err: unknown) => void,
) => Promise<() => void>;

export type InformerEvent = "add" | "update" | "delete";
type Handler<T> = (event: InformerEvent, obj: T, old?: T) => void;

/** Why one watch ended. timeout: closed by the server when asked to (routine); stopped: stop(). */
interface WatchEnd {
  reason: "timeout" | "periodic" | "stopped" | "silent" | "ended" | "gone" | "error";
  /** Whether the watch delivered anything (bookmarks and errors included). */
  heard: boolean;
  err?: unknown;
}

type RelistReason = "start" | "periodic" | "silent" | "gone";

const MAX_BACKOFF_MS = 30_000;

const keyOf = (o: KubernetesObject) => `${o.metadata?.namespace ?? ""}/${o.metadata?.name ?? ""}`;

/** 200 ms doubling to 30 s, ±20% so informers that failed together do not retry together. */
const backoffMs = (failures: number) =>
  Math.min(MAX_BACKOFF_MS, 200 * 2 ** Math.min(Math.max(failures - 1, 0), 20)) * (0.8 + Math.random() * 0.4);

/** HTTP status of a watch failure: client-node's Error.statusCode, or a Status object's code. */
function statusOf(err: unknown): number | undefined {
  if (typeof err !== "object" || err === null) return undefined;
  const e = err as { statusCode?: unknown; code?: unknown };
  if (typeof e.statusCode === "number") return e.statusCode;
  return typeof e.code === "number" ? e.code : undefined;
}

export class Informer<T extends KubernetesObject> {
  private readonly cache = new Map<string, T>();
  private readonly handlers: Array<Handler<T>> = [];
  private readonly watchFactory: WatchFactory;
  private readonly relistPeriodMs: number;
  private readonly silenceTimeoutMs: number;
  /** Server-side timeout of each watch: shorter than the silence timeout (see the file comment). */
  private readonly watchTimeoutSeconds: number;
  private readonly log: Logger;
  private resourceVersion = "";
  /** When the last list started (monotonic clock): the periodic relist counts from there. */
  private lastListAt = 0;
  private isSynced = false;
  /** Present from start() until stop() completes. */
  private run: { stop: AbortController; starting: Promise<void>; loop?: Promise<void> } | undefined;
  private stopping: Promise<void> | undefined;

  constructor(private readonly o: InformerOptions<T>) {
    this.relistPeriodMs = o.relistPeriodMs ?? 5 * 60_000;
    this.silenceTimeoutMs = o.silenceTimeoutMs ?? 60_000;
    if (!(this.relistPeriodMs > 0 && this.silenceTimeoutMs > 0))
      throw new Error(`informer ${o.name}: relistPeriodMs and silenceTimeoutMs must be positive`);
    this.watchTimeoutSeconds = Math.max(1, Math.min(300, Math.floor((this.silenceTimeoutMs * 0.8) / 1000)));
    this.log = o.log.child({ informer: o.name });
    this.watchFactory =
      o.watchFactory ??
      (async (path, query, onEvent, onDone) => {
        const controller = await new Watch(o.kubeConfig).watch(path, query, onEvent, onDone);
        return () => controller.abort();
      });
  }

  /** Handlers run synchronously on each cache change; one that throws is logged and skipped. */
  on(handler: Handler<T>): void {
    this.handlers.push(handler);
  }

  /** True once the first list has filled the cache. */
  get synced(): boolean {
    return this.isSynced;
  }

  /** The cached objects (shared with the cache: do not modify them). */
  list(): T[] {
    return [...this.cache.values()];
  }

  get(namespace: string | undefined, name: string): T | undefined {
    return this.cache.get(`${namespace ?? ""}/${name}`);
  }

  /**
   * Resolves after the first list (the cache is synced), retrying it with backoff until it succeeds;
   * rejects only if stop() is called first. Then keeps watching in the background until stop().
   */
  start(): Promise<void> {
    if (this.run) return Promise.reject(new Error(`informer ${this.o.name}: already started`));
    const stop = new AbortController();
    const starting = this.sync(stop.signal).then(() => {
      // The loop never rejects: every failure inside it is retried.
      if (this.run && !stop.signal.aborted) this.run.loop = this.watchLoop(stop.signal);
    });
    this.run = { stop, starting };
    return starting;
  }

  /** Closes the watch, clears the timers and waits for the loop to end. Idempotent. */
  stop(): Promise<void> {
    const run = this.run;
    if (!run) return Promise.resolve();
    this.stopping ??= (async () => {
      run.stop.abort();
      await run.starting.catch(() => undefined);
      await run.loop;
      if (this.o.metrics) forgetWatch(this.o.metrics, this.o.name);
      this.run = undefined;
      this.stopping = undefined;
    })();
    return this.stopping;
  }

  private async sync(signal: AbortSignal): Promise<void> {
    for (let failures = 1; ; failures++) {
      try {
        await this.relist("start", signal);
        break;
      } catch (err) {
        if (signal.aborted) break;
        const delayMs = Math.round(backoffMs(failures));
        this.log.warn("list failed; retrying", { path: this.o.path, failures, delayMs, err });
        await sleep(delayMs, signal);
      }
    }
    if (signal.aborted) throw new Error(`informer ${this.o.name}: stopped before the cache synced`);
    this.isSynced = true;
    this.heard();
  }

  /** Watches until `signal` aborts, relisting and backing off as the ends of the watches ask. */
  private async watchLoop(signal: AbortSignal): Promise<void> {
    let failures = 0;
    let relist: RelistReason | undefined;
    while (!signal.aborted) {
      if (relist) {
        try {
          await this.relist(relist, signal);
          relist = undefined;
        } catch (err) {
          if (signal.aborted) return;
          failures++;
          const delayMs = Math.round(backoffMs(failures));
          this.log.warn("relist failed; retrying", { reason: relist, failures, delayMs, err });
          await sleep(delayMs, signal);
          continue;
        }
      }
      const end = await this.watchOnce(signal);
      if (signal.aborted || end.reason === "stopped") return;
      if (end.reason === "timeout") {
        failures = 0;
        continue;
      }
      if (end.reason === "periodic") {
        relist = "periodic";
        continue;
      }
      this.o.metrics?.watchRestartsTotal.inc({ informer: this.o.name, reason: end.reason });
      if (end.reason === "silent") {
        // The silence itself was the wait: restart at once, from a fresh list.
        this.log.warn("watch silent; restarting it and relisting", {
          silenceTimeoutMs: this.silenceTimeoutMs,
        });
        relist = "silent";
        continue;
      }
      if (end.reason === "gone") relist = "gone";
      // A watch that worked for a while starts the backoff over; one that failed at once grows it.
      failures = end.heard ? 1 : failures + 1;
      const delayMs = Math.round(backoffMs(failures));
      const fields = { reason: end.reason, delayMs, resourceVersion: this.resourceVersion };
      if (end.reason === "gone") this.log.info("watch expired (410 Gone); relisting", fields);
      else if (end.reason === "ended") this.log.info("watch ended early; reopening", fields);
      else this.log.warn("watch failed; reopening", { ...fields, err: end.err });
      await sleep(delayMs, signal);
    }
  }

  /** Opens one watch and resolves when it ends, for whatever reason; never rejects. */
  private watchOnce(signal: AbortSignal): Promise<WatchEnd> {
    return new Promise<WatchEnd>((resolve) => {
      const openedAt = performance.now();
      let lastAt = openedAt;
      let heard = false;
      let settled = false;
      let close: (() => void) | undefined;

      const finish = (end: WatchEnd) => {
        if (settled) return;
        settled = true;
        clearInterval(tick);
        signal.removeEventListener("abort", onAbort);
        close?.();
        close = undefined;
        resolve(end);
      };
      const onAbort = () => finish({ reason: "stopped", heard });

      const onEvent = (type: string, raw: unknown) => {
        if (settled) return;
        lastAt = performance.now();
        heard = true;
        this.heard();
        if (type === "ERROR") {
          const s = (raw ?? {}) as { code?: number; reason?: string; message?: string };
          const err = new Error(
            `informer ${this.o.name}: watch ${this.o.path} error ${s.code ?? "?"} ${s.reason ?? ""}: ${s.message ?? ""}`,
          );
          return finish({ reason: s.code === 410 ? "gone" : "error", heard, err });
        }
        const obj = raw as T;
        const rv = obj?.metadata?.resourceVersion;
        if (rv) this.resourceVersion = rv;
        if (type === "ADDED" || type === "MODIFIED") this.upsert(obj);
        else if (type === "DELETED") this.remove(obj);
        // BOOKMARK: only the resourceVersion, taken above.
      };
      const onDone = (err: unknown) => {
        if (settled) return;
        if (err) {
          const wrapped = new Error(`informer ${this.o.name}: watch ${this.o.path} failed`, { cause: err });
          return finish({ reason: statusOf(err) === 410 ? "gone" : "error", heard, err: wrapped });
        }
        // Closed when we asked the server to: the server is alive and answering.
        if (performance.now() - openedAt >= this.watchTimeoutSeconds * 1000 - 1_000) {
          this.heard();
          return finish({ reason: "timeout", heard });
        }
        finish({ reason: "ended", heard });
      };

      const tick = setInterval(
        () => {
          const now = performance.now();
          if (now - lastAt >= this.silenceTimeoutMs) finish({ reason: "silent", heard });
          else if (now - this.lastListAt >= this.relistPeriodMs) finish({ reason: "periodic", heard });
        },
        Math.min(5_000, Math.max(10, Math.min(this.silenceTimeoutMs, this.relistPeriodMs) / 4)),
      );
      signal.addEventListener("abort", onAbort, { once: true });
      if (signal.aborted) return onAbort();

      const query: Record<string, string | number | boolean> = {
        allowWatchBookmarks: true,
        timeoutSeconds: this.watchTimeoutSeconds,
      };
      if (this.resourceVersion) query.resourceVersion = this.resourceVersion;
      if (this.o.labelSelector) query.labelSelector = this.o.labelSelector;
      let opening: Promise<() => void>;
      try {
        opening = this.watchFactory(this.o.path, query, onEvent, onDone);
      } catch (err) {
        return finish({ reason: "error", heard, err });
      }
      // A watch that opens after we gave up on it (silence, stop) is closed as soon as it exists.
      opening.then(
        (closeWatch) => {
          if (settled) closeWatch();
          else close = closeWatch;
        },
        (err: unknown) =>
          finish({
            reason: "error",
            heard,
            err: new Error(`informer ${this.o.name}: could not open a watch on ${this.o.path}`, {
              cause: err,
            }),
          }),
      );
    });
  }

  /** Lists everything and makes the cache equal to it, emitting the differences. */
  private async relist(reason: RelistReason, signal: AbortSignal): Promise<void> {
    this.o.metrics?.relistsTotal.inc({ informer: this.o.name, reason });
    const startedAt = performance.now();
    let listed: Awaited<ReturnType<InformerOptions<T>["list"]>>;
    try {
      listed = await this.o.list();
    } catch (err) {
      throw new Error(`informer ${this.o.name}: list of ${this.o.path} failed`, { cause: err });
    }
    // Stopped meanwhile: emit nothing after stop().
    if (signal.aborted) return;
    const seen = new Set<string>();
    for (const obj of listed.items) {
      seen.add(keyOf(obj));
      this.upsert(obj);
    }
    for (const [key, old] of this.cache)
      if (!seen.has(key)) {
        this.cache.delete(key);
        this.emit("delete", old);
      }
    // Without one (a custom list), the watch starts at "now" and replays the current state as adds.
    this.resourceVersion = listed.metadata?.resourceVersion ?? "";
    this.lastListAt = startedAt;
  }

  private upsert(obj: T): void {
    const key = keyOf(obj);
    const old = this.cache.get(key);
    if (old && old.metadata?.resourceVersion === obj.metadata?.resourceVersion) return;
    this.cache.set(key, obj);
    this.emit(old ? "update" : "add", obj, old);
  }

  private remove(obj: T): void {
    if (this.cache.delete(keyOf(obj))) this.emit("delete", obj);
  }

  private emit(event: InformerEvent, obj: T, old?: T): void {
    for (const handler of this.handlers) {
      try {
        handler(event, obj, old);
      } catch (err) {
        this.log.error("informer handler threw", { event, key: keyOf(obj), err });
      }
    }
  }

  /** The informer heard from the API server: feeds the seconds-since-last-event gauge. */
  private heard(): void {
    if (this.o.metrics) recordWatchEvent(this.o.metrics, this.o.name, Date.now());
  }
}
