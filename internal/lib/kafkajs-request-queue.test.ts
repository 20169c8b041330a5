import { afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { fixKafkajsRequestQueue, kafkajsRequestQueue } from "./kafkajs-request-queue.js";

// These drive kafkajs's own RequestQueue class (the one every broker connection uses), patched.

const quiet = { debug() {}, info() {}, warn() {}, error() {} };

function queue(maxInFlightRequests: number | null) {
  const RequestQueue = kafkajsRequestQueue();
  const q = new RequestQueue({
    maxInFlightRequests,
    requestTimeout: 30_000,
    enforceRequestTimeout: false,
    clientId: "test",
    broker: "broker:9092",
    logger: quiet,
  }) as unknown as {
    push(r: unknown): void;
    fulfillRequest(r: { correlationId: number; payload: Buffer; size: number }): void;
    maybeThrottle(ms: number): void;
    destroy(): void;
    throttleCheckTimeoutId: unknown;
  };
  const sent: number[] = [];
  const push = (correlationId: number) =>
    q.push({
      entry: { correlationId, apiKey: 1, apiName: "Fetch", apiVersion: 11, resolve() {}, reject() {} },
      expectResponse: true,
      sendRequest: () => sent.push(correlationId),
    });
  const respond = (correlationId: number) =>
    q.fulfillRequest({ correlationId, payload: Buffer.alloc(0), size: 0 });
  return { q, sent, push, respond };
}

describe("kafkajs's request queue, fixed", () => {
  beforeAll(() => fixKafkajsRequestQueue());
  afterEach(() => vi.useRealTimers());

  it("arms no timer once a response leaves nothing waiting (kafkajs 2.2.4 re-armed one every millisecond)", async () => {
    const { q, sent, push, respond } = queue(null);
    const checks = vi.spyOn(q as unknown as { checkPendingRequests(): void }, "checkPendingRequests");
    push(1);
    expect(sent).toEqual([1]);
    respond(1);
    expect(q.throttleCheckTimeoutId).toBeNull();
    const before = checks.mock.calls.length;
    await new Promise((r) => setTimeout(r, 50));
    expect(checks.mock.calls.length - before).toBe(0);
    q.destroy();
  });

  it("sends a request held by the in-flight limit when the response before it arrives", () => {
    vi.useFakeTimers();
    const { q, sent, push, respond } = queue(1);
    push(1);
    push(2);
    expect(sent).toEqual([1]);
    respond(1);
    expect(sent).toEqual([1, 2]);
    respond(2);
    // The check armed while request 2 waited fires once and arms nothing after it.
    vi.advanceTimersByTime(10);
    expect(q.throttleCheckTimeoutId).toBeNull();
    expect(vi.getTimerCount()).toBe(0);
    q.destroy();
  });

  it("sends a request held by a broker's throttling when the throttle ends", () => {
    vi.useFakeTimers();
    const { q, sent, push } = queue(null);
    q.maybeThrottle(40);
    push(1);
    expect(sent).toEqual([]);
    vi.advanceTimersByTime(39);
    expect(sent).toEqual([]);
    vi.advanceTimersByTime(2);
    expect(sent).toEqual([1]);
    expect(q.throttleCheckTimeoutId).toBeNull();
    q.destroy();
  });

  it("is applied once however often it is called", () => {
    const method = kafkajsRequestQueue().prototype.scheduleCheckPendingRequests;
    fixKafkajsRequestQueue();
    expect(kafkajsRequestQueue().prototype.scheduleCheckPendingRequests).toBe(method);
  });
});
