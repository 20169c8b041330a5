import { create, toBinary, toJsonString } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { ClientFrameSchema } from "../../gen/switchboard/client/v1/client_pb.js";
import { Code } from "../lib/errors.js";
import { decodeClientFrame, encodeServerFrame, peekRequest } from "./codec.js";
import { Throttle, TokenBucket, UserBuckets } from "./rate-limit.js";

describe("Throttle", () => {
  it("is due once per key per interval from the event it records, and forgets the oldest keys past its bound", () => {
    let now = 0;
    const throttle = new Throttle(3_000, 2, () => now);
    expect(throttle.due("a")).toBe(true);
    throttle.mark("a");
    expect(throttle.due("a")).toBe(false);
    // Asking records nothing: an event refused elsewhere does not restart the interval.
    now = 1_000;
    expect(throttle.due("b")).toBe(true);
    throttle.mark("b");
    now = 2_999;
    expect(throttle.due("a")).toBe(false);
    now = 3_000;
    expect(throttle.due("a")).toBe(true);
    expect(throttle.due("b")).toBe(false);
    // A third key pushes out the least recently marked one (a), which is due again.
    throttle.mark("c");
    expect(throttle.due("a")).toBe(true);
    expect(throttle.due("b")).toBe(false);
    expect(throttle.due("c")).toBe(false);
  });
});

describe("TokenBucket", () => {
  it("allows the burst, then the sustained rate, and reports the wait", () => {
    let now = 0;
    const bucket = new TokenBucket(10, 3, () => now);
    expect([bucket.take(), bucket.take(), bucket.take()]).toEqual([0, 0, 0]);
    const wait = bucket.take();
    expect(wait).toBeGreaterThan(0);
    expect(wait).toBeLessThanOrEqual(200);
    now += 200; // refills 2 tokens at 10/s, minus the refused one's debt
    expect(bucket.take()).toBe(0);
  });

  it("recognises a flood only after a full burst of refusals", () => {
    const bucket = new TokenBucket(1, 4, () => 0);
    for (let i = 0; i < 4; i++) bucket.take();
    for (let i = 0; i < 3; i++) {
      bucket.take();
      expect(bucket.flooded()).toBe(false);
    }
    for (let i = 0; i < 2; i++) bucket.take();
    expect(bucket.flooded()).toBe(true);
  });
});

describe("UserBuckets without debt", () => {
  it("takes nothing on a refusal: those retrying as told get the tokens as they come", () => {
    let now = 0;
    const buckets = new UserBuckets(10, 2, { debt: false, now: () => now });
    expect([buckets.take("u"), buckets.take("u")]).toEqual([0, 0]);
    // Two clients refused over and over: each refusal says the same wait, and none pushes it back.
    for (let i = 0; i < 5; i++) expect(buckets.take("u")).toBe(100);
    now += 100;
    expect(buckets.take("u")).toBe(0);
    expect(buckets.take("u")).toBe(100);
    now += 100;
    expect(buckets.take("u")).toBe(0);
    // With debt (sends, frames) the same refusals push the wait back.
    const indebted = new UserBuckets(10, 2, { now: () => now });
    indebted.take("u");
    indebted.take("u");
    expect([indebted.take("u"), indebted.take("u")]).toEqual([200, 300]);
  });

  it("takes many at once only when there are as many, waits for what is missing, and refunds", () => {
    let now = 0;
    const members = new UserBuckets(10_000, 100_000, { debt: false, now: () => now });
    expect(members.takeMany("u", 60_000).waitMs).toBe(0);
    // 40,000 left: 60,000 more wait for the 20,000 missing, two seconds at 10,000 a second.
    expect(members.takeMany("u", 60_000).waitMs).toBe(2_000);
    // What a refused request took is given back when another limit refuses it.
    const few = members.takeMany("u", 40_000);
    expect(few.waitMs).toBe(0);
    expect(members.takeMany("u", 1).waitMs).toBe(1);
    few.refund();
    expect(members.takeMany("u", 40_000).waitMs).toBe(0);
    now += 6_000;
    expect(members.takeMany("u", 60_000).waitMs).toBe(0);
    // A list longer than the burst costs a full bucket, not a wait for ever.
    now += 10_000;
    expect(members.takeMany("u", 250_000).waitMs).toBe(0);
  });

  it("charges work after the fact into debt, down to a full burst, which the next take waits off", () => {
    let now = 0;
    const listed = new UserBuckets(10_000, 20_000, { debt: false, now: () => now });
    expect(listed.take("u")).toBe(0);
    listed.charge("u", 999);
    expect(listed.take("u")).toBe(0); // 18,999 left
    listed.charge("u", 50_000); // past the bucket: at most a burst of debt (-20,000)
    expect(listed.take("u")).toBe(2_001); // 20,001 tokens missing at 10,000 a second
    now += 2_000;
    expect(listed.take("u")).toBe(1);
    now += 1;
    expect(listed.take("u")).toBe(0);
  });
});

describe("codec", () => {
  const frame = create(ClientFrameSchema, {
    id: 7,
    kind: {
      case: "send",
      value: { target: { case: "toUser", value: "bob" }, clientMsgId: "c1", body: "hi" },
    },
  });

  it("decodes the same frame from proto3 JSON and from binary", () => {
    const fromJson = decodeClientFrame(Buffer.from(toJsonString(ClientFrameSchema, frame)), false);
    const fromBin = decodeClientFrame(Buffer.from(toBinary(ClientFrameSchema, frame)), true);
    expect(fromJson).toEqual(frame);
    expect(fromBin).toEqual(frame);
  });

  it("accepts snake_case JSON field names as proto3 JSON requires", () => {
    const f = decodeClientFrame(
      Buffer.from('{"id":1,"send":{"to_user":"bob","client_msg_id":"x","body":"b"}}'),
      false,
    );
    expect(f.kind.case).toBe("send");
  });

  it.each([
    ["not JSON", Buffer.from("{"), false],
    ["an unknown field", Buffer.from('{"id":1,"bogus":true}'), false],
    ["a wrong type", Buffer.from('{"id":"one"}'), false],
    ["a truncated varint", Buffer.from([0x08, 0xff, 0xff]), true],
    ["a deeply nested array", Buffer.from("[".repeat(10_000)), false],
  ])("rejects %s with MALFORMED_FRAME", (_name, data, binary) => {
    expect(() => decodeClientFrame(data, binary)).toThrow(
      expect.objectContaining({ reason: "MALFORMED_FRAME" }),
    );
  });

  it("refuses text that is not Unicode with INVALID_UNICODE, still knowing the request's id", () => {
    for (const body of ["\\ud800", "a\\udc00b", "\\ude00\\ud83d", "x\\ud83d"]) {
      const json = Buffer.from(`{"id":41,"send":{"toUser":"bob","clientMsgId":"c","body":"${body}"}}`);
      expect(() => decodeClientFrame(json, false), body).toThrow(
        expect.objectContaining({ reason: "INVALID_UNICODE", code: Code.INVALID_ARGUMENT }),
      );
      expect(peekRequest(json, false)).toEqual({ id: 41, request: "send" });
    }
    const inName = Buffer.from('{"id":"42","createGroup":{"name":"\\udbff"}}');
    expect(() => decodeClientFrame(inName, false)).toThrow(
      expect.objectContaining({ reason: "INVALID_UNICODE" }),
    );
    expect(peekRequest(inName, false)).toEqual({ id: 42, request: "createGroup" });
    // Invalid UTF-8 in a binary frame is the same defect: "AB" of the body overwritten by 0xff 0xfe.
    const binary = Buffer.from(toBinary(ClientFrameSchema, create(ClientFrameSchema, { ...frame, id: 43 })));
    const at = binary.indexOf("hi");
    binary[at] = 0xff;
    binary[at + 1] = 0xfe;
    expect(() => decodeClientFrame(binary, true)).toThrow(
      expect.objectContaining({ reason: "INVALID_UNICODE" }),
    );
    expect(peekRequest(binary, true)).toEqual({ id: 43, request: "send" });
  });

  it("calls a binary frame with invalid UTF-8 malformed when something else is wrong with it too", () => {
    const binary = Buffer.from(toBinary(ClientFrameSchema, create(ClientFrameSchema, { ...frame, id: 44 })));
    const at = binary.indexOf("hi");
    binary[at] = 0xff;
    const truncated = Buffer.concat([binary, Buffer.from([0x08, 0xff, 0xff])]);
    expect(() => decodeClientFrame(truncated, true)).toThrow(
      expect.objectContaining({ reason: "MALFORMED_FRAME" }),
    );
    // The strict UTF-8 decoder is back in place for every later frame.
    expect(() => decodeClientFrame(binary, true)).toThrow(
      expect.objectContaining({ reason: "INVALID_UNICODE" }),
    );
  });

  it("decodes an escaped surrogate pair as the one character it is", () => {
    const f = decodeClientFrame(
      Buffer.from('{"id":1,"send":{"toUser":"bob","clientMsgId":"c","body":"\\ud83d\\ude00"}}'),
      false,
    );
    expect(f.kind.case === "send" && f.kind.value.body).toBe("😀");
  });

  it("encodes replies as JSON text or binary", () => {
    const json = encodeServerFrame({ replyTo: 7, kind: { case: "ok", value: {} } }, "json");
    expect(JSON.parse(json as string)).toEqual({ replyTo: 7, ok: {} });
    expect(encodeServerFrame({ replyTo: 7, kind: { case: "ok", value: {} } }, "binary")).toBeInstanceOf(
      Uint8Array,
    );
  });
});
