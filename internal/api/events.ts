/**
 * ChatService.StreamEvents: the message log as a durable, resumable subscription for backend
 * consumers. A subscription is a consumer group of the log (`api.<client>.<name>`), so its position
 * survives the stream, the process and the consumer: a batch of the log is handed out as one or more
 * responses, each with a cursor, and the group's position passes the batch only once every one of
 * them was acknowledged. A stream that ends with responses unacknowledged leaves the position where
 * it was, and the next stream on the subscription gets those events again: at least once, in
 * per-conversation seq order, nothing skipped.
 *
 * Streams of one subscription open at the same time share its events, wherever they are: the
 * streams of one process share one consumer of the group, each batch handed to one of them (the one
 * with the fewest batches in hand, in turn), and streams on several processes are several members of
 * the group, which share the log's partitions (Kafka). A batch whose stream ends before it was
 * acknowledged goes to another stream of the process; only when the last one ends does the consumer
 * leave the group, failing its batch in flight (the log hands it out again to whoever consumes next).
 * A consumer that reconnects before the server noticed its old connection is gone so shares with the
 * dead stream until keepalive or the ack timeout ends it, then gets its batch.
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
/** Events per response, and their bodies' UTF-8 bytes: far below gRPC's 4 MiB default message limit. */
export const EVENTS_PER_RESPONSE_MAX = 256;
const RESPONSE_BODY_BYTES_MAX = 1 << 20;
/**
 * The oldest response written and not acknowledged must be within this (DEADLINE_EXCEEDED,
 * ACK_TIMEOUT ends the stream). Counted from when it was written and became the oldest: a consumer
 * handles responses one after another, so a response queued behind others has not been read yet.
 */
export const ACK_TIMEOUT_MS = 60_000;
/**
 * The RetryInfo of the stream's refusals a retry can get past (a slot freed when another stream
 * ends; a batch that comes again on a new stream), which consumeEvents retries.
 */
const STREAM_RETRY_AFTER_MS = 1_000;
/** Responses waiting to be written to one stream (one per concurrently consumed partition at most). */
const QUEUED_RESPONSES_MAX = 1_024;
/** Streams one client may have open on one process, all its subscriptions together. */
export const STREAMS_PER_CLIENT_MAX = 32;
/** Subscriptions one client may have open (with a stream) on one process: each is a consumer group. */
export const SUBSCRIPTIONS_PER_CLIENT_MAX = 16;

const START_AT = new Map<StartPosition, "earliest" | "latest">([
  [StartPosition.UNSPECIFIED, "earliest"],
  [StartPosition.EARLIEST, "earliest"],
  [StartPosition.LATEST, "latest"],
]);

/** One stream as its subscription's consumer sees it. */
interface Member {
  /** Hands a batch out on the stream; resolves once all of it was acknowledged. */
  handle(batch: LoggedMessage[]): Promise<void>;
  /** Batches handed to it and not yet acknowledged. */
  inHand: number;
  /** When it was last handed a batch (a counter), so that idle streams take turns. */
  turn: number;
}

/**
 * A subscription open in this process: one consumer of its group, shared by the subscription's
 * streams here. It closes the consumer once its last stream has ended.
 */
class Subscription {
  readonly members = new Set<Member>();
  /** Resolves once the consumer joined; rejects when it could not. */
  readonly joined: Promise<void>;
  /** Set once the last stream ended: resolves once the consumer's close was called (it is stopping). */
  stopping: Promise<void> | undefined;
  /** Resolves once the consumer closed and the subscription left the registry. */
  closed: Promise<void> | undefined;
  private consumer: Closeable | undefined;
  private turns = 0;

  /** Opens the subscription for its first stream (a member before the log may hand out a batch). */
  constructor(
    readonly caller: string,
    private readonly registry: Map<string, Subscription>,
    private readonly group: string,
    first: Member,
    log: MessageLog,
    startAt: "earliest" | "latest",
  ) {
    this.members.add(first);
    registry.set(group, this);
    this.joined = log
      .consume(group, (batch) => this.dispatch(batch), { startAt })
      .then(
        (consumer) => {
          this.consumer = consumer;
        },
        (err: unknown) => {
          // Nothing to close: the next stream on the subscription tries to join again.
          if (this.registry.get(this.group) === this) this.registry.delete(this.group);
          throw err;
        },
      );
    this.joined.catch(() => undefined);
  }

  /** Hands the batch to one stream, and to another if that one ends before acknowledging it. */
  private async dispatch(batch: LoggedMessage[]): Promise<void> {
    let ended: unknown;
    for (;;) {
      let member: Member | undefined;
      for (const m of this.members)
        if (!member || m.inHand < member.inHand || (m.inHand === member.inHand && m.turn < member.turn))
          member = m;
      if (!member) {
        // Every stream ended: fail the batch only once the consumer is closing, which then takes the
        // failure as "stop here" (nothing committed, nothing retried).
        await this.stopping;
        throw ended ?? errors.unavailable("STREAM_ENDED", "every stream of the subscription ended");
      }
      member.turn = ++this.turns;
      member.inHand++;
      try {
        await member.handle(batch);
        return;
      } catch (err) {
        // A stream still open failed the batch itself (a storage read): the log retries it. One
        // that ended has left `members`: the batch goes to another.
        if (this.members.has(member)) throw err;
        ended = err;
      } finally {
        member.inHand--;
      }
    }
  }

  /** Adds a stream; false if the subscription is closing (wait for `closed`, then open another). */
  add(member: Member): boolean {
    if (this.stopping) return false;
    this.members.add(member);
    return true;
  }

  /**
   * Removes a stream, before its batches in hand are failed (so that they go to another stream); the
   * last one closes the consumer first (so that the log takes their failure as "stop here").
   */
  remove(member: Member): void {
    if (!this.members.delete(member) || this.members.size > 0 || this.stopping) return;
    let closing: Promise<void> = Promise.resolve();
    const close = () => {
      if (this.consumer) closing = this.consumer.close();
    };
    if (this.consumer) {
      close();
      this.stopping = Promise.resolve();
    } else this.stopping = this.joined.then(close, () => undefined);
    this.closed = this.stopping
      .then(() => closing)
      .catch(() => undefined)
      .finally(() => {
        if (this.registry.get(this.group) === this) this.registry.delete(this.group);
      });
  }
}

/** The subscriptions open in this process, by consumer group, per log. */
const registries = new WeakMap<MessageLog, Map<string, Subscription>>();

function registryOf(log: MessageLog): Map<string, Subscription> {
  let registry = registries.get(log);
  if (!registry) {
    registry = new Map();
    registries.set(log, registry);
  }
  return registry;
}

/**
 * Ends this process's event streams when it begins to stop: each ends UNAVAILABLE with STREAM_ENDED
 * (its caller opens it again, elsewhere or after the restart, and what it had not acknowledged comes
 * again) instead of hanging until the gRPC server's grace period cancels it. One listener on the
 * process's signal for all of them.
 */
export class StreamStops {
  private readonly ends = new Set<(err: SwitchboardError) => void>();
  private stopped = false;

  constructor(stopping: AbortSignal | undefined) {
    stopping?.addEventListener("abort", () => this.stopAll(), { once: true });
    if (stopping?.aborted) this.stopped = true;
  }

  /** Calls `end` when the process stops (at once if it is stopping); returns the unregistration. */
  register(end: (err: SwitchboardError) => void): () => void {
    if (this.stopped) {
      end(serverStopping());
      return () => undefined;
    }
    this.ends.add(end);
    return () => this.ends.delete(end);
  }

  private stopAll(): void {
    this.stopped = true;
    for (const end of this.ends) end(serverStopping());
    this.ends.clear();
  }
}

function serverStopping(): SwitchboardError {
  return new SwitchboardError(
    Code.UNAVAILABLE,
    "STREAM_ENDED",
    "the server is stopping: open the stream again and resume; batches not acknowledged come again",
    { retryAfterMs: STREAM_RETRY_AFTER_MS },
  );
}

export interface EventStreamDeps {
  /** Ends the stream when the process begins to stop. */
  stops?: StreamStops;
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
  const startAt = START_AT.get(subscribe.value.start);
  if (startAt === undefined)
    throw errors.invalid(
      "INVALID_START_POSITION",
      `start ${subscribe.value.start} is none of START_POSITION_UNSPECIFIED, _EARLIEST, _LATEST`,
    );
  const caller = deps.access.caller;
  const group = `api.${caller.replace(/^client:/, "")}.${name}`;

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
            // Open the stream again: the batch comes again.
            { retryAfterMs: STREAM_RETRY_AFTER_MS },
          ),
        ),
      ACK_TIMEOUT_MS,
    );
  };
  let failure: SwitchboardError | undefined;
  let cursorCount = 0;
  let subscription: Subscription | undefined;
  const fail = (err: SwitchboardError) => {
    if (failure) return;
    failure = err;
    // Out of the subscription first: its batches in hand go to another stream, or (the last one) the
    // consumer is closing before they fail.
    subscription?.remove(member);
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
  /** Ended by the server (it is stopping): the caller hears why, and reconnects. */
  let stoppedByServer = false;
  const unregister = deps.stops?.register((err) => {
    stoppedByServer = true;
    fail(err);
  });

  /** Hands one log batch out; resolves once the consumer acknowledged all of it. */
  const handle = async (batch: LoggedMessage[]): Promise<void> => {
    if (failure) throw failure;
    // The grant first: checking the credential again also checks the method's permission, and a
    // client whose `events` permission was removed is told that (EVENTS_NOT_ALLOWED), not that it may
    // not call StreamEvents (METHOD_NOT_ALLOWED).
    const access = deps.accessNow ? deps.accessNow() : deps.access;
    if (!access) {
      fail(errors.denied("EVENTS_NOT_ALLOWED", `${deps.access.caller} may no longer stream events`));
      throw failure;
    }
    // Then the credential: a key removed, a certificate expired or its CA rotated out, a
    // ServiceAccount deleted ends the stream at its next batch.
    if (ctx.reauthenticate) {
      try {
        await ctx.reauthenticate();
      } catch (err) {
        fail(SwitchboardError.from(err));
        throw failure;
      }
    }
    const visible = await visibleOf(batch, access);
    // Failed during the membership reads (a cancel, a stream ended): the waiters below would never be
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
  const member: Member = { handle, inHand: 0, turn: 0 };
  // Read through a function: set by callbacks, it may change across every await below.
  const failureOf = (): SwitchboardError | undefined => failure;

  // Join the subscription's consumer in this process (opening it for its first stream), within the
  // caller's bounds. One whose last stream just ended is closing: wait for that, then open it again.
  const registry = registryOf(deps.log);
  for (;;) {
    const failed = failureOf();
    if (failed) {
      if (failed.reason === "STREAM_ENDED") return;
      throw failed;
    }
    const existing = registry.get(group);
    if (existing?.closed) {
      await existing.closed;
      continue;
    }
    let streams = 0;
    let subscriptions = 0;
    for (const s of registry.values())
      if (s.caller === caller) {
        streams += s.members.size;
        subscriptions++;
      }
    if (streams >= STREAMS_PER_CLIENT_MAX)
      throw errors.exhausted(
        "TOO_MANY_STREAMS",
        `${caller} has ${STREAMS_PER_CLIENT_MAX} event streams open on this server already (at most ${STREAMS_PER_CLIENT_MAX})`,
        STREAM_RETRY_AFTER_MS,
      );
    if (!existing && subscriptions >= SUBSCRIPTIONS_PER_CLIENT_MAX)
      throw errors.exhausted(
        "TOO_MANY_SUBSCRIPTIONS",
        `${caller} has ${SUBSCRIPTIONS_PER_CLIENT_MAX} subscriptions open on this server already (at most ${SUBSCRIPTIONS_PER_CLIENT_MAX}); end the streams of one first`,
        STREAM_RETRY_AFTER_MS,
      );
    if (!existing) {
      subscription = new Subscription(caller, registry, group, member, deps.log, startAt);
      break;
    }
    subscription = existing;
    if (subscription.add(member)) break;
  }

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
    try {
      await subscription.joined;
    } catch (err) {
      fail(SwitchboardError.from(err));
      throw err;
    }
    // The consumer has joined (and a new "latest" subscription has its position): say so first.
    if (!failure) yield { cursor: "", events: [] };
    for await (const response of out) {
      if (response.cursor) written.push(response.cursor);
      timeOldest();
      yield response;
    }
    if (failure && (failure.reason !== "STREAM_ENDED" || stoppedByServer)) throw failure;
  } finally {
    unregister?.();
    fail(errors.unavailable("STREAM_ENDED", "the stream ended"));
    // The last stream waits for the consumer to close (the next stream then finds it gone).
    if (subscription.members.size === 0) await subscription.closed;
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
    const size = Buffer.byteLength(m.body, "utf8") + 256; // the body's bytes, and room for the rest
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
