import type { MessageInitShape } from "@bufbuild/protobuf";
import { describe, expect, it, vi } from "vitest";
import type {
  StreamEventsRequest,
  StreamEventsResponseSchema,
} from "../../gen/switchboard/api/v1/chat_pb.js";
import type { BatchHandler, LoggedMessage, MessageLog } from "../backends/types.js";
import { AsyncQueue } from "../lib/async-queue.js";
import { Code, SwitchboardError } from "../lib/errors.js";
import type { CallContext } from "../lib/rpc.js";
import type { Access } from "./access.js";
import {
  ACK_TIMEOUT_MS,
  EVENTS_PER_RESPONSE_MAX,
  STREAMS_PER_CLIENT_MAX,
  SUBSCRIPTIONS_PER_CLIENT_MAX,
  streamEvents,
} from "./events.js";

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
    const ctx = {
      signal: new AbortController().signal,
      peer: "127.0.0.1:1",
      // As the server's guard does: checking the credential again checks the method's permission too.
      reauthenticate: async () => {
        if (!granted)
          throw new SwitchboardError(
            Code.PERMISSION_DENIED,
            "METHOD_NOT_ALLOWED",
            "it needs the events permission",
          );
      },
    } as CallContext;
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

  it("fills a response with up to 1 MiB of bodies counted in UTF-8 bytes", async () => {
    const acks = new AsyncQueue<StreamEventsRequest>(10);
    const access = { caller: "client:audit", sees: async () => true } as unknown as Access;
    const ctx = { signal: new AbortController().signal, peer: "in-process" } as CallContext;
    const { responses, handler } = await openStream(() => access, ctx, acks);
    // 100,000 ASCII characters are 100,000 bytes: ten to a response, then the other two.
    const batch = Array.from({ length: 12 }, (_, i) => ({
      conversationId: "g:1",
      seq: i + 1,
      messageId: String(1000 + i),
      sender: "a",
      clientMsgId: `c${i}`,
      body: "x".repeat(100_000),
      createdAtMs: 1,
    })) as LoggedMessage[];
    const handled = handler(batch);
    const sizes: number[] = [];
    for (let i = 0; i < 2; i++) {
      const r = await responses.next();
      sizes.push(r.value.events.length);
      acks.push({
        kind: { case: "ack", value: { cursor: r.value.cursor } },
      } as unknown as StreamEventsRequest);
    }
    await handled;
    expect(sizes).toEqual([10, 2]);
  });

  /** A log whose consumers the test drives: each consume() is recorded with its handler. */
  function fakeLog() {
    const consumers: Array<{ group: string; handler: BatchHandler; closed: boolean }> = [];
    const log = {
      consume: async (group: string, handler: BatchHandler) => {
        const c = { group, handler, closed: false };
        consumers.push(c);
        return {
          close: async () => {
            c.closed = true;
          },
        };
      },
    } as unknown as MessageLog;
    return { log, consumers };
  }

  /** A stream on `subscription` of `log` whose requests (after the subscribe) are what the test pushes. */
  function stream(log: MessageLog, subscription: string, options: { caller?: string; start?: number } = {}) {
    const acks = new AsyncQueue<StreamEventsRequest>(100);
    const abort = new AbortController();
    const access = {
      caller: options.caller ?? "client:billing",
      sees: async () => true,
    } as unknown as Access;
    async function* requests(): AsyncIterable<StreamEventsRequest> {
      yield {
        kind: { case: "subscribe", value: { subscription, start: options.start ?? 0 } },
      } as unknown as StreamEventsRequest;
      for await (const a of acks) yield a;
    }
    const ctx = { signal: abort.signal, peer: "in-process" } as CallContext;
    const responses = streamEvents({ log, access }, requests(), ctx)[Symbol.asyncIterator]();
    return {
      responses,
      ack: (cursor: string) =>
        acks.push({ kind: { case: "ack", value: { cursor } } } as unknown as StreamEventsRequest),
      cancel: () => abort.abort(),
    };
  }

  const messageOf = (seq: number) =>
    ({
      conversationId: "g:1",
      seq,
      messageId: String(1000 + seq),
      sender: "a",
      clientMsgId: `c${seq}`,
      body: "x",
      createdAtMs: 1,
    }) as LoggedMessage;
  /** The seqs of a response's message events. */
  const seqsOf = (r: IteratorResult<MessageInitShape<typeof StreamEventsResponseSchema>>) =>
    (r.done ? [] : (r.value.events ?? [])).map((e) =>
      e.kind?.case === "message" ? Number(e.kind.value.seq) : -1,
    );

  it("streams of one subscription in one process share its consumer: batches go to each in turn", async () => {
    const { log, consumers } = fakeLog();
    const a = stream(log, "shared");
    const b = stream(log, "shared");
    expect((await a.responses.next()).value).toEqual({ cursor: "", events: [] });
    expect((await b.responses.next()).value).toEqual({ cursor: "", events: [] });
    // One consumer of the group, not one per stream (nor a takeover of the first).
    expect(consumers.map((c) => c.group)).toEqual(["api.billing.shared"]);
    const { handler } = consumers[0]!;
    const first = handler([messageOf(1)]);
    const toA = await a.responses.next();
    expect(seqsOf(toA)).toEqual([1]);
    a.ack(toA.value.cursor);
    await first;
    const second = handler([messageOf(2)]);
    const toB = await b.responses.next();
    expect(seqsOf(toB)).toEqual([2]);
    b.ack(toB.value.cursor);
    await second;
    // Batches in hand count: while A holds one, the next goes to B.
    const third = handler([messageOf(3)]);
    const held = await a.responses.next();
    expect(seqsOf(held)).toEqual([3]);
    const fourth = handler([messageOf(4)]);
    const alsoB = await b.responses.next();
    expect(seqsOf(alsoB)).toEqual([4]);
    b.ack(alsoB.value.cursor);
    await fourth;
    a.ack(held.value.cursor);
    await third;
    expect(consumers[0]!.closed).toBe(false);
  });

  it("hands the batch of a stream that ended unacknowledged to another stream; the last one closes the consumer", async () => {
    const { log, consumers } = fakeLog();
    const a = stream(log, "failover");
    const b = stream(log, "failover");
    await a.responses.next();
    await b.responses.next();
    const batch = consumers[0]!.handler([messageOf(1)]);
    const toA = await a.responses.next();
    expect(seqsOf(toA)).toEqual([1]);
    a.cancel(); // A's consumer is gone before acknowledging
    const again = await b.responses.next();
    expect(seqsOf(again)).toEqual([1]);
    b.ack(again.value.cursor);
    await expect(batch).resolves.toBeUndefined();
    expect(consumers[0]!.closed).toBe(false);
    // The last stream: its consumer leaves the group before the batch in flight fails.
    const last = consumers[0]!.handler([messageOf(2)]);
    await b.responses.next();
    let closedWhenFailed: boolean | undefined;
    const failed = last.catch(() => {
      closedWhenFailed = consumers[0]!.closed;
    });
    b.cancel();
    await failed;
    expect(closedWhenFailed).toBe(true);
    // A new stream opens the subscription again.
    const c = stream(log, "failover");
    await c.responses.next();
    expect(consumers).toHaveLength(2);
    c.cancel();
  });

  it("hands a batch the log gives out while the consumer joins to the stream that opened it", async () => {
    let first: Promise<void> | undefined;
    const log = {
      // As the embedded log does: the first batch is handed out before consume() returns.
      consume: async (_group: string, handler: BatchHandler) => {
        first = handler([messageOf(1)]);
        return { close: async () => undefined };
      },
    } as unknown as MessageLog;
    const s = stream(log, "eager");
    expect((await s.responses.next()).value).toEqual({ cursor: "", events: [] });
    const r = await s.responses.next();
    expect(seqsOf(r)).toEqual([1]);
    s.ack(r.value.cursor);
    await expect(first).resolves.toBeUndefined();
    s.cancel();
  });

  it("refuses a start position StartPosition does not list", async () => {
    const { log, consumers } = fakeLog();
    const s = stream(log, "odd", { start: 7 });
    await expect(s.responses.next()).rejects.toMatchObject({
      code: Code.INVALID_ARGUMENT,
      reason: "INVALID_START_POSITION",
    });
    expect(consumers).toEqual([]);
  });

  it("bounds the streams and the subscriptions one client has open in a process", async () => {
    const { log, consumers } = fakeLog();
    const open: Array<ReturnType<typeof stream>> = [];
    for (let i = 0; i < SUBSCRIPTIONS_PER_CLIENT_MAX; i++) {
      const s = stream(log, `sub-${i}`);
      await s.responses.next();
      open.push(s);
    }
    const over = stream(log, "one-more");
    await expect(over.responses.next()).rejects.toMatchObject({
      code: Code.RESOURCE_EXHAUSTED,
      reason: "TOO_MANY_SUBSCRIPTIONS",
    });
    // Another client has its own bounds; a subscription open already takes more streams.
    const other = stream(log, "one-more", { caller: "client:other" });
    await other.responses.next();
    while (open.length < STREAMS_PER_CLIENT_MAX) {
      const s = stream(log, "sub-0");
      await s.responses.next();
      open.push(s);
    }
    const tooMany = stream(log, "sub-1");
    await expect(tooMany.responses.next()).rejects.toMatchObject({
      code: Code.RESOURCE_EXHAUSTED,
      reason: "TOO_MANY_STREAMS",
    });
    expect(consumers).toHaveLength(SUBSCRIPTIONS_PER_CLIENT_MAX + 1);
    // Ending streams makes room again.
    open.pop()!.cancel();
    await vi.waitFor(async () => {
      const s = stream(log, "sub-1");
      await s.responses.next();
      open.push(s);
    });
    for (const s of [...open, other]) s.cancel();
  });
});
