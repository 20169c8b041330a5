/**
 * A fix for kafkajs's request queue, applied once per process before any Kafka client is made.
 *
 * kafkajs 2.2.4 (its last release) re-arms a timer on every broker connection once a millisecond for
 * as long as the connection lives: after each response `scheduleCheckPendingRequests` schedules a
 * check even when no request waits, with a delay of "throttled until" (-1) minus now, which Node
 * clamps to 1 ms, and each check schedules the next. Upstream: tulios/kafkajs issues #1556, #1604 and
 * #1704; fixes were proposed and never released. Measured on a 2-core machine: an idle role process
 * woke about 1,700 times a second; with this fix and rarer empty fetches (FETCH_WAIT_MS in
 * backends/kafka/consumers.ts), the eight processes of an idle cluster went from 0.27 to 0.11 cores
 * (bench/README.md, "An idle cluster").
 *
 * The replacement keeps the method's purpose — a request that waits (on the in-flight limit or on a
 * broker's throttling) is checked again when the throttle ends, or after 10 ms — and schedules
 * nothing when no request waits: a request that later has to wait is queued by `push`, which calls
 * this method again, and every response or timeout checks the queue anyway.
 */
import { createRequire } from "node:module";

/** The fields and methods of kafkajs's RequestQueue (src/network/requestQueue/index.js) used here. */
interface RequestQueueInternals {
  pending: unknown[];
  throttledUntil: number;
  throttleCheckTimeoutId: ReturnType<typeof setTimeout> | null;
  checkPendingRequests(): void;
  scheduleCheckPendingRequests(): void;
}

/** kafkajs's own delay for re-checking a queue held by its in-flight limit. */
const CHECK_PENDING_REQUESTS_MS = 10;

let applied = false;

/** The RequestQueue class of the kafkajs this process loads (internal: no public export). */
export function kafkajsRequestQueue(): {
  new (options: Record<string, unknown>): RequestQueueInternals;
  prototype: RequestQueueInternals;
} {
  const require = createRequire(import.meta.url);
  return require("kafkajs/src/network/requestQueue/index.js");
}

/** Replaces RequestQueue.scheduleCheckPendingRequests (idempotent). */
export function fixKafkajsRequestQueue(): void {
  if (applied) return;
  const proto = kafkajsRequestQueue().prototype;
  if (
    typeof proto.scheduleCheckPendingRequests !== "function" ||
    typeof proto.checkPendingRequests !== "function"
  )
    throw new Error(
      "kafkajs's RequestQueue has no scheduleCheckPendingRequests/checkPendingRequests: a new kafkajs? " +
        "Check whether internal/lib/kafkajs-request-queue.ts is still needed",
    );
  proto.scheduleCheckPendingRequests = function scheduleCheckPendingRequests(this: RequestQueueInternals) {
    if (this.throttleCheckTimeoutId !== null || this.pending.length === 0) return;
    const throttledFor = this.throttledUntil - Date.now();
    this.throttleCheckTimeoutId = setTimeout(
      () => {
        this.throttleCheckTimeoutId = null;
        this.checkPendingRequests();
      },
      throttledFor > 0 ? throttledFor : CHECK_PENDING_REQUESTS_MS,
    );
  };
  applied = true;
}
