/**
 * The embedded log's hand-over before commit (ConsumeOptions.beforeCommit): what the backend
 * contract cannot see, because the distributed log has no such thing.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import type { BatchHandler, Closeable, LoggedMessage, MessageDraft } from "../types.js";
import { EmbeddedBackends } from "./index.js";

const opened: Array<{ backends: EmbeddedBackends; dir: string }> = [];

async function openBackends(): Promise<EmbeddedBackends> {
  const dir = await mkdtemp(join(tmpdir(), "switchboard-embedded-log-"));
  const backends = new EmbeddedBackends({ dataDir: dir, onFatal: (err) => console.error(err) });
  opened.push({ backends, dir });
  return backends;
}

afterEach(async () => {
  for (const { backends, dir } of opened.splice(0)) {
    await backends.close();
    await rm(dir, { recursive: true, force: true });
  }
});

let drafts = 0;
const draft = (conversationId: string): MessageDraft => {
  drafts++;
  return {
    conversationId,
    messageId: `m${drafts}`,
    sender: "alice",
    clientMsgId: `c${drafts}`,
    body: `body ${drafts}`,
    createdAtMs: 1_800_000_000_000 + drafts,
  };
};

/** A router in miniature: each message's inbox entry for bob, then (once durable) "delivered". */
function inboxWriter(backends: EmbeddedBackends) {
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

async function until(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !condition(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(condition()).toBe(true);
}

describe("embedded log: messages handed over before their commit", () => {
  it("a consumer waiting at the end gets the message before its append resolves, with a committed promise", async () => {
    const backends = await openBackends();
    const seenBeforeAck: boolean[] = [];
    let acked = false;
    const consumer: Closeable = await backends.log.consume(
      "early",
      async (batch) => {
        seenBeforeAck.push(!acked);
        for (const m of batch) {
          expect(m.committed).toBeInstanceOf(Promise);
          await m.committed;
          // Durable once committed resolves: readable through the store.
          expect((await backends.messages.getMany([m]))[0]?.messageId).toBe(m.messageId);
        }
      },
      { beforeCommit: true },
    );
    await new Promise((r) => setTimeout(r, 20)); // the consumer is waiting at the end
    await backends.log.append(draft("c1"));
    acked = true;
    await until(() => seenBeforeAck.length === 1);
    expect(seenBeforeAck).toEqual([true]);
    await consumer.close();
  });

  it("the handler's writes join the message's commit: one transaction per message instead of two", async () => {
    const transactionsPer = async (beforeCommit: boolean) => {
      const backends = await openBackends();
      const { delivered, handler } = inboxWriter(backends);
      const consumer = await backends.log.consume("router", handler, { beforeCommit });
      await new Promise((r) => setTimeout(r, 20));
      const before = backends.commits;
      for (let i = 1; i <= 20; i++) {
        await backends.log.append(draft("c1"));
        await until(() => delivered.length === i);
      }
      const used = backends.commits - before;
      await consumer.close();
      // Every message reached bob's inbox, in order, once.
      expect((await backends.inbox.read("bob", 0, 100)).map((e) => e.seq)).toEqual(
        Array.from({ length: 20 }, (_, i) => i + 1),
      );
      return used;
    };
    const early = await transactionsPer(true);
    const late = await transactionsPer(false);
    expect(early).toBeLessThanOrEqual(21); // 20, and perhaps the last position on its own
    expect(late).toBeGreaterThanOrEqual(40);
  });

  it("appends while the consumer is busy are handed over in order, each once, and all reach the inbox", async () => {
    const backends = await openBackends();
    const { delivered, handler } = inboxWriter(backends);
    const consumer = await backends.log.consume("router", handler, { beforeCommit: true });
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) => backends.log.append(draft(`c${i % 4}`))),
    );
    await until(() => delivered.length >= 200);
    expect(delivered.map((m) => m.messageId).sort()).toEqual(results.map((r) => r.message.messageId).sort());
    for (const c of ["c0", "c1", "c2", "c3"])
      expect(delivered.filter((m) => m.conversationId === c).map((m) => m.seq)).toEqual(
        Array.from({ length: 50 }, (_, i) => i + 1),
      );
    expect((await backends.inbox.read("bob", 0, 500)).length).toBe(200);
    await consumer.close();
  });

  it("a consumer closed and reopened resumes after what it handled (its position rode in the messages' commits)", async () => {
    const backends = await openBackends();
    const first = inboxWriter(backends);
    const a = await backends.log.consume("router", first.handler, { beforeCommit: true });
    await new Promise((r) => setTimeout(r, 20));
    for (let i = 1; i <= 5; i++) {
      await backends.log.append(draft("c1"));
      await until(() => first.delivered.length === i);
    }
    await a.close();
    await backends.log.append(draft("c1"));
    const second = inboxWriter(backends);
    const b = await backends.log.consume("router", second.handler, { beforeCommit: true });
    await until(() => second.delivered.length >= 1);
    await new Promise((r) => setTimeout(r, 50));
    expect(second.delivered.map((m) => m.seq)).toEqual([6]);
    await b.close();
  });
});
