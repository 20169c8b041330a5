/**
 * Which router relays the events of one key: a user's presence changes (the presence role), a
 * conversation's typing, receipt and group events (the gateway role). Each router has its own Deliver
 * stream to each gateway, in order; two events of one key relayed through two routers could reach
 * the gateway in the other order (a watcher left showing online a user who went offline, a group
 * shown with the name it had before its last rename). So every event of one key goes through the same
 * router: the one the key ranks first among the routers' addresses (rendezvous hashing: a router
 * added or gone moves only its own share of keys), and while that one is unreachable, the next in
 * the key's ranking.
 *
 * The addresses are those `cluster.routerTarget` names: an `ipv4:`/`ipv6:` list as it stands, or a
 * DNS name (`dns:///name:port`, `name:port`: a headless Service) resolved again every few seconds.
 * A target of another form, or a name that resolves to nothing, leaves the relays to the client of
 * the whole target (spread over its routers, unordered).
 */
import { lookup } from "node:dns/promises";
import type { RouterService } from "../../gen/switchboard/router/v1/router_pb.js";
import { Code, SwitchboardError } from "../lib/errors.js";
import type { Logger } from "../lib/log.js";
import type { ServiceClient } from "../lib/rpc.js";

export type Relayer = Pick<ServiceClient<typeof RouterService>, "relay">;

/**
 * How long a router that refused a relay as unreachable, or did not answer it within the call's
 * deadline (a router that vanished without a reset), is passed over.
 */
const DOWN_MS = 5_000;

/**
 * A relay that failed for want of the router, not for what it asked: UNAVAILABLE, or
 * DEADLINE_EXCEEDED. A router that took the relay and answered too late has it relayed twice (a
 * status repeated, which a watcher shows the same).
 */
const unreachable = (err: unknown): boolean =>
  err instanceof SwitchboardError && (err.code === Code.UNAVAILABLE || err.code === Code.DEADLINE_EXCEEDED);
const REFRESH_MS = 10_000;

export interface RelayRoutesOptions {
  /** cluster.routerTarget. */
  target: string;
  /** A client of the one router at `address` (host:port). */
  dial(address: string): Relayer & { close(): void };
  /** The client of the whole target: used while no router address is known. */
  fallback: Relayer;
  log: Logger;
  /** A host name's addresses (default: the system resolver's, all of them). */
  resolve?: (host: string) => Promise<string[]>;
  refreshMs?: number;
  now?: () => number;
}

/** The router addresses a target lists, or the name and port to resolve; undefined for other forms. */
export function routerTargetAddresses(
  target: string,
): { addresses: string[] } | { host: string; port: string } | undefined {
  const listed = /^ipv[46]:(?:\/\/\/)?(.+)$/.exec(target);
  if (listed)
    return {
      addresses: listed[1]!
        .split(",")
        .map((a) => a.trim())
        .filter(Boolean),
    };
  const named = /^(?:dns:(?:\/\/[^/]*\/)?)?([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(\d+)$/.exec(target);
  if (named) return { host: named[1]!.replace(/^\[|\]$/g, ""), port: named[2]! };
  return undefined;
}

/**
 * The rendezvous score of a router for a user: FNV-1a over both, then MurmurHash3's finalizer (FNV's
 * high bits alone barely change with the last few characters, and addresses differ in few).
 */
function score(address: string, userId: string): number {
  let h = 0x811c9dc5;
  const key = `${userId}\n${address}`;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The router `key` is pinned to among `addresses` while all are up (its first in the ranking). */
export function pinnedRouter(key: string, addresses: readonly string[]): string | undefined {
  return preference(key, addresses, () => false)[0];
}

/** `addresses` in `key`'s order of preference: those `down` last, then by score, then by address. */
function preference(key: string, addresses: readonly string[], down: (address: string) => boolean): string[] {
  const scored = addresses.map((address) => ({ address, down: down(address), score: score(address, key) }));
  scored.sort(
    (a, b) => Number(a.down) - Number(b.down) || b.score - a.score || (a.address < b.address ? -1 : 1),
  );
  return scored.map((s) => s.address);
}

async function resolveAll(host: string): Promise<string[]> {
  const found = await lookup(host, { all: true });
  return found.map((a) => a.address);
}

export class RelayRoutes {
  private addresses: string[] = [];
  private readonly clients = new Map<string, Relayer & { close(): void }>();
  private readonly down = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  /**
   * Resolutions begun, and the latest begun whose answer was taken: an older answer never replaces a
   * newer one.
   */
  private resolutionsBegun = 0;
  private resolutionTaken = 0;
  private readonly now: () => number;

  constructor(private readonly options: RelayRoutesOptions) {
    this.now = options.now ?? Date.now;
    const parsed = routerTargetAddresses(options.target);
    if (parsed === undefined) {
      options.log.warn("relays: router target is neither an address list nor a DNS name; relays are spread", {
        target: options.target,
      });
    } else if ("addresses" in parsed) {
      this.addresses = [...new Set(parsed.addresses)].sort();
    } else {
      const { host, port } = parsed;
      const resolve = options.resolve ?? resolveAll;
      const refresh = async () => {
        const begun = ++this.resolutionsBegun;
        try {
          const found = await resolve(host);
          // Closed, or a resolution begun later answered first (this one was slow): kept out.
          if (this.closed || begun < this.resolutionTaken) return;
          this.resolutionTaken = begun;
          this.setAddresses(found.map((a) => (a.includes(":") ? `[${a}]:${port}` : `${a}:${port}`)));
        } catch (err) {
          options.log.warn("relays: resolving the routers failed; keeping the last addresses", {
            host,
            err,
          });
        }
      };
      void refresh();
      this.timer = setInterval(() => void refresh(), options.refreshMs ?? REFRESH_MS);
      this.timer.unref();
    }
  }

  /** The router addresses known now (for tests). */
  get known(): readonly string[] {
    return this.addresses;
  }

  /** The relayer of the events of `key` (a user id, a conversation id). */
  forKey(key: string): Relayer {
    return { relay: (req, options) => this.relay(key, req, options) };
  }

  private async relay(
    userId: string,
    req: Parameters<Relayer["relay"]>[0],
    options: Parameters<Relayer["relay"]>[1],
  ): ReturnType<Relayer["relay"]> {
    const ranked = this.ranked(userId);
    if (ranked.length === 0) return this.options.fallback.relay(req, options);
    let failure: unknown;
    for (const address of ranked) {
      try {
        return await this.client(address).relay(req, options);
      } catch (err) {
        if (!unreachable(err)) throw err;
        this.down.set(address, this.now() + DOWN_MS);
        failure = err;
      }
    }
    throw failure;
  }

  /** The addresses in `userId`'s order of preference; those down lately last. */
  private ranked(userId: string): string[] {
    const now = this.now();
    return preference(userId, this.addresses, (address) => (this.down.get(address) ?? 0) > now);
  }

  private client(address: string): Relayer {
    let client = this.clients.get(address);
    if (!client) {
      client = this.options.dial(address);
      this.clients.set(address, client);
    }
    return client;
  }

  private setAddresses(found: string[]): void {
    const next = [...new Set(found)].sort();
    if (next.length === 0) return; // a resolver's empty answer is kept out: relays need somewhere to go
    this.addresses = next;
    const keep = new Set(next);
    for (const [address, client] of this.clients) {
      if (keep.has(address)) continue;
      this.clients.delete(address);
      this.down.delete(address);
      client.close();
    }
  }

  close(): void {
    this.closed = true;
    clearInterval(this.timer);
    for (const client of this.clients.values()) client.close();
    this.clients.clear();
  }
}
