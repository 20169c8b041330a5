/**
 * PresenceStore over `presence` (partition user_id -> last_active_at).
 *
 * last_active_at changes, and plain last-write-wins would keep whichever write arrived last. So each
 * write carries USING TIMESTAMP = the activity time (in microseconds): Cassandra's conflict resolution
 * then keeps the latest activity, whatever order concurrent writes arrive in, and a retried write is
 * harmless (idempotent).
 */
import type { PresenceStore } from "../types.js";
import { type Session, toNumber, toText } from "./session.js";

export class CassandraPresenceStore implements PresenceStore {
  private readonly q: ReturnType<typeof statements>;

  constructor(private readonly s: Session) {
    this.q = statements(s);
  }

  async setLastActive(userId: string, atMs: number): Promise<void> {
    const at = Math.floor(atMs);
    await this.s.execute("presence: set last active", this.q.set, [userId, new Date(at), at * 1000], {
      idempotent: true,
    });
  }

  async lastActive(userIds: string[]): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    const users = [...new Set(userIds)];
    // One single-partition read per user (token-aware, parallel) rather than a multi-partition IN.
    await Promise.all(
      users.map(async (user) => {
        const result = await this.s.execute("presence: read last active", this.q.get, [user], {
          idempotent: true,
        });
        const row = result.first();
        const at = row?.get("last_active_at");
        if (row && at !== null && at !== undefined)
          out.set(toText(row.get("user_id"), "presence.user_id"), toNumber(at, "presence.last_active_at"));
      }),
    );
    return new Map(users.filter((u) => out.has(u)).map((u) => [u, out.get(u)!]));
  }

  async close(): Promise<void> {}
}

function statements(s: Session) {
  const t = s.table("presence");
  return {
    set: `INSERT INTO ${t} (user_id, last_active_at) VALUES (?, ?) USING TIMESTAMP ?`,
    get: `SELECT user_id, last_active_at FROM ${t} WHERE user_id = ?`,
  };
}
