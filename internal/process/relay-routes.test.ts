import { describe, expect, it } from "vitest";
import { Code, errors, SwitchboardError } from "../lib/errors.js";
import { discardingLogger } from "../lib/log.js";
import { Presence } from "../presence/service.js";
import { pinnedRouter, type Relayer, RelayRoutes, routerTargetAddresses } from "./relay-routes.js";

const RESPONSE = { $typeName: "switchboard.router.v1.RelayResponse" as const, sessions: 0 };

/** Routers by address, recording what each was asked to relay; `failing` refuse as unreachable. */
function routers() {
  const relayed = new Map<string, string[]>();
  const failing = new Set<string>();
  const closed: string[] = [];
  const dial = (address: string) => ({
    relay: async (req: Parameters<Relayer["relay"]>[0]) => {
      if (failing.has(address)) throw errors.unavailable("UNAVAILABLE", `${address} is down`);
      const list = relayed.get(address) ?? [];
      list.push(String(req.userIds?.[0]));
      relayed.set(address, list);
      return RESPONSE;
    },
    close: () => void closed.push(address),
  });
  const fallbackUsed: string[] = [];
  const fallback: Relayer = {
    relay: async (req) => {
      fallbackUsed.push(String(req.userIds?.[0]));
      return RESPONSE;
    },
  };
  return { relayed, failing, closed, dial, fallback, fallbackUsed };
}

/** The address each user's relays went to (failing if a user's went to more than one). */
function placement(relayed: Map<string, string[]>): Map<string, string> {
  const where = new Map<string, string>();
  for (const [address, users] of relayed)
    for (const u of users) {
      expect(where.get(u) ?? address).toBe(address);
      where.set(u, address);
    }
  return where;
}

describe("routerTargetAddresses", () => {
  it("reads address lists and DNS names, and nothing else", () => {
    expect(routerTargetAddresses("ipv4:10.0.0.1:9090,10.0.0.2:9090")).toEqual({
      addresses: ["10.0.0.1:9090", "10.0.0.2:9090"],
    });
    expect(routerTargetAddresses("ipv6:[::1]:9090")).toEqual({ addresses: ["[::1]:9090"] });
    expect(routerTargetAddresses("dns:///chat-router.prod.svc.cluster.local:9090")).toEqual({
      host: "chat-router.prod.svc.cluster.local",
      port: "9090",
    });
    expect(routerTargetAddresses("dns://8.8.8.8/router:9090")).toEqual({ host: "router", port: "9090" });
    expect(routerTargetAddresses("router:9090")).toEqual({ host: "router", port: "9090" });
    expect(routerTargetAddresses("unix:/run/router.sock")).toBeUndefined();
    expect(routerTargetAddresses("dns:///router")).toBeUndefined();
  });
});

describe("RelayRoutes", () => {
  it("relays each user's changes through one router, the users spread over all of them", async () => {
    const r = routers();
    const routes = new RelayRoutes({
      target: "ipv4:10.0.0.1:9090,10.0.0.2:9090,10.0.0.3:9090",
      dial: r.dial,
      fallback: r.fallback,
      log: discardingLogger(),
    });
    for (let round = 0; round < 5; round++)
      for (let i = 0; i < 60; i++) await routes.forKey(`u${i}`).relay({ userIds: [`u${i}`] });
    const where = placement(r.relayed);
    expect(where.size).toBe(60);
    for (const users of r.relayed.values()) expect(users.length).toBeGreaterThan(5 * 10);
    // pinnedRouter names, from the addresses alone, where a key's relays go (any process agrees).
    const addresses = ["10.0.0.3:9090", "10.0.0.1:9090", "10.0.0.2:9090"];
    for (const [user, address] of where) expect(pinnedRouter(user, addresses)).toBe(address);
    routes.close();
    expect(r.closed.sort()).toEqual(["10.0.0.1:9090", "10.0.0.2:9090", "10.0.0.3:9090"]);
  });

  it("passes over an unreachable router, to the same next one for each user, and back once it is up", async () => {
    const r = routers();
    let now = 0;
    const routes = new RelayRoutes({
      target: "ipv4:a:1,b:1,c:1",
      dial: r.dial,
      fallback: r.fallback,
      log: discardingLogger(),
      now: () => now,
    });
    const users = Array.from({ length: 30 }, (_, i) => `u${i}`);
    for (const u of users) await routes.forKey(u).relay({ userIds: [u] });
    const first = placement(r.relayed);
    r.relayed.clear();
    r.failing.add("a:1");
    for (let round = 0; round < 3; round++)
      for (const u of users) await routes.forKey(u).relay({ userIds: [u] });
    const second = placement(r.relayed);
    for (const u of users) {
      if (first.get(u) !== "a:1")
        expect(second.get(u)).toBe(first.get(u)); // the others stay put
      else expect(second.get(u)).not.toBe("a:1");
    }
    r.failing.delete("a:1");
    r.relayed.clear();
    now += 10_000;
    for (const u of users) await routes.forKey(u).relay({ userIds: [u] });
    expect(placement(r.relayed)).toEqual(first);
    // A refusal that is not about reaching the router is the caller's.
    const refusing = new RelayRoutes({
      target: "ipv4:x:1",
      dial: () => ({
        relay: async () => {
          throw errors.invalid("MISSING_FRAME", "frame is required");
        },
        close: () => undefined,
      }),
      fallback: r.fallback,
      log: discardingLogger(),
    });
    await expect(refusing.forKey("u").relay({})).rejects.toMatchObject({ reason: "MISSING_FRAME" });
    routes.close();
    refusing.close();
  });

  it("resolves a DNS name again, and relays through the whole target until it knows an address", async () => {
    const r = routers();
    let answer: string[] = [];
    const routes = new RelayRoutes({
      target: "dns:///router.local:9090",
      dial: r.dial,
      fallback: r.fallback,
      log: discardingLogger(),
      resolve: async (host) => (host === "router.local" ? answer : []),
      refreshMs: 20,
    });
    await routes.forKey("u1").relay({ userIds: ["u1"] });
    expect(r.fallbackUsed).toEqual(["u1"]);
    answer = ["10.0.0.1", "fd00::2"];
    for (let i = 0; i < 50 && routes.known.length < 2; i++) await new Promise((res) => setTimeout(res, 10));
    expect(routes.known).toEqual(["10.0.0.1:9090", "[fd00::2]:9090"]);
    for (let i = 0; i < 20; i++) await routes.forKey(`u${i}`).relay({ userIds: [`u${i}`] });
    expect([...r.relayed.keys()].sort()).toEqual(["10.0.0.1:9090", "[fd00::2]:9090"]);
    answer = ["10.0.0.1"];
    for (let i = 0; i < 50 && routes.known.length > 1; i++) await new Promise((res) => setTimeout(res, 10));
    expect(r.closed).toEqual(["[fd00::2]:9090"]);
    routes.close();
  });

  it("passes over a router that lets a relay run past its deadline (gone without a reset), for a while", async () => {
    const asked = new Map<string, number>();
    let silent = "";
    let now = 0;
    const routes = new RelayRoutes({
      target: "ipv4:a:1,b:1,c:1",
      dial: (address) => ({
        relay: async () => {
          asked.set(address, (asked.get(address) ?? 0) + 1);
          if (address === silent)
            throw new SwitchboardError(
              Code.DEADLINE_EXCEEDED,
              "DEADLINE_EXCEEDED",
              "the caller's deadline passed",
            );
          return RESPONSE;
        },
        close: () => undefined,
      }),
      fallback: { relay: async () => RESPONSE },
      log: discardingLogger(),
      now: () => now,
    });
    // A user whose first choice is a:1.
    let user = "";
    for (let i = 0; !user; i++) {
      asked.clear();
      await routes.forKey(`u${i}`).relay({ userIds: [`u${i}`] });
      if (asked.get("a:1") === 1) user = `u${i}`;
    }
    silent = "a:1";
    asked.clear();
    await expect(routes.forKey(user).relay({ userIds: [user] })).resolves.toEqual(RESPONSE);
    expect(asked.get("a:1")).toBe(1);
    // Marked down: the next relays do not wait out another deadline on it.
    await routes.forKey(user).relay({ userIds: [user] });
    await routes.forKey(user).relay({ userIds: [user] });
    expect(asked.get("a:1")).toBe(1);
    silent = "";
    now += 10_000;
    asked.clear();
    await routes.forKey(user).relay({ userIds: [user] });
    expect(asked.get("a:1")).toBe(1);
    routes.close();
  });

  it("never lets a slow DNS answer replace a newer one", async () => {
    const r = routers();
    const answers: Array<(addresses: string[]) => void> = [];
    const routes = new RelayRoutes({
      target: "dns:///router.local:9090",
      dial: r.dial,
      fallback: r.fallback,
      log: discardingLogger(),
      resolve: () => new Promise((resolve) => answers.push(resolve)),
      refreshMs: 10,
    });
    for (let i = 0; i < 100 && answers.length < 2; i++) await new Promise((res) => setTimeout(res, 5));
    // The second lookup answers first (the routers now), then the first (before a router was replaced).
    answers[1]!(["10.0.0.2"]);
    await new Promise((res) => setTimeout(res, 0));
    expect(routes.known).toEqual(["10.0.0.2:9090"]);
    answers[0]!(["10.0.0.1"]);
    await new Promise((res) => setTimeout(res, 0));
    expect(routes.known).toEqual(["10.0.0.2:9090"]);
    routes.close();
  });

  it("keeps a user's changes in order across routers whose streams lag differently", async () => {
    // Router "slow" hands its relays to the gateway 30 ms late, "fast" at once: relayed round robin
    // (as a client spreading calls does), a user's offline could overtake their online.
    const delivered: string[] = [];
    const lag: Record<string, number> = { "slow:1": 30, "fast:1": 0 };
    const routes = new RelayRoutes({
      target: "ipv4:slow:1,fast:1",
      dial: (address) => ({
        relay: async (req) => {
          const value = req.frame?.kind?.value as
            | { status?: { userId: string; online?: boolean } }
            | undefined;
          const status = value?.status ?? { userId: "?" };
          setTimeout(() => delivered.push(`${status.userId}:${status.online ? "on" : "off"}`), lag[address]);
          return RESPONSE;
        },
        close: () => undefined,
      }),
      fallback: { relay: async () => RESPONSE },
      log: discardingLogger(),
    });
    const p = new Presence({
      offlineAfterMs: 60_000,
      store: {
        setLastActive: async () => undefined,
        lastActive: async () => new Map(),
        close: async () => undefined,
      },
      router: (userId) => routes.forKey(userId),
      log: discardingLogger(),
    });
    const users = Array.from({ length: 10 }, (_, i) => `u${i}`);
    await p.subscribe("w", users);
    for (const u of users) {
      p.heartbeat(u, `${u}-1`); // online
      (p as unknown as { users: Map<string, { online: boolean }> }).users.get(u)!.online = false;
      (p as unknown as { publish(u: string): void }).publish(u); // offline, at once
    }
    await new Promise((r) => setTimeout(r, 60));
    for (const u of users)
      expect(delivered.filter((d) => d.startsWith(`${u}:`))).toEqual([`${u}:on`, `${u}:off`]);
    await p.close();
    routes.close();
  });
});
