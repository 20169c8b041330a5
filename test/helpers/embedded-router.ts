/** Test helpers for the embedded backend's log: a router in miniature, and a bounded wait. */
import { expect } from "vitest";
import type { EmbeddedBackends } from "../../internal/backends/embedded/index.js";
import type { BatchHandler, LoggedMessage } from "../../internal/backends/types.js";

/** A router in miniature: each message's inbox entry for bob, then (once durable) "delivered". */
export function inboxWriter(backends: EmbeddedBackends) {
  const delivered: LoggedMessage[] = [];
  const handler: BatchHandler = async (batch) => {
    await backends.inbox.append(
      batch.map((m) => ({
        userId: "bob",
        conversationId: m.conversationId,
        seq: m.seq,
        messageId: m.messageId,
      })),
    );
    await Promise.all(batch.map((m) => m.committed));
    delivered.push(...batch);
  };
  return { delivered, handler };
}

/** Waits up to 5 s for `condition`, then asserts it. */
export async function until(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !condition(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(condition()).toBe(true);
}
