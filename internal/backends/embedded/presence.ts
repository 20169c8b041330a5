/**
 * The embedded presence store: each user's last active time.
 */
import type { Database } from "lmdb";
import type { PresenceStore } from "../types.js";
import type { Guard, Key } from "./store.js";

export class EmbeddedPresence implements PresenceStore {
  constructor(
    private readonly db: Database<number, Key>,
    private readonly guard: Guard,
  ) {}
  async setLastActive(userId: string, atMs: number) {
    await this.guard(() => this.db.put(userId, atMs));
  }
  async lastActive(userIds: string[]) {
    const out = new Map<string, number>();
    for (const u of userIds) {
      const v = this.db.get(u);
      if (v !== undefined) out.set(u, v);
    }
    return out;
  }
  async close(): Promise<void> {}
}
