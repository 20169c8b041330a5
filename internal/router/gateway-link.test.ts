import { describe, expect, it } from "vitest";
import { discardingLogger } from "../lib/log.js";
import { createMetrics } from "../lib/metrics.js";
import { type DeliverInit, deliverBytes, type GatewayClient, GatewayLink } from "./gateway-link.js";

const log = discardingLogger();

/**
 * A gateway that takes requests only when `release()` is called (or always, when `open`); with
 * `failAfter`, its first stream fails after that many requests.
 */
function fakeGateway(options: { open?: boolean; failAfter?: number } = {}) {
  const received: DeliverInit[] = [];
  let releases = 0;
  let wake: (() => void) | undefined;
  let dials = 0;
  const client: GatewayClient = {
    async *deliver(requests) {
      dials++;
      let n = 0;
      for await (const req of requests) {
        while (!options.open && releases === 0) await new Promise<void>((r) => (wake = r));
        if (!options.open) releases--;
        received.push(req as DeliverInit);
        if (options.failAfter !== undefined && dials === 1 && ++n >= options.failAfter)
          throw new Error("gateway went away");
      }
      yield* [];
    },
    drain: async () => ({}) as never,
    stats: async () => ({}) as never,
  };
  return {
    client,
    received,
    dials: () => dials,
    release(n: number) {
      releases += n;
      wake?.();
    },
  };
}

const message = (user: string, body: string): DeliverInit => ({
  userIds: [user],
  cursors: [1n],
  frame: { kind: { case: "message", value: { message: { body, conversationId: "dm:a~b" } } } },
});

/** A gateway client over `deliver` alone. */
const clientOf = (deliver: GatewayClient["deliver"]): GatewayClient => ({
  deliver,
  drain: async () => ({}) as never,
  stats: async () => ({}) as never,
});

/** A link that dials `client`, down for `redialDelayMinMs` after a failure (doubling). */
const linkTo = (client: GatewayClient, redialDelayMinMs: number, stableStreamMs?: number) =>
  new GatewayLink({
    gatewayId: "g",
    dial: () => client,
    queueBytesMax: 1 << 20,
    redialDelayMinMs,
    ...(stableStreamMs === undefined ? {} : { stableStreamMs }),
    log,
    metrics: createMetrics(),
  });

const until = async (pred: () => boolean) => {
  for (let i = 0; i < 2_000 && !pred(); i++) await new Promise((r) => setTimeout(r, 5));
  expect(pred()).toBe(true);
};

/**
 * A gateway whose first stream fails when the test calls `fail()`, and whose later streams serve:
 * `dead` and `live` are what each took. Each stream's requests are read by a pump of its own, as in
 * a real call, which goes on reading after the response side failed (nothing tells gRPC's request
 * pump).
 */
function failingOnce() {
  const stream = { dials: 0, dead: [] as DeliverInit[], live: [] as DeliverInit[], fail: () => {} };
  const pump = (requests: AsyncIterable<DeliverInit>, into: DeliverInit[]) =>
    (async () => {
      for await (const req of requests) into.push(req);
    })();
  const client = clientOf((requests) => {
    stream.dials++;
    if (stream.dials === 1) {
      void pump(requests as AsyncIterable<DeliverInit>, stream.dead);
      return (async function* () {
        await new Promise<void>((r) => {
          stream.fail = r;
        });
        throw new Error("connection reset");
      })();
    }
    const pumped = pump(requests as AsyncIterable<DeliverInit>, stream.live);
    return (async function* () {
      await pumped;
      yield* [];
    })();
  });
  return { client, stream };
}

describe("GatewayLink", () => {
  it("bounds its queue in bytes, drops past it without blocking, and re-checks the dropped users once drained", async () => {
    const metrics = createMetrics();
    const slow = fakeGateway();
    const one = deliverBytes(message("u0", "x".repeat(1000)));
    const link = new GatewayLink({
      gatewayId: "g1",
      dial: () => slow.client,
      queueBytesMax: one * 5,
      log,
      metrics,
    });
    const accepted = Array.from({ length: 20 }, (_, i) => link.push(message(`u${i}`, "x".repeat(1000))));
    // The gateway reads nothing: the stream holds one request in flight, the queue up to the bound.
    expect(accepted.filter(Boolean).length).toBeGreaterThanOrEqual(5);
    expect(accepted.filter(Boolean).length).toBeLessThanOrEqual(7);
    const dropped = accepted.map((ok, i) => (ok ? undefined : `u${i}`)).filter((u) => u !== undefined);
    const counted = (await metrics.deliveriesDroppedTotal.get()).values.find(
      (v) => v.labels.reason === "queue_full",
    );
    expect(counted?.value).toBe(dropped.length);

    slow.release(1_000);
    await until(() => slow.received.some((r) => r.recheckInboxes));
    const recheck = slow.received.find((r) => r.recheckInboxes)!;
    expect(new Set(recheck.userIds)).toEqual(new Set(dropped));
    // Everything accepted arrived, in order, before the re-check.
    const bodies = slow.received.filter((r) => !r.recheckInboxes).map((r) => r.userIds?.[0]);
    expect(bodies).toEqual(
      accepted.map((ok, i) => (ok ? `u${i}` : undefined)).filter((u) => u !== undefined),
    );
    await link.close();
  });

  it("a slow gateway does not hold up another gateway's link", async () => {
    const metrics = createMetrics();
    const slow = fakeGateway();
    const fast = fakeGateway({ open: true });
    const a = new GatewayLink({
      gatewayId: "slow",
      dial: () => slow.client,
      queueBytesMax: 65_536,
      log,
      metrics,
    });
    const b = new GatewayLink({
      gatewayId: "fast",
      dial: () => fast.client,
      queueBytesMax: 65_536,
      log,
      metrics,
    });
    let slowAccepted = 0;
    for (let i = 0; i < 100; i++) {
      if (a.push(message(`s${i}`, "y".repeat(2_000)))) slowAccepted++;
      expect(b.push(message(`f${i}`, "y"))).toBe(true);
    }
    expect(slowAccepted).toBeLessThan(100);
    await until(() => fast.received.length === 100);
    expect(slow.received.length).toBe(0);
    slow.release(1_000);
    await a.close();
    await b.close();
  });

  it("after a failed stream drops events until the re-dial, then re-checks those users first", async () => {
    const metrics = createMetrics();
    const flaky = fakeGateway({ open: true, failAfter: 1 });
    const link = new GatewayLink({
      gatewayId: "g",
      dial: () => flaky.client,
      queueBytesMax: 1 << 20,
      redialDelayMinMs: 400,
      log,
      metrics,
    });
    expect(link.push(message("first", "a"))).toBe(true);
    let failed = 0;
    for (let i = 0; i < 2_000 && failed === 0; i++) {
      failed = (await metrics.gatewayStreamFailuresTotal.get()).values[0]?.value ?? 0;
      await new Promise((r) => setTimeout(r, 2));
    }
    // The stream failed: the link is down for 400 ms.
    expect(link.push(message("while-down", "b"))).toBe(false);
    // At the end of the down time the link dials again by itself, for the re-check it owes: of the
    // users whose events were dropped, and of "first", whose event the gateway never confirmed.
    await until(() => flaky.dials() === 2 && flaky.received.length >= 2);
    expect(flaky.received[1]).toMatchObject({ recheckInboxes: true, userIds: ["first", "while-down"] });
    expect(link.push(message("after", "c"))).toBe(true);
    await until(() => flaky.received.length === 3);
    expect(flaky.received[2]?.userIds).toEqual(["after"]);
    await link.close();
  });

  it("re-dials a gateway that stays unreachable by itself only a few times, then at its next event", async () => {
    let dials = 0;
    const dead = clientOf((requests) => {
      dials++;
      return (async function* () {
        for await (const _ of requests) throw new Error("connection refused");
        yield* [];
      })();
    });
    const link = linkTo(dead, 10);
    expect(link.push(message("u", "a"))).toBe(true);
    // Down times of 10, 20, 40 and 80 ms: the first dial and three by itself, then no more.
    await until(() => dials === 4);
    await new Promise((r) => setTimeout(r, 400));
    expect(dials).toBe(4);
    expect(link.push(message("v", "b"))).toBe(true);
    await until(() => dials === 5);
    await link.close();
  });

  it("counts only failures in a row: a quiet gateway whose streams served a while is re-dialled every time", async () => {
    let dials = 0;
    // Each stream takes its requests, serves 60 ms without a credit (fewer than 256 events), then fails.
    const quiet = clientOf((requests) => {
      dials++;
      void (async () => {
        for await (const _ of requests);
      })();
      return (async function* () {
        await new Promise((r) => setTimeout(r, 60));
        throw new Error("connection reset");
      })();
    });
    const link = linkTo(quiet, 10, 50);
    expect(link.push(message("u", "a"))).toBe(true);
    // Past the three re-dials by itself that failures in a row would get.
    await until(() => dials >= 6);
    await link.close();
  });

  it("a failed stream's feeder takes nothing more: every later event reaches the new stream", async () => {
    const { client, stream } = failingOnce();
    const { dead, live } = stream;
    const link = linkTo(client, 50);
    expect(link.push(message("before", "a"))).toBe(true);
    await until(() => dead.length === 1);
    stream.fail();
    // The re-dial at the end of the down time re-checks "before" (never confirmed); then three
    // events in one turn, as a router batch queues them.
    await until(() => stream.dials === 2 && live.length === 1);
    for (const user of ["x", "y", "z"]) expect(link.push(message(user, "b"))).toBe(true);
    await until(() => live.length === 4);
    expect(live.map((r) => (r.recheckInboxes ? "recheck" : r.userIds?.[0]))).toEqual([
      "recheck",
      "x",
      "y",
      "z",
    ]);
    expect(dead).toHaveLength(1);
    await link.close();
  });

  it("sends events of stored state again on the next stream when one fails unconfirmed, keeps those pushed while down, and drops typing", async () => {
    const { client, stream } = failingOnce();
    const { dead, live } = stream;
    const receipt = (seq: bigint): DeliverInit => ({
      userIds: ["bob"],
      frame: { kind: { case: "receipt", value: { conversationId: "dm:a~b", userId: "alice", seq } } },
    });
    const typing: DeliverInit = {
      userIds: ["bob"],
      frame: { kind: { case: "typing", value: { conversationId: "dm:a~b", userId: "alice", typing: true } } },
    };
    const link = linkTo(client, 100);
    for (const req of [receipt(1n), typing, message("bob", "a")]) expect(link.push(req)).toBe(true);
    await until(() => dead.length === 3);
    stream.fail(); // none of the three confirmed: each may be lost
    await new Promise((r) => setTimeout(r, 20)); // the failure is seen; the link is down for 100 ms
    expect(link.push(typing)).toBe(false); // down: dropped
    expect(link.push(receipt(2n))).toBe(true); // down: kept for the next stream
    await until(() => live.length === 3);
    const name = (r: DeliverInit) =>
      r.recheckInboxes
        ? `recheck ${r.userIds?.join(",")}`
        : r.frame?.kind?.case === "receipt"
          ? `receipt ${r.frame.kind.value.seq}`
          : r.frame?.kind?.case;
    expect(live.map(name)).toEqual(["receipt 1", "receipt 2", "recheck bob"]);
    await link.close();
  });
});
