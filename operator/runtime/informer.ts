/**
 * A list+watch cache with a watchdog. client-node's own informer can stop or stall silently (a watch
 * that ends without an error, a connection that stays open and delivers nothing), so this one:
 *   - restarts the watch from the last resourceVersion whenever it ends, and relists on 410 Gone;
 *   - restarts the watch when nothing (bookmarks included) arrived for `silenceTimeoutMs`;
 *   - relists every `relistPeriodMs` and diffs the list against the cache, emitting the adds,
 *     updates and deletes a broken watch missed — which is what makes a missed event harmless.
 * Handlers see each change once per cache transition; they should only enqueue keys.
 */
import { type KubeConfig, type KubernetesObject, Watch } from "@kubernetes/client-node";
import type { Logger } from "../../internal/lib/log.js";
import type { OperatorRuntimeMetrics } from "./metrics.js";

export interface InformerOptions<T extends KubernetesObject> {
  kubeConfig: KubeConfig;
  name: string;
  /** Collection path, e.g. /apis/apps/v1/deployments or /api/v1/namespaces/ns/pods. */
  path: string;
  list: () => Promise<{ items: T[]; metadata?: { resourceVersion?: string } }>;
  labelSelector?: string;
  relistPeriodMs?: number;
  silenceTimeoutMs?: number;
  log: Logger;
  metrics?: OperatorRuntimeMetrics;
  /** For tests: opens the watch (default: client-node's Watch). Returns a function that aborts it. */
  watchFactory?: WatchFactory;
}

export type WatchFactory = (
  path: string,
  query: Record<string, string | boolean>,
  onEvent: (type: string, obj: unknown) => void,
  onDone: (err: unknown) => void,
) => Promise<() => void>;

export type InformerEvent = "add" | "update" | "delete";
type Handler<T> = (event: InformerEvent, obj: T, old?: T) => void;

const key = (o: KubernetesObject) => `${o.metadata?.namespace ?? ""}/${o.metadata?.name ?? ""}`;

export class Informer<T extends KubernetesObject> {
  private readonly cache = new Map<string, T>();
  private readonly handlers: Array<Handler<T>> = [];
  private resourceVersion = "";
  private abortWatch: (() => void) | undefined;
  private watchGeneration = 0;
  private lastEventAt = Date.now();
  private timers: NodeJS.Timeout[] = [];
  private retryTimer: NodeJS.Timeout | undefined;
  private retryDelayMs = 0;
  private stopped = false;
  private isSynced = false;
  private relisting: Promise<void> | undefined;
  private readonly watchFactory: WatchFactory;

  constructor(private readonly o: InformerOptions<T>) {
    this.watchFactory =
      o.watchFactory ??
      (async (path, query, onEvent, onDone) => {
        const controller = await new Watch(o.kubeConfig).watch(path, query, onEvent, onDone);
        return () => controller.abort();
      });
  }

  on(handler: Handler<T>): void {
    this.handlers.push(handler);
  }

  get synced(): boolean {
    return this.isSynced;
  }

  list(): T[] {
    return [...this.cache.values()];
  }

  get(namespace: string | undefined, name: string): T | undefined {
    return this.cache.get(`${namespace ?? ""}/${name}`);
  }

  async start(): Promise<void> {
    this.stopped = false;
    await this.relist();
    this.isSynced = true;
    this.startWatch();
    const period = this.o.relistPeriodMs ?? 5 * 60_000;
    const silence = this.o.silenceTimeoutMs ?? 60_000;
    this.timers.push(
      setInterval(
        () => void this.relist().catch((err: unknown) => this.o.log.warn("relist failed", { err })),
        period,
      ),
      setInterval(
        () => {
          if (Date.now() - this.lastEventAt > silence) this.restartWatch("silent");
        },
        Math.max(100, Math.min(silence / 4, 5_000)),
      ),
    );
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.abortWatch?.();
    this.abortWatch = undefined;
    await this.relisting?.catch(() => undefined);
  }

  /** Lists everything and reconciles the cache with it (one relist at a time). */
  private relist(): Promise<void> {
    this.relisting ??= (async () => {
      try {
        this.o.metrics?.relistsTotal.inc({ informer: this.o.name });
        const { items, metadata } = await this.o.list();
        if (this.stopped) return;
        const seen = new Set<string>();
        for (const obj of items) {
          seen.add(key(obj));
          this.upsert(obj);
        }
        for (const [k, old] of this.cache)
          if (!seen.has(k)) {
            this.cache.delete(k);
            this.emit("delete", old);
          }
        this.resourceVersion = metadata?.resourceVersion ?? this.resourceVersion;
        this.touch();
      } finally {
        this.relisting = undefined;
      }
    })();
    return this.relisting;
  }

  private startWatch(): void {
    if (this.stopped) return;
    const generation = ++this.watchGeneration;
    const query: Record<string, string | boolean> = {
      allowWatchBookmarks: true,
      resourceVersion: this.resourceVersion,
    };
    if (this.o.labelSelector) query.labelSelector = this.o.labelSelector;
    const current = () => generation === this.watchGeneration && !this.stopped;
    this.watchFactory(
      this.o.path,
      query,
      (type, raw) => {
        if (!current()) return;
        this.touch();
        this.retryDelayMs = 0;
        const obj = raw as T;
        const rv = obj.metadata?.resourceVersion;
        if (type === "BOOKMARK") {
          if (rv) this.resourceVersion = rv;
          return;
        }
        if (type === "ERROR") {
          const code = (raw as { code?: number }).code;
          // 410 Gone: the resourceVersion is too old; only a relist can continue.
          this.restartWatch(code === 410 ? "gone" : "error", true);
          return;
        }
        if (rv) this.resourceVersion = rv;
        if (type === "DELETED") {
          if (this.cache.delete(key(obj))) this.emit("delete", obj);
        } else this.upsert(obj);
      },
      (err) => {
        if (!current()) return;
        const gone = (err as { statusCode?: number; code?: number } | null)?.statusCode === 410;
        this.restartWatch(err ? (gone ? "gone" : "error") : "ended", gone);
      },
    ).then(
      (abort) => {
        if (current()) this.abortWatch = abort;
        else abort();
      },
      (err: unknown) => {
        if (current()) {
          this.o.log.warn("watch failed to start", { informer: this.o.name, err });
          this.restartWatch("error", true);
        }
      },
    );
  }

  /** Ends the current watch and starts another after a short backoff (relisting first if asked). */
  private restartWatch(reason: string, relist = false): void {
    if (this.stopped) return;
    this.o.metrics?.watchRestartsTotal.inc({ informer: this.o.name, reason });
    this.watchGeneration++;
    this.abortWatch?.();
    this.abortWatch = undefined;
    this.touch();
    this.retryDelayMs = Math.min(30_000, this.retryDelayMs ? this.retryDelayMs * 2 : 200);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      const next = relist || reason === "silent" ? this.relist() : Promise.resolve();
      next.then(
        () => this.startWatch(),
        (err: unknown) => {
          this.o.log.warn("relist failed; retrying", { informer: this.o.name, err });
          this.restartWatch("error", true);
        },
      );
    }, this.retryDelayMs);
  }

  private upsert(obj: T): void {
    const k = key(obj);
    const old = this.cache.get(k);
    if (old && old.metadata?.resourceVersion === obj.metadata?.resourceVersion) return;
    this.cache.set(k, obj);
    this.emit(old ? "update" : "add", obj, old);
  }

  private emit(event: InformerEvent, obj: T, old?: T): void {
    for (const h of this.handlers) {
      try {
        h(event, obj, old);
      } catch (err) {
        this.o.log.error("informer handler threw", { informer: this.o.name, event, err });
      }
    }
  }

  private touch(): void {
    this.lastEventAt = Date.now();
    this.o.metrics?.lastEventAt.set(this.o.name, this.lastEventAt);
  }
}
