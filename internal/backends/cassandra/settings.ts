/**
 * NotificationSettingsStore over `muted_conversations` (partition user_id; clustering conversation_id)
 * and `do_not_disturb` (one row per user). Each value is replaced as a whole by the user's latest
 * choice (last write wins: what a settings screen means), so every write is idempotent. A mute with an
 * end is written with a TTL a minute past it, so expired mutes do not pile up.
 */
import type { DoNotDisturb, MutedConversation, NotificationSettingsStore } from "../types.js";
import { optionalNumber, type Session, toNumber, toText } from "./session.js";

const EXPIRED_MUTE_GRACE_SECONDS = 60;

export class CassandraSettingsStore implements NotificationSettingsStore {
  private readonly q: ReturnType<typeof statements>;

  constructor(private readonly s: Session) {
    this.q = statements(s);
  }

  async mute(userId: string, mute: MutedConversation): Promise<void> {
    const ttl =
      mute.untilMs === 0
        ? 0
        : Math.max(1, Math.ceil((mute.untilMs - Date.now()) / 1000) + EXPIRED_MUTE_GRACE_SECONDS);
    await this.s.execute(
      "muted_conversations: mute",
      this.q.mute,
      [userId, mute.conversationId, new Date(mute.untilMs), ttl],
      { idempotent: true },
    );
  }

  async unmute(userId: string, conversationId: string): Promise<void> {
    await this.s.execute("muted_conversations: unmute", this.q.unmute, [userId, conversationId], {
      idempotent: true,
    });
  }

  async muted(userId: string, nowMs: number): Promise<MutedConversation[]> {
    const rows = await this.s.all("muted_conversations: list", this.q.list, [userId]);
    return rows
      .map((row) => ({
        conversationId: toText(row.get("conversation_id"), "muted_conversations.conversation_id"),
        untilMs: toNumber(row.get("until"), "muted_conversations.until"),
      }))
      .filter((m) => inForce(m.untilMs, nowMs));
  }

  async isMuted(userId: string, conversationId: string, nowMs: number): Promise<boolean> {
    const result = await this.s.execute("muted_conversations: read", this.q.read, [userId, conversationId], {
      idempotent: true,
    });
    const row = result.first();
    return (
      row !== null &&
      row !== undefined &&
      inForce(toNumber(row.get("until"), "muted_conversations.until"), nowMs)
    );
  }

  async setDoNotDisturb(userId: string, dnd: DoNotDisturb | undefined): Promise<void> {
    if (dnd)
      await this.s.execute(
        "do_not_disturb: set",
        this.q.setDnd,
        [userId, dnd.startMinute, dnd.endMinute, dnd.timeZone],
        { idempotent: true },
      );
    else await this.s.execute("do_not_disturb: clear", this.q.clearDnd, [userId], { idempotent: true });
  }

  async doNotDisturb(userId: string): Promise<DoNotDisturb | undefined> {
    const result = await this.s.execute("do_not_disturb: read", this.q.readDnd, [userId], {
      idempotent: true,
    });
    const row = result.first();
    if (!row) return undefined;
    return {
      startMinute: optionalNumber(row.get("start_minute"), "do_not_disturb.start_minute") ?? 0,
      endMinute: optionalNumber(row.get("end_minute"), "do_not_disturb.end_minute") ?? 0,
      timeZone: toText(row.get("time_zone"), "do_not_disturb.time_zone"),
    };
  }

  async close(): Promise<void> {}
}

const inForce = (untilMs: number, nowMs: number) => untilMs === 0 || untilMs > nowMs;

function statements(s: Session) {
  const muted = s.table("muted_conversations");
  const dnd = s.table("do_not_disturb");
  return {
    mute: `INSERT INTO ${muted} (user_id, conversation_id, until) VALUES (?, ?, ?) USING TTL ?`,
    unmute: `DELETE FROM ${muted} WHERE user_id = ? AND conversation_id = ?`,
    list: `SELECT conversation_id, until FROM ${muted} WHERE user_id = ?`,
    read: `SELECT until FROM ${muted} WHERE user_id = ? AND conversation_id = ?`,
    setDnd: `INSERT INTO ${dnd} (user_id, start_minute, end_minute, time_zone) VALUES (?, ?, ?, ?)`,
    clearDnd: `DELETE FROM ${dnd} WHERE user_id = ?`,
    readDnd: `SELECT start_minute, end_minute, time_zone FROM ${dnd} WHERE user_id = ?`,
  };
}
