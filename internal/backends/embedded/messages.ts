/**
 * The embedded message store: messages by (conversation, seq), their history pages and lookups.
 */
import type { Database } from "lmdb";
import { assert } from "../../lib/errors.js";
import type { HistoryPage, HistoryQuery, MessageStore, StoredMessage } from "../types.js";
import { type Guard, type Key, SEQ_MAX } from "./store.js";

export class EmbeddedMessageStore implements MessageStore {
  constructor(
    private readonly messages: Database<StoredMessage, Key>,
    private readonly guard: Guard,
  ) {}

  async write(messages: StoredMessage[]): Promise<void> {
    await this.guard(() =>
      this.messages.batch(() => {
        for (const m of messages) {
          const existing = this.messages.get([m.conversationId, m.seq]);
          if (existing)
            assert(existing.messageId === m.messageId, `seq ${m.conversationId}/${m.seq} reassigned`);
          else this.messages.put([m.conversationId, m.seq], m);
        }
      }),
    );
  }

  async history(conversationId: string, query: HistoryQuery): Promise<HistoryPage> {
    const after = query.afterSeq ?? 0;
    const before = query.beforeSeq && query.beforeSeq > 0 ? query.beforeSeq : SEQ_MAX;
    const messages: StoredMessage[] = [];
    if (query.afterSeq) {
      for (const { value } of this.messages.getRange({
        start: [conversationId, after + 1],
        end: [conversationId, before],
        limit: query.limit + 1,
      })) {
        messages.push(value);
      }
      const hasMore = messages.length > query.limit;
      return { messages: messages.slice(0, query.limit), hasMore };
    }
    for (const { value } of this.messages.getRange({
      start: [conversationId, before - 1],
      end: [conversationId, after],
      reverse: true,
      limit: query.limit + 1,
    })) {
      messages.push(value);
    }
    const hasMore = messages.length > query.limit;
    return { messages: messages.slice(0, query.limit).reverse(), hasMore };
  }

  async lastSeq(conversationId: string): Promise<number> {
    for (const key of this.messages.getKeys({
      start: [conversationId, SEQ_MAX],
      end: [conversationId, 0],
      reverse: true,
      limit: 1,
    })) {
      return (key as [string, number])[1];
    }
    return 0;
  }

  async getMany(keys: Array<{ conversationId: string; seq: number }>): Promise<StoredMessage[]> {
    const out: StoredMessage[] = [];
    for (const k of keys) {
      const m = this.messages.get([k.conversationId, k.seq]);
      if (m) out.push(m);
    }
    return out;
  }

  async close(): Promise<void> {}
}
