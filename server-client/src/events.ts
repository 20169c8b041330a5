/**
 * A resuming consumer of ChatService.StreamEvents: hands each batch to the handler, acknowledges it
 * once the handler resolved, and when the stream fails transiently (network, server restart, an ack
 * timeout) or the handler fails, opens it again after a backoff — the subscription resumes after the
 * last acknowledged batch, so a batch whose handling did not finish comes again. Handlers must
 * therefore be idempotent: key them by (conversation_id, seq).
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { StartPosition, StreamEventsRequestSchema } from "../../gen/switchboard/api/v1/chat_pb.js";
import type { Message } from "../../gen/switchboard/common/v1/common_pb.js";
import type { ChatClient } from "./client.js";

export interface ConsumeOptions {
  /** The durable subscription (1-64 of a-z 0-9 . _ -). */
  subscription: string;
  /** Where the subscription starts if it is new (default: the oldest message the log retains). */
  start?: StartPosition;
  /** Stops the consumer; `consumeEvents` then resolves. */
  signal?: AbortSignal;
  /** Backoff between attempts: doubling from `initialMs` up to `maxMs`, with full jitter. */
  backoff?: { initialMs?: number; maxMs?: number };
  /** Told of every failure the consumer recovers from (log it). */
  onError?: (err: unknown) => void;
}

type Request = MessageInitShape<typeof StreamEventsRequestSchema>;

/**
 * Stream failures that another attempt may get past. Every other code is the server's answer to this
 * client or subscription (a grant or credential revoked, a bad subscription name, the sequenced log
 * not published) and would come again on every attempt, so it ends the consumer rather than have it
 * retry unseen.
 */
const TRANSIENT = new Set([
  Code.Unavailable,
  Code.DeadlineExceeded, // e.g. ACK_TIMEOUT: a handler slower than the server waits
  Code.Canceled,
  Code.Internal,
  Code.Unknown,
  Code.ResourceExhausted, // e.g. TOO_MANY_STREAMS: room comes when another stream ends
  // A conflict another attempt may not meet: e.g. SUBSCRIPTION_TAKEN_OVER from a server of a release
  // before streams of one subscription shared it (consumers of one subscription are replicas that
  // must all keep running, not stop one another).
  Code.Aborted,
]);

/**
 * Consumes until `signal` aborts or the client is closed (resolves), or the stream fails with an
 * error another attempt would get again (rejects with its ConnectError): PERMISSION_DENIED (e.g.
 * EVENTS_NOT_ALLOWED), UNAUTHENTICATED, INVALID_ARGUMENT, FAILED_PRECONDITION (e.g.
 * SEQUENCED_NOT_PUBLISHED), NOT_FOUND, UNIMPLEMENTED. Handler errors are always retried. Several
 * consumers of one subscription (replicas of a service) share its events: each batch goes to one.
 */
export async function consumeEvents(
  client: ChatClient,
  options: ConsumeOptions,
  handler: (messages: Message[]) => Promise<void>,
): Promise<void> {
  const initialMs = options.backoff?.initialMs ?? 500;
  const maxMs = options.backoff?.maxMs ?? 30_000;
  // Closing the client stops the consumer like the caller's signal does: retrying would only fail.
  const stopped = options.signal ? AbortSignal.any([options.signal, client.closed]) : client.closed;
  const subscribe = {
    subscription: options.subscription,
    ...(options.start !== undefined && { start: options.start }),
  };
  let failures = 0;
  while (!stopped.aborted) {
    const requests = new Requests();
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    stopped.addEventListener("abort", onAbort, { once: true });
    let handlerFailed = false;
    try {
      requests.push({ kind: { case: "subscribe", value: subscribe } });
      for await (const response of client.streamEvents(requests, { signal: stop.signal, timeoutMs: 0 })) {
        if (response.cursor === "") continue; // the stream is open: nothing to handle or acknowledge
        const messages = response.events.flatMap((e) => (e.kind.case === "message" ? [e.kind.value] : []));
        try {
          await handler(messages);
        } catch (err) {
          handlerFailed = true; // whatever it is: the batch comes again on the next stream
          throw err;
        }
        requests.push({ kind: { case: "ack", value: { cursor: response.cursor } } });
        failures = 0;
      }
    } catch (err) {
      if (stopped.aborted) return;
      if (!handlerFailed && err instanceof ConnectError && !TRANSIENT.has(err.code)) throw err;
      options.onError?.(err);
    } finally {
      stopped.removeEventListener("abort", onAbort);
      requests.end();
      stop.abort();
    }
    const delay = Math.random() * Math.min(maxMs, initialMs * 2 ** failures++);
    await sleep(delay, stopped);
  }
}

/** Waits `ms`, or less if `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(t);
      // Removed when the timer fires too: a consumer restarting for days would otherwise pile up a
      // listener per restart on a long-lived signal (MaxListenersExceededWarning, a leak).
      signal.removeEventListener("abort", done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/** The request side of one stream: the subscribe, then acks as batches are handled. */
class Requests implements AsyncIterable<Request> {
  private readonly queued: Request[] = [];
  private wake: (() => void) | undefined;
  private ended = false;

  push(r: Request): void {
    this.queued.push(r);
    this.wake?.();
  }

  end(): void {
    this.ended = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Request> {
    for (;;) {
      const next = this.queued.shift();
      if (next !== undefined) {
        yield next;
        continue;
      }
      if (this.ended) return;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
      this.wake = undefined;
    }
  }
}
