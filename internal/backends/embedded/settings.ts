/**
 * The embedded notification settings: mutes by (user, conversation), do-not-disturb windows by user.
 */
import type { Database } from "lmdb";
import type { DoNotDisturb, MutedConversation, NotificationSettingsStore } from "../types.js";
import { type Guard, KEY_END, type Key } from "./store.js";

/** Mutes by (user, conversation) → end (0: until unmuted); do-not-disturb windows by user. */
export class EmbeddedSettings implements NotificationSettingsStore {
  constructor(
    private readonly mutes: Database<number, Key>,
    private readonly windows: Database<DoNotDisturb, Key>,
    private readonly guard: Guard,
  ) {}
  async mute(userId: string, mute: MutedConversation) {
    await this.guard(() => this.mutes.put([userId, mute.conversationId], mute.untilMs));
  }
  async unmute(userId: string, conversationId: string) {
    await this.guard(() => this.mutes.remove([userId, conversationId]));
  }
  async muted(userId: string, nowMs: number) {
    const out: MutedConversation[] = [];
    for (const { key, value } of this.mutes.getRange({ start: [userId, ""], end: [userId, KEY_END] }))
      if (value === 0 || value > nowMs)
        out.push({ conversationId: (key as [string, string])[1], untilMs: value });
    return out;
  }
  async isMuted(userId: string, conversationId: string, nowMs: number) {
    const until = this.mutes.get([userId, conversationId]);
    return until !== undefined && (until === 0 || until > nowMs);
  }
  async setDoNotDisturb(userId: string, dnd: DoNotDisturb | undefined) {
    await this.guard(() => (dnd ? this.windows.put(userId, dnd) : this.windows.remove(userId)));
  }
  async doNotDisturb(userId: string) {
    return this.windows.get(userId);
  }
  async close(): Promise<void> {}
}
