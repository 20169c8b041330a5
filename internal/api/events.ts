/**
 * ChatService.StreamEvents: the message log as a durable, resumable subscription for backend
 * consumers. A subscription is a consumer group of the log (`api.<client>.<name>`), so its position
 * survives the stream, the process and the consumer: a batch of the log is handed out as one or more
 * responses, each with a cursor, and the group's position passes the batch only once every one of
 * them was acknowledged. A stream that ends with responses unacknowledged leaves the position where
 * it was, and the next stream on the subscription gets those events again: at least once, in
 * per-conversation seq order, nothing skipped.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  StartPosition,
  type StreamEventsRequest,
  type StreamEventsResponseSchema,
} from "../../gen/switchboard/api/v1/chat_pb.js";
import type { Closeable, LoggedMessage, MessageLog } from "../backends/types.js";
import { toWireMessage } from "../conversations/index.js";
import { AsyncQueue } from "../lib/async-queue.js";
import { Code, errors, SwitchboardError } from "../lib/errors.js";
import type { CallContext } from "../lib/rpc.js";
import type { Access } from "./access.js";

type Response = MessageInitShape<typeof StreamEventsResponseSchema>;

const SUBSCRIPTION_PATTERN = /^[a-z0-9._-]{1,64}$/;
/** Events per response, and their bodies' bytes: far below gRPC's 4 MiB default message limit. */
export const EVENTS_PER_RESPONSE_MAX = 256;
const RESPONSE_BODY_BYTES_MAX = 1 << 20;
/**
 * The oldest response written and not acknowledged must be within this (DEADLINE_EXCEEDED,
 * ACK_TIMEOUT ends the stream). Counted from when it was written and became the oldest: a consumer
 * handles responses one after another, so a response queued behind others has not been read yet.
 */
export const ACK_TIMEOUT_MS = 60_000;
/** Responses waiting to be written to one stream (one per concurrently consumed partition at most). */
const QUEUED_RESPONSES_MAX = 1_024;

/**
 * The open stream of each subscription in this process. A new stream on a subscription takes it over:
 * a consumer that reconnects after losing its connection must not wait until the server notices.
 */
const open = new Map<string, { takeOver(): Promise<void> }>();

export interface EventStreamDeps {
  log: MessageLog;
  /** The caller's access when the stream opened (it names the subscription's consumer group). */
  access: Access;
  /**
   * The caller's access as the policy says now, read again for every batch: a grant changed or
   * revoked while the stream is open applies to its next batch. Undefined once the caller may no
   * longer stream events (the stream then ends with PERMISSION_DENIED).
   */
  accessNow?: () => Access | undefined;
}

export async function* streamEvents(
  deps: EventStreamDeps,
  requests: AsyncIterable<StreamEventsRequest>,
  ctx: CallContext,
): AsyncIterable<Response> {
  const reader = requests[Symbol.asyncIterator]();
  const first = await reader.next();
  const subscribe = first.done ? undefined : first.value.kind;
  if (subscribe?.case !== "subscribe")
    throw errors.invalid("SUBSCRIBE_FIRST", "the first request of StreamEvents must be subscribe");
  const name = subscribe.value.subscription;
  if (!SUBSCRIPTION_PATTERN.test(name))
    throw errors.invalid("INVALID_SUBSCRIPTION", "subscription must be 1-64 of a-z 0-9 . _ -");
  const group = `api.${deps.access.caller.replace(/^client:/, "")}.${name}`;
  // The newest stream wins, also when several arrive while an old one winds down.
  for (let old = open.get(group); old !== undefined; old = open.get(group)) await old.takeOver();
  // Resolved once this stream's consumer joined (or failed to): what a takeover waits for before it
  // closes it.
  let joined: Promise<unknown> = Promise.resolve();
  const self = {
    /**
     * Ends this stream and leaves the group, so that a newer stream's consumer gets its partitions.
     * It does not wait for this stream's generator to return: that may be writing a response to a
     * connection that is gone, until its keepalive or deadline notices (the newer stream is the
     * consumer reconnecting).
     */
    takeOver: async () => {
      fail(
        new SwitchboardError(
          Code.ABORTED,
          "SUBSCRIPTION_TAKEN_OVER",
          `a newer stream took subscription ${name} over`,
        ),
      );
      await joined.catch(() => undefined);
      await closeConsumer().catch(() => undefined);
      if (open.get(group) === self) open.delete(group);
    },
  };
  open.set(group, self);

  const out = new AsyncQueue<Response>(QUEUED_RESPONSES_MAX);
  const unacked = new Map<string, { resolve(): void; reject(err: unknown): void; timer?: NodeJS.Timeout }>();
  /** Cursors written to the stream and not acknowledged, oldest first: only the first is timed. */
  const written: string[] = [];
  const timeOldest = () => {
    const waiter = written[0] === undefined ? undefined : unacked.get(written[0]);
    if (!waiter || waiter.timer) return;
    const cursor = written[0]!;
    waiter.timer = setTimeout(
      () =>
        fail(
          new SwitchboardError(
            Code.DEADLINE_EXCEEDED,
            "ACK_TIMEOUT",
            `cursor ${cursor} was not acknowledged within ${ACK_TIMEOUT_MS} ms`,
          ),
        ),
      ACK_TIMEOUT_MS,
    );
  };
  let failure: SwitchboardError | undefined;
  let cursorCount = 0;
  let consumer: Closeable | undefined;
  let closing: Promise<void> | undefined;
  // Closed before its batch in flight is failed: a consumer that is closing takes the failure as
  // "stop here" (no retry, nothing committed) rather than as a handler error.
  const closeConsumer = () => {
    if (consumer) closing ??= consumer.close();
    return closing ?? Promise.resolve();
  };
  const fail = (err: SwitchboardError) => {
    if (failure) return;
    failure = err;
    void closeConsumer().catch(() => undefined);
    for (const waiter of unacked.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(failure);
    }
    unacked.clear();
    out.end();
  };
  ctx.signal.addEventListener("abort", () => fail(errors.unavailable("STREAM_ENDED", "the stream ended")), {
    once: true,
  });

  /** Hands one log batch out; resolves once the consumer acknowledged all of it. */
  const handle = async (batch: LoggedMessage[]): Promise<void> => {
    if (failure) throw failure;
    // The credential too, not only the grant: a key removed, a certificate expired or its CA rotated
    // out, a ServiceAccount deleted ends the stream at its next batch.
    if (ctx.reauthenticate) {
      try {
        await ctx.reauthenticate();
      } catch (err) {
        fail(SwitchboardError.from(err));
        throw failure;
      }
    }
    const access = deps.accessNow ? deps.accessNow() : deps.access;
    if (!access) {
      fail(errors.denied("EVENTS_NOT_ALLOWED", `${deps.access.caller} may no longer stream events`));
      throw failure;
    }
    const visible = await visibleOf(batch, access);
    // Failed during the membership reads (a cancel, a takeover): the waiters below would never be
    // settled, and the consumer's close waits for this batch.
    if (failure) throw failure;
    const acks = chunk(visible).map((events) => {
      const cursor = String(++cursorCount);
      const acked = new Promise<void>((resolve, reject) => {
        unacked.set(cursor, { resolve, reject });
      });
      if (
        !out.push({
          cursor,
          events: events.map((m) => ({ kind: { case: "message", value: toWireMessage(m) } })),
        })
      )
        fail(errors.unavailable("STREAM_OVERLOADED", "too many responses queued on the stream"));
      return acked;
    });
    await Promise.all(acks);
  };

  void (async () => {
    for (let r = await reader.next(); !r.done; r = await reader.next()) {
      const kind = r.value.kind;
      if (kind.case !== "ack") throw errors.invalid("ACK_EXPECTED", "after subscribe, only acks may be sent");
      const waiter = unacked.get(kind.value.cursor);
      if (!waiter)
        throw errors.invalid(
          "UNKNOWN_CURSOR",
          `cursor ${JSON.stringify(kind.value.cursor.slice(0, 40))} is not outstanding on this stream`,
        );
      unacked.delete(kind.value.cursor);
      clearTimeout(waiter.timer);
      const at = written.indexOf(kind.value.cursor);
      if (at >= 0) written.splice(at, 1);
      timeOldest();
      waiter.resolve();
    }
    // The consumer closed its side: it can acknowledge nothing more.
    fail(errors.unavailable("STREAM_ENDED", "the consumer closed the stream"));
  })().catch((err: unknown) => fail(SwitchboardError.from(err)));
  try {
    const startAt = subscribe.value.start === StartPosition.LATEST ? "latest" : "earliest";
    const consuming = deps.log.consume(group, handle, { startAt });
    joined = consuming;
    consumer = await consuming;
    if (failure) void closeConsumer().catch(() => undefined);
    // The consumer has joined (and a new "latest" subscription has its position): say so first.
    else yield { cursor: "", events: [] };
    for await (const response of out) {
      if (response.cursor) written.push(response.cursor);
      timeOldest();
      yield response;
    }
    if (failure && failure.reason !== "STREAM_ENDED") throw failure;
  } finally {
    fail(errors.unavailable("STREAM_ENDED", "the stream ended"));
    await closeConsumer();
    if (open.get(group) === self) open.delete(group);
  }
}

/** The batch's messages the caller may see, in order (one membership read per conversation). */
async function visibleOf(batch: LoggedMessage[], access: Access): Promise<LoggedMessage[]> {
  const seen = new Map<string, boolean>();
  const out: LoggedMessage[] = [];
  for (const m of batch) {
    let ok = seen.get(m.conversationId);
    if (ok === undefined) {
      ok = await access.sees(m.conversationId);
      seen.set(m.conversationId, ok);
    }
    if (ok) out.push(m);
  }
  return out;
}

/** Splits events into responses within the per-response bounds (an empty batch yields none). */
function chunk(messages: LoggedMessage[]): LoggedMessage[][] {
  const out: LoggedMessage[][] = [];
  let current: LoggedMessage[] = [];
  let bytes = 0;
  for (const m of messages) {
    const size = m.body.length * 3 + 256;
    if (
      current.length > 0 &&
      (current.length >= EVENTS_PER_RESPONSE_MAX || bytes + size > RESPONSE_BODY_BYTES_MAX)
    ) {
      out.push(current);
      current = [];
      bytes = 0;
    }
    current.push(m);
    bytes += size;
  }
  if (current.length > 0) out.push(current);
  return out;
}
