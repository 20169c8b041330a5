/**
 * The sessions' routing records: an "up" published until written, with backoff, and a "down" that
 * never overtakes an "up" still in flight.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { SessionEvent } from "../backends/types.js";
import { discardingLogger } from "../lib/log.js";
import {
  REGISTRATION_RETRY_FIRST_MS,
  REGISTRATION_RETRY_MAX_MS,
  REGISTRATION_SWEEP_MS,
  REGISTRATION_WAIT_MS,
  SessionRegistrations,
} from "./session-registration.js";

const up: SessionEvent = { kind: "up", userId: "alice", sessionId: "s1", gatewayId: "gw", gatewayEpoch: 1 };
const down: SessionEvent = { ...up, kind: "down" };

/** A routing table whose publishes the test answers one by one. */
function table() {
  const published: Array<{ event: SessionEvent; ok: () => void; fail: (err: Error) => void }> = [];
  const registrations = new SessionRegistrations({
    publish: (event) =>
      new Promise<void>((ok, fail) => {
        published.push({ event, ok, fail });
      }),
    log: discardingLogger(),
    random: () => 1, // the longest wait of each spread
  });
  const kinds = () => published.map((p) => p.event.kind);
  return { registrations, published, kinds };
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("SessionRegistrations", () => {
  it("publishes an 'up' that failed again, waiting longer each time up to the cap, until it is written", async () => {
    const { registrations, published, kinds } = table();
    let written = false;
    void registrations.register(up).written.then(() => {
      written = true;
    });
    // Counted as unrouted only past the wait a welcome gives it: before that it is an ordinary connect.
    expect(registrations.overdue()).toBe(0);
    await vi.advanceTimersByTimeAsync(REGISTRATION_WAIT_MS - 1);
    expect(registrations.overdue()).toBe(0);
    await vi.advanceTimersByTimeAsync(1);
    expect(registrations.overdue()).toBe(1);
    const waits: number[] = [];
    for (let attempt = 1; attempt <= 6; attempt++) {
      published.at(-1)!.fail(new Error("broker unreachable"));
      await vi.advanceTimersByTimeAsync(0);
      const before = published.length;
      let waited = 0;
      while (published.length === before) {
        await vi.advanceTimersByTimeAsync(100);
        waited += 100;
      }
      waits.push(waited);
    }
    expect(waits).toEqual(
      [1, 2, 4, 8, 10, 10].map((s) => Math.min(s * REGISTRATION_RETRY_FIRST_MS, REGISTRATION_RETRY_MAX_MS)),
    );
    expect(written).toBe(false);
    published.at(-1)!.ok();
    await vi.advanceTimersByTimeAsync(0);
    expect(written).toBe(true);
    expect(registrations.overdue()).toBe(0);
    // Written: no more attempts.
    await vi.advanceTimersByTimeAsync(60_000);
    expect(kinds()).toEqual(Array(7).fill("up"));
  });

  it("tells the connection whether its 'up' was written within the welcome's wait", async () => {
    const { registrations, published } = table();
    const quick = registrations.register(up);
    const slow = registrations.register({ ...up, sessionId: "s2" });
    published[0]!.ok();
    expect(await quick.inTime).toBe(true);
    let late: boolean | undefined;
    void slow.inTime.then((t) => {
      late = !t;
    });
    await vi.advanceTimersByTimeAsync(REGISTRATION_WAIT_MS - REGISTRATION_SWEEP_MS);
    expect(late).toBeUndefined();
    await vi.advanceTimersByTimeAsync(REGISTRATION_SWEEP_MS);
    expect(late).toBe(true);
    published[1]!.ok();
    await slow.written;
    expect(vi.getTimerCount()).toBe(0); // nothing pending: the sweep stopped
  });

  it("publishes a session's 'down' only after its 'up' in flight settled, and then tries the 'up' no more", async () => {
    const { registrations, published, kinds } = table();
    let settled = false;
    void registrations.register(up).written.then(() => {
      settled = true;
    });
    registrations.unregister(down);
    await vi.advanceTimersByTimeAsync(0);
    expect(kinds()).toEqual(["up"]); // the "down" waits
    expect(settled).toBe(true); // the connection waiting for its registration is let go
    published[0]!.fail(new Error("request timed out")); // maybe written after all
    await vi.advanceTimersByTimeAsync(0);
    expect(kinds()).toEqual(["up", "down"]);
    published[1]!.ok();
    await vi.advanceTimersByTimeAsync(60_000);
    expect(kinds()).toEqual(["up", "down"]);
    expect(registrations.overdue()).toBe(0);
  });

  it("stops retrying an 'up' when the session ends between attempts, and publishes its 'down' at once", async () => {
    const { registrations, published, kinds } = table();
    void registrations.register(up);
    published[0]!.fail(new Error("broker unreachable"));
    await vi.advanceTimersByTimeAsync(0);
    registrations.unregister(down);
    await vi.advanceTimersByTimeAsync(0);
    expect(kinds()).toEqual(["up", "down"]);
    published[1]!.ok();
    await vi.advanceTimersByTimeAsync(60_000);
    expect(kinds()).toEqual(["up", "down"]);
  });

  it("publishes a 'down' that failed again, for as long as it takes, and counts it behind past the wait", async () => {
    const { registrations, published, kinds } = table();
    void registrations.register(up);
    published[0]!.ok();
    await vi.advanceTimersByTimeAsync(0);
    registrations.unregister(down);
    await vi.advanceTimersByTimeAsync(0);
    expect(registrations.overdue()).toBe(0);
    // Ten minutes of a topic that refuses writes: attempts every 10 s at most, none given up.
    for (let i = 0; i < 70; i++) {
      published.at(-1)!.fail(new Error("record too large"));
      await vi.advanceTimersByTimeAsync(REGISTRATION_RETRY_MAX_MS);
    }
    expect(kinds().filter((k) => k === "down")).toHaveLength(71);
    expect(registrations.overdue()).toBe(1);
    published.at(-1)!.ok();
    await vi.advanceTimersByTimeAsync(600_000);
    expect(kinds().filter((k) => k === "down")).toHaveLength(71);
    expect(registrations.overdue()).toBe(0);
  });

  it("on close, waits for the 'down's on their way, up to the time it is given, then retries none", async () => {
    const { registrations, published, kinds } = table();
    for (const sessionId of ["s1", "s2"]) {
      void registrations.register({ ...up, sessionId });
      published.at(-1)!.ok();
      await vi.advanceTimersByTimeAsync(0);
      registrations.unregister({ ...down, sessionId });
    }
    await vi.advanceTimersByTimeAsync(0);
    expect(kinds()).toEqual(["up", "down", "up", "down"]);
    published[1]!.ok();
    let closed = false;
    void registrations.close(2_000).then(() => {
      closed = true;
    });
    published[3]!.fail(new Error("broker unreachable")); // its retry would come after 1 s
    await vi.advanceTimersByTimeAsync(1_000);
    expect(kinds()).toEqual(["up", "down", "up", "down", "down"]); // still trying within the wait
    expect(closed).toBe(false);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(closed).toBe(true);
    published[4]!.fail(new Error("broker unreachable"));
    await vi.advanceTimersByTimeAsync(600_000);
    expect(kinds()).toHaveLength(5);
  });

  it("on close, lets every session waiting for its registration go and retries nothing", async () => {
    const { registrations, published, kinds } = table();
    const waiting = [registrations.register(up), registrations.register({ ...up, sessionId: "s2" })].map(
      (r) => r.written,
    );
    for (const p of published) p.fail(new Error("broker unreachable"));
    await vi.advanceTimersByTimeAsync(0);
    await registrations.close(0);
    await Promise.all(waiting);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(kinds()).toEqual(["up", "up"]);
    expect(registrations.overdue()).toBe(0);
  });
});

describe("SessionRegistrations' log", () => {
  it("tells when the first record falls behind (not each), and when none is behind any more", async () => {
    const lines: string[] = [];
    const log = discardingLogger();
    log.warn = (msg) => void lines.push(`warn ${msg}`);
    log.info = (msg) => void lines.push(`info ${msg}`);
    const published: Array<() => void> = [];
    const registrations = new SessionRegistrations({
      publish: () => new Promise<void>((ok) => void published.push(ok)), // hangs, as to a frozen broker
      log,
    });
    void registrations.register(up);
    void registrations.register({ ...up, sessionId: "s2" });
    await vi.advanceTimersByTimeAsync(REGISTRATION_WAIT_MS - 1);
    expect(lines).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(lines).toEqual([
      "warn gateway: a session's routing record is not written yet; its connection gets no live events until it is (still trying)",
    ]);
    published[0]!();
    await vi.advanceTimersByTimeAsync(0);
    expect(lines).toHaveLength(1);
    published[1]!();
    await vi.advanceTimersByTimeAsync(0);
    expect(lines.at(-1)).toBe("info gateway: no session's routing record is behind any more");

    // A closed session's "down" that hangs the same way.
    lines.length = 0;
    registrations.unregister(down);
    await vi.advanceTimersByTimeAsync(REGISTRATION_WAIT_MS);
    expect(lines).toEqual([
      "warn gateway: a closed session's routing record is not removed yet; routers count it connected until it is (still trying)",
    ]);
    published[2]!();
    await vi.advanceTimersByTimeAsync(0);
    expect(lines.at(-1)).toBe("info gateway: no session's routing record is behind any more");
  });
});
