import { describe, expect, test } from "vitest";
import { backoffDelay, longBackoffDelay } from "./backoff.js";
import { CLOSE_CODES, CloseCode, classifyCloseCode } from "./close-codes.js";
import { TypedEmitter } from "./emitter.js";
import { CLIENT_MSG_ID_PATTERN, exceedsChars, randomId } from "./ids.js";
import { LruSet } from "./lru.js";
import { decodeFrame, encodedSize } from "./transport.js";

describe("backoff", () => {
  const opts = { baseMs: 250, maxMs: 10_000 };
  test("full jitter: uniform in [0, min(max, base * 2^attempt))", () => {
    expect(backoffDelay(0, opts, () => 0)).toBe(0);
    expect(backoffDelay(0, opts, () => 0.999)).toBe(249);
    expect(backoffDelay(3, opts, () => 0.5)).toBe(1000);
    expect(backoffDelay(10, opts, () => 0.999)).toBe(9990);
    expect(backoffDelay(1_000, opts, () => 0.5)).toBe(5000);
  });
  test("a short outage caps the ceiling at half its age (at least 1 s), a long one leaves it alone", () => {
    // Five failed attempts into a 1.5 s outage: 1 s at most, not the 8 s the attempts alone allow.
    expect(backoffDelay(5, opts, () => 0.999, 1_500)).toBe(999);
    expect(backoffDelay(5, opts, () => 0.999, 6_000)).toBe(2997);
    // Early attempts stay as short as the attempt count makes them.
    expect(backoffDelay(0, opts, () => 0.999, 100)).toBe(249);
    // Long outages back off to the maximum as before.
    expect(backoffDelay(10, opts, () => 0.999, 60_000)).toBe(9990);
  });
  test("long backoff never draws below half its (larger) ceiling", () => {
    expect(longBackoffDelay(0, opts, () => 0)).toBe(1000);
    expect(longBackoffDelay(0, opts, () => 1)).toBe(2000);
    expect(longBackoffDelay(10, opts, () => 0)).toBe(5000);
  });
});

describe("close codes", () => {
  test("the table sorts reconnect from terminal", () => {
    const terminal = Object.entries(CLOSE_CODES)
      .filter(([, i]) => !i.reconnect)
      .map(([c]) => Number(c));
    expect(terminal).toEqual([3500, 3501, 3502, 3503]);
    expect(CLOSE_CODES[3014]).toMatchObject({ reconnect: true, backoff: "long" });
    expect(CLOSE_CODES[3015]).toMatchObject({ reconnect: true, backoff: "long" });
    expect(CLOSE_CODES[3005].freshToken).toBe(true);
    expect(CLOSE_CODES[3013].backoff).toBe("long");
    expect(CLOSE_CODES[1009].dropFrame).toBe(true);
    // A message in more fragments than the gateway's WebSocket layer takes (docs/protocol.md §1.2):
    // never one of the SDK's, which does not fragment.
    expect(CLOSE_CODES[1008]).toMatchObject({ name: "POLICY_VIOLATION", reconnect: true, dropFrame: false });
    expect(CloseCode.INVALID_TOKEN).toBe(3500);
  });
  test("1007 (a text frame that was not UTF-8) reconnects but never resends that frame (docs/protocol.md §7)", () => {
    expect(CLOSE_CODES[1007]).toMatchObject({
      name: "INVALID_FRAME_PAYLOAD_DATA",
      reconnect: true,
      dropFrame: true,
    });
    expect(classifyCloseCode(CloseCode.INVALID_FRAME_PAYLOAD_DATA).dropFrame).toBe(true);
    // Only the codes that refuse a frame drop one.
    const dropping = Object.entries(CLOSE_CODES)
      .filter(([, i]) => i.dropFrame)
      .map(([c]) => Number(c));
    expect(dropping).toEqual([1007, 1009]);
  });
  test("unknown codes: 35xx terminal, anything else reconnects", () => {
    expect(classifyCloseCode(3599).reconnect).toBe(false);
    expect(classifyCloseCode(3002).reconnect).toBe(true);
    expect(classifyCloseCode(4000).reconnect).toBe(true);
    expect(classifyCloseCode(1012).reconnect).toBe(true);
  });
});

test("LruSet forgets the oldest key beyond its capacity", () => {
  const s = new LruSet<string>(3);
  expect(s.add("a")).toBe(true);
  expect(s.add("b")).toBe(true);
  expect(s.add("a")).toBe(false); // refreshes a
  s.add("c");
  s.add("d"); // evicts b, the least recently added/touched
  expect([s.has("a"), s.has("b"), s.has("c"), s.has("d")]).toEqual([true, false, true, true]);
  expect(s.size).toBe(3);
});

test("TypedEmitter: on/off/once, and a throwing listener does not stop the others", () => {
  const failures: unknown[] = [];
  class E extends TypedEmitter<{ x: number }> {
    fire(n: number) {
      this.emit("x", n);
    }
    protected override listenerFailed(err: unknown) {
      failures.push(err);
    }
  }
  const e = new E();
  const got: number[] = [];
  const off = e.on("x", (n) => got.push(n));
  e.on("x", () => {
    throw new Error("boom");
  });
  e.once("x", (n) => got.push(n * 10));
  e.fire(1);
  off();
  e.fire(2);
  expect(got).toEqual([1, 10]);
  expect(failures).toHaveLength(2);
});

test("ids and limits", () => {
  const id = randomId();
  expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  expect(CLIENT_MSG_ID_PATTERN.test(id)).toBe(true);
  expect(CLIENT_MSG_ID_PATTERN.test("x".repeat(65))).toBe(false);
  expect(exceedsChars("😀".repeat(3), 3)).toBe(false);
  expect(exceedsChars("😀".repeat(4), 3)).toBe(true);
  expect(encodedSize("é😀")).toBe(6);
  expect(encodedSize("é".repeat(300))).toBe(600);
});

test("decodeFrame accepts JSON text and protobuf in any binary container", () => {
  const json = '{"replyTo":7,"ok":{},"someFutureField":1}';
  expect(decodeFrame(json)).toMatchObject({ replyTo: 7, kind: { case: "ok" } });
  const bin = new Uint8Array([0x08, 0x07, 0xba, 0x01, 0x00]); // reply_to=7, ok (field 23) = {}
  expect(decodeFrame(bin.buffer)).toMatchObject({ replyTo: 7, kind: { case: "ok" } });
  expect(decodeFrame(bin)).toMatchObject({ replyTo: 7, kind: { case: "ok" } });
  expect(decodeFrame([bin.subarray(0, 2), bin.subarray(2)])).toMatchObject({
    replyTo: 7,
    kind: { case: "ok" },
  });
});
