/**
 * The embedded receipts: each member's delivered and read watermarks per conversation.
 */
import type { Database } from "lmdb";
import { KeyedMutex } from "../../lib/keyed-mutex.js";
import type { ReceiptKindName, ReceiptStore } from "../types.js";
import type { Guard, Key } from "./store.js";

export class EmbeddedReceipts implements ReceiptStore {
  private readonly mutex = new KeyedMutex();
  constructor(
    private readonly db: Database<number, Key>,
    private readonly guard: Guard,
  ) {}

  raise(conversationId: string, userId: string, kind: ReceiptKindName, seq: number) {
    const key: Key = [conversationId, userId, kind];
    return this.mutex.run(JSON.stringify(key), async () => {
      if ((this.db.get(key) ?? 0) >= seq) return false;
      await this.guard(() => this.db.put(key, seq));
      return true;
    });
  }

  async get(conversationId: string, userId: string, kind: ReceiptKindName) {
    return this.db.get([conversationId, userId, kind]) ?? 0;
  }

  async close(): Promise<void> {}
}
