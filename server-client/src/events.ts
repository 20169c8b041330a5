/**
 * A resuming consumer of ChatService.StreamEvents: hands each batch to the handler, acknowledges it
 * once the handler resolved, and when the stream fails (network, server restart, a handler error)
 * opens it again after a backoff — the subscription resumes after the last acknowledged batch, so a
 * batch whose handling did not finish comes again. Handlers must therefore be idempotent: key them by
 * (conversation_id, seq).
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { StreamEventsRequestSchema } from "../../gen/switchboard/api/v1/chat_pb.js";
import type { Message } from "../../gen/switchboard/common/v1/common_pb.js";
import { type ChatClient, reasonOf } from "./client.js";

export interface ConsumeOptions {
  /** The durable subscription (1-64 of a-z 0-9 . _ -). */
  subscription: string;
  /** Stops the consumer; `consumeEvents` then resolves. */
  signal?: AbortSignal;
  /** Backoff between attempts: doubling from `initialMs` up to `maxMs`, with full jitter. */
  backoff?: { initialMs?: number; maxMs?: number };
  /** Told of every failure the consumer recovers from (log it). */
  onError?: (err: unknown) => void;
}

type Request = MessageInitShape<typeof StreamEventsRequestSchema>;

/**
 * Consumes until `signal` aborts (resolves) or another consumer takes the subscription over (rejects
 * with its ConnectError, reason SUBSCRIPTION_TAKEN_OVER): two consumers of one subscription would
 * only take it from each other.
 */
export async function consumeEvents(
  client: ChatClient,
  options: ConsumeOptions,
  handler: (messages: Message[]) => Promise<void>,
): Promise<void> {
  const initialMs = options.backoff?.initialMs ?? 500;
  const maxMs = options.backoff?.maxMs ?? 30_000;
  let failures = 0;
  while (!options.signal?.aborted) {
    const requests = new Requests();
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    options.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      requests.push({ kind: { case: "subscribe", value: { subscription: options.subscription } } });
      for await (const response of client.streamEvents(requests, { signal: stop.signal, timeoutMs: 0 })) {
        if (response.cursor === "") continue; // the stream is open: nothing to handle or acknowledge
        const messages = response.events.flatMap((e) => (e.kind.case === "message" ? [e.kind.value] : []));
        await handler(messages);
        requests.push({ kind: { case: "ack", value: { cursor: response.cursor } } });
        failures = 0;
      }
    } catch (err) {
      if (options.signal?.aborted) return;
      if (
        err instanceof ConnectError &&
        err.code === Code.Aborted &&
        reasonOf(err) === "SUBSCRIPTION_TAKEN_OVER"
      )
        throw err;
      options.onError?.(err);
    } finally {
      options.signal?.removeEventListener("abort", onAbort);
      requests.end();
      stop.abort();
    }
    const delay = Math.random() * Math.min(maxMs, initialMs * 2 ** failures++);
    await sleep(delay, options.signal);
  }
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(t);
        resolve();
      },
      { once: true },
    );
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
