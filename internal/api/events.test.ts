import { describe, expect, it, vi } from "vitest";
import type { StreamEventsRequest } from "../../gen/switchboard/api/v1/chat_pb.js";
import type { BatchHandler, LoggedMessage, MessageLog } from "../backends/types.js";
import { AsyncQueue } from "../lib/async-queue.js";
import { Code, SwitchboardError } from "../lib/errors.js";
import type { CallContext } from "../lib/rpc.js";
import type { Access } from "./access.js";
import { ACK_TIMEOUT_MS, EVENTS_PER_RESPONSE_MAX, streamEvents } from "./events.js";

describe("streamEvents", () => {
  it("settles a batch whose stream failed while the batch's membership was being read", async () => {
    let handler: BatchHandler | undefined;
    let consumerClosed = false;
    const log = {
      consume: async (_group: string, h: BatchHandler) => {
        handler = h;
        return {
          close: async () => {
            consumerClosed = true;
          },
        };
      },
    } as unknown as MessageLog;
    let allow!: (visible: boolean) => void;
    const access = {
      caller: "client:billing",
      sees: () => new Promise<boolean>((resolve) => (allow = resolve)),
    } as unknown as Access;
    const abort = new AbortController();
    const ctx = { signal: abort.signal, peer: "in-process" } as CallContext;
    async function* requests(): AsyncIterable<StreamEventsRequest> {
      yield {
        kind: { case: "subscribe", value: { subscription: "audit", start: 0 } },
      } as unknown as StreamEventsRequest;
      await new Promise(() => undefined); // the consumer sends no acks
    }
    const responses = streamEvents({ log, access }, requests(), ctx)[Symbol.asyncIterator]();
    expect((await responses.next()).value).toEqual({ cursor: "", events: [] }); // joined

    const message = {
      conversationId: "g:1",
      seq: 1,
      messageId: "1001",
      sender: "alice",
      clientMsgId: "c1",
      body: "hi",
      createdAtMs: 1,
    } as LoggedMessage;
    const batch = handler!([message]);
    const settled = batch.then(
      () => "resolved",
      (err: { reason?: string }) => err.reason,
    );
    abort.abort(); // the client cancels while the batch's membership is read
    allow(true);
    const outcome = await Promise.race([settled, new Promise((r) => setTimeout(() => r("hung"), 500))]);
    expect(outcome).toBe("STREAM_ENDED");
    expect((await responses.next()).done).toBe(true);
    expect(consumerClosed).toBe(true);
  });

  /**
   * A stream subscribed to "audit" over a log whose batch handler the test calls itself; the
   * consumer's acks are what the test pushes to `acks`.
   */
  async function openStream(
    accessNow: () => Access | undefined,
    ctx: CallContext,
    acks = new AsyncQueue<StreamEventsRequest>(10),
  ) {
    let handler: BatchHandler | undefined;
    const log = {
      consume: async (_group: string, h: BatchHandler) => {
        handler = h;
        return { close: async () => undefined };
      },
    } as unknown as MessageLog;
    async function* requests(): AsyncIterable<StreamEventsRequest> {
      yield {
        kind: { case: "subscribe", value: { subscription: "audit", start: 0 } },
      } as unknown as StreamEventsRequest;
      for await (const a of acks) yield a;
    }
    const responses = streamEvents({ log, access: accessNow()!, accessNow }, requests(), ctx)[
      Symbol.asyncIterator
    ]();
    await responses.next(); // joined
    const message = {
      conversationId: "g:1",
      seq: 1,
      messageId: "1001",
      sender: "a",
      clientMsgId: "c1",
      body: "x",
      createdAtMs: 1,
    } as LoggedMessage;
    return { responses, handler: handler!, deliver: () => handler!([message]) };
  }

  it("applies a grant revoked while the stream is open to its next batch: the stream ends, PERMISSION_DENIED", async () => {
    const access = { caller: "client:billing", sees: async () => true } as unknown as Access;
    let granted = true;
    const ctx = { signal: new AbortController().signal, peer: "in-process" } as CallContext;
    const { responses, deliver } = await openStream(() => (granted ? access : undefined), ctx);
    granted = false; // the policy file no longer grants `events` to billing
    await expect(deliver()).rejects.toMatchObject({ reason: "EVENTS_NOT_ALLOWED" });
    await expect(responses.next()).rejects.toMatchObject({ reason: "EVENTS_NOT_ALLOWED" });
  });

  it("ends the stream at its next batch once the caller's credential no longer holds (a key removed, a CA rotated out)", async () => {
    const access = { caller: "client:audit", sees: async () => true } as unknown as Access;
    let trusted = true;
    const ctx = {
      signal: new AbortController().signal,
      peer: "127.0.0.1:1",
      reauthenticate: async () => {
        if (!trusted)
          throw new SwitchboardError(
            Code.UNAUTHENTICATED,
            "CERTIFICATE_NOT_TRUSTED",
            "its CA was rotated out",
          );
      },
    } as CallContext;
    const { responses, deliver } = await openStream(() => access, ctx);
    trusted = false;
    await expect(deliver()).rejects.toMatchObject({ reason: "CERTIFICATE_NOT_TRUSTED" });
    await expect(responses.next()).rejects.toMatchObject({ reason: "CERTIFICATE_NOT_TRUSTED" });
  });

  it("times only the oldest response written: a consumer handling a backlog one response at a time is not timed out", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    try {
      const acks = new AsyncQueue<StreamEventsRequest>(10);
      const access = { caller: "client:audit", sees: async () => true } as unknown as Access;
      const ctx = { signal: new AbortController().signal, peer: "in-process" } as CallContext;
      const { responses, handler } = await openStream(() => access, ctx, acks);
      // Three responses' worth (256 events each at most), handled 50 s apiece: 150 s in all.
      const batch = Array.from({ length: 3 * EVENTS_PER_RESPONSE_MAX }, (_, i) => ({
        conversationId: "g:1",
        seq: i + 1,
        messageId: String(1000 + i),
        sender: "a",
        clientMsgId: `c${i}`,
        body: "x",
        createdAtMs: 1,
      })) as LoggedMessage[];
      const handled = handler(batch);
      for (let i = 0; i < 3; i++) {
        const r = await responses.next();
        await vi.advanceTimersByTimeAsync(50_000);
        acks.push({
          kind: { case: "ack", value: { cursor: r.value.cursor } },
        } as unknown as StreamEventsRequest);
      }
      await expect(handled).resolves.toBeUndefined();
      // The oldest written response still times out when not acknowledged.
      const late = handler(batch.slice(0, 1)).catch((err: unknown) => err);
      await responses.next();
      await vi.advanceTimersByTimeAsync(ACK_TIMEOUT_MS + 1);
      expect(await late).toMatchObject({ reason: "ACK_TIMEOUT" });
      await expect(responses.next()).rejects.toMatchObject({ reason: "ACK_TIMEOUT" });
    } finally {
      vi.useRealTimers();
    }
  });

  it("a newer stream takes a subscription over without waiting for the old one's response to be written", async () => {
    const consumers: string[] = [];
    const log = {
      consume: async (group: string) => {
        consumers.push(`open ${group}`);
        return {
          close: async () => {
            consumers.push(`close ${group}`);
          },
        };
      },
    } as unknown as MessageLog;
    const access = { caller: "client:billing", sees: async () => true } as unknown as Access;
    async function* requests(): AsyncIterable<StreamEventsRequest> {
      yield {
        kind: { case: "subscribe", value: { subscription: "takeover" } },
      } as unknown as StreamEventsRequest;
      await new Promise(() => undefined);
    }
    const ctx = () => ({ signal: new AbortController().signal, peer: "in-process" }) as CallContext;
    // The old stream's consumer went silent: nobody pulls its responses (its write never finishes).
    const old = streamEvents({ log, access }, requests(), ctx())[Symbol.asyncIterator]();
    await old.next();
    const newer = streamEvents({ log, access }, requests(), ctx())[Symbol.asyncIterator]();
    const first = await Promise.race([newer.next(), new Promise((r) => setTimeout(() => r("hung"), 500))]);
    expect(first).toEqual({ done: false, value: { cursor: "", events: [] } });
    expect(consumers).toEqual([
      "open api.billing.takeover",
      "close api.billing.takeover",
      "open api.billing.takeover",
    ]);
  });
});
