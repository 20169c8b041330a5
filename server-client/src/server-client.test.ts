/**
 * The typed client and its event consumer against an in-process fake ChatService (Connect's gRPC
 * handler on a plaintext HTTP/2 server): each test decides what the stream answers, so failures of
 * every kind are reproducible without a Switchboard server. The consumer against the real server is
 * in test/integration/server-api.test.ts.
 */
import { getEventListeners } from "node:events";
import { createServer, type Http2Session } from "node:http2";
import type { AddressInfo } from "node:net";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { afterEach, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import {
  ChatService,
  PublishResponseSchema,
  StartPosition,
  type StreamEventsRequest,
  StreamEventsResponseSchema,
} from "../../gen/switchboard/api/v1/chat_pb.js";
import { MessageSchema } from "../../gen/switchboard/common/v1/common_pb.js";
import { type ChatClient, createChatClient, reasonOf } from "./client.js";
import { consumeEvents } from "./events.js";

type Impl = Partial<ServiceImpl<typeof ChatService>>;

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** Serves `impl` on 127.0.0.1 and returns a client of it. */
async function serve(impl: Impl): Promise<ChatClient> {
  const sessions = new Set<Http2Session>();
  const server = createServer(connectNodeAdapter({ routes: (router) => router.service(ChatService, impl) }));
  server.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const client = createChatClient({ baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}` });
  cleanups.push(async () => {
    client.close();
    for (const s of sessions) s.destroy();
    await new Promise((resolve) => server.close(resolve));
  });
  return client;
}

/** An error as the server sends it: a code and a google.rpc.ErrorInfo reason. */
function apiError(code: Code, reason: string): ConnectError {
  return new ConnectError(reason, code, undefined, [
    { desc: ErrorInfoSchema, value: { reason, domain: "switchboard" } },
  ]);
}

const opened = create(StreamEventsResponseSchema, { cursor: "" });
const batch = (cursor: string) =>
  create(StreamEventsResponseSchema, {
    cursor,
    events: [{ kind: { case: "message", value: create(MessageSchema, { conversationId: "g:1", seq: 1n }) } }],
  });

/** Keeps the stream open, reading the consumer's acks, until the consumer ends it. */
async function untilEnd(requests: AsyncIterable<StreamEventsRequest>): Promise<void> {
  for await (const _ of requests);
}

const fast = { initialMs: 1, maxMs: 1 };

describe("consumeEvents", () => {
  const permanent: Array<[string, string, Code]> = [
    ["PERMISSION_DENIED", "EVENTS_NOT_ALLOWED", Code.PermissionDenied],
    ["UNAUTHENTICATED", "UNAUTHENTICATED", Code.Unauthenticated],
    ["INVALID_ARGUMENT", "INVALID_SUBSCRIPTION", Code.InvalidArgument],
    ["FAILED_PRECONDITION", "SEQUENCED_NOT_PUBLISHED", Code.FailedPrecondition],
    ["NOT_FOUND", "NOT_FOUND", Code.NotFound],
    ["UNIMPLEMENTED", "UNIMPLEMENTED", Code.Unimplemented],
  ];
  it.each(permanent)(
    "rejects with a permanent error (%s / %s) at once, not retrying it",
    async (_, reason, code) => {
      const stop = new AbortController();
      let attempts = 0;
      const client = await serve({
        // biome-ignore lint/correctness/useYield: fails before it answers
        async *streamEvents() {
          // Without the fix the consumer would retry forever: end it after a few attempts instead.
          if (++attempts >= 3) stop.abort();
          throw apiError(code, reason);
        },
      });
      const errors: unknown[] = [];
      const err = await consumeEvents(
        client,
        { subscription: "s", signal: stop.signal, backoff: fast, onError: (e) => errors.push(e) },
        async () => {},
      ).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(ConnectError);
      expect((err as ConnectError).code).toBe(code);
      expect(reasonOf(err)).toBe(reason);
      expect(attempts).toBe(1);
      expect(errors).toEqual([]);
    },
  );

  const transient: Array<[string, string, Code]> = [
    ["UNAVAILABLE", "STREAM_ENDED", Code.Unavailable],
    ["DEADLINE_EXCEEDED", "ACK_TIMEOUT", Code.DeadlineExceeded],
    ["CANCELED", "CANCELLED", Code.Canceled],
    ["INTERNAL", "INTERNAL", Code.Internal],
    ["UNKNOWN", "UNKNOWN", Code.Unknown],
    ["RESOURCE_EXHAUSTED", "TOO_MANY_STREAMS", Code.ResourceExhausted],
    // A server of an earlier release: another replica's stream took the subscription over.
    ["ABORTED", "SUBSCRIPTION_TAKEN_OVER", Code.Aborted],
  ];
  it.each(transient)("retries a transient error (%s / %s) after a backoff", async (_, reason, code) => {
    const stop = new AbortController();
    let attempts = 0;
    const client = await serve({
      async *streamEvents(requests) {
        if (++attempts === 1) throw apiError(code, reason);
        yield opened;
        yield batch("1");
        await untilEnd(requests);
      },
    });
    const errors: unknown[] = [];
    await consumeEvents(
      client,
      { subscription: "s", signal: stop.signal, backoff: fast, onError: (e) => errors.push(e) },
      async () => stop.abort(),
    );
    expect(attempts).toBe(2);
    expect(errors.map((e) => reasonOf(e))).toEqual([reason]);
  });

  it("retries a failed handler, even one failing with a permanent code of its own", async () => {
    const stop = new AbortController();
    let attempts = 0;
    const client = await serve({
      async *streamEvents(requests) {
        attempts++;
        yield opened;
        yield batch("1");
        await untilEnd(requests);
      },
    });
    const errors: unknown[] = [];
    let calls = 0;
    await consumeEvents(
      client,
      { subscription: "s", signal: stop.signal, backoff: fast, onError: (e) => errors.push(e) },
      async () => {
        // e.g. a call of the handler's own that this client may not make: the batch comes again.
        if (++calls === 1) throw apiError(Code.PermissionDenied, "METHOD_NOT_ALLOWED");
        stop.abort();
      },
    );
    expect(attempts).toBe(2);
    expect(errors.map((e) => reasonOf(e))).toEqual(["METHOD_NOT_ALLOWED"]);
  });

  // Stopped by its own signal, or (no signal) by closing the client: the signal the backoff waits on.
  it.each(["signal", "client.closed"])(
    "leaves no abort listener behind on %s across restarts",
    async (by) => {
      const stop = new AbortController();
      const listeners: number[] = [];
      const client: ChatClient = await serve({
        async *streamEvents(requests) {
          listeners.push(getEventListeners(by === "signal" ? stop.signal : client.closed, "abort").length);
          if (listeners.length <= 15) throw apiError(Code.Unavailable, "STREAM_ENDED");
          yield opened;
          yield batch("1");
          await untilEnd(requests);
        },
      });
      const options = by === "signal" ? { signal: stop.signal } : {};
      await consumeEvents(client, { subscription: "s", ...options, backoff: fast }, async () =>
        by === "signal" ? stop.abort() : client.close(),
      );
      expect(listeners).toHaveLength(16);
      // As many on the 16th attempt as on the first: each backoff removed its own.
      expect(new Set(listeners).size).toBe(1);
    },
  );

  it("subscribes with the start position asked for, on every attempt", async () => {
    const stop = new AbortController();
    const subscribes: Array<[string, StartPosition]> = [];
    const client = await serve({
      async *streamEvents(requests) {
        for await (const r of requests) {
          if (r.kind.case === "subscribe") subscribes.push([r.kind.value.subscription, r.kind.value.start]);
          if (subscribes.length === 1) throw apiError(Code.Unavailable, "STREAM_ENDED");
          yield opened;
          yield batch("1");
        }
      },
    });
    await consumeEvents(
      client,
      { subscription: "bot", start: StartPosition.LATEST, signal: stop.signal, backoff: fast },
      async () => stop.abort(),
    );
    expect(subscribes).toEqual([
      ["bot", StartPosition.LATEST],
      ["bot", StartPosition.LATEST],
    ]);
  });

  it("resolves once its client is closed, rather than reconnecting", async () => {
    const stop = new AbortController();
    let attempts = 0;
    let markOpen: (() => void) | undefined;
    const streamOpen = new Promise<void>((resolve) => {
      markOpen = resolve;
    });
    const client = await serve({
      async *streamEvents(requests) {
        // Without the fix the consumer would reconnect: end it on its second attempt instead.
        if (++attempts >= 2) stop.abort();
        yield opened;
        markOpen?.();
        await untilEnd(requests);
      },
    });
    const errors: unknown[] = [];
    const consuming = consumeEvents(
      client,
      { subscription: "s", signal: stop.signal, backoff: fast, onError: (e) => errors.push(e) },
      async () => {},
    );
    await streamOpen;
    client.close();
    await consuming;
    expect(attempts).toBe(1);
    expect(errors).toEqual([]);
    // And on a client closed already, it returns at once.
    await consumeEvents(client, { subscription: "s", backoff: fast }, async () => {});
    expect(attempts).toBe(1);
  });
});

describe("createChatClient", () => {
  it("fails calls made after close() with a clear error, not reconnecting", async () => {
    let published = 0;
    const client = await serve({
      publish() {
        published++;
        return create(PublishResponseSchema, {});
      },
    });
    await client.publish({ conversationId: "g:1", idempotencyKey: "k1", body: "before" });
    client.close();
    const err = await client.publish({ conversationId: "g:1", idempotencyKey: "k2", body: "after" }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.FailedPrecondition);
    expect((err as ConnectError).rawMessage).toBe("the ChatClient is closed");
    expect(published).toBe(1);
    expect(client.closed.aborted).toBe(true);
  });
});
