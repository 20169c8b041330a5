/**
 * The sequencer's answers this process's drafts still wait for, by dedupe key (conversation, sender,
 * client_msg_id), also for a while after their sender was told SEQUENCE_TIMEOUT: such a draft is in
 * the log and will be sequenced, in its place, before any later draft of its conversation.
 *
 * A resend refused for permission (its sender removed, or the group made admins-only, since the first
 * transmission) is answered with the original's ack when the original is stored (`appended`). One
 * that overtakes its first transmission, still waiting for the sequencer, would find nothing stored
 * and be refused, though the first transmission is then stored and delivered to every member, the
 * sender's other devices too. Through the process that appended the first transmission (the same
 * connection, or another to the same gateway), the resend waits for that answer instead.
 */
import type { AppendResult } from "../types.js";
import { dedupeKeyOf } from "./sequencer.js";

/** How long a draft's answer is waited for after its sender was told SEQUENCE_TIMEOUT. */
export const LATE_ANSWER_KEPT_MS = 5 * 60_000;
/** Drafts whose answers are awaited at most (one process's in-flight sends and late ones). */
const AWAITED_MAX = 20_000;

/** One draft's place among the awaited answers. */
export interface AwaitedAnswer {
  /** The sequencer answered. */
  settle(result: AppendResult): void;
  /**
   * Its sender was told SEQUENCE_TIMEOUT: the answer stays awaited for LATE_ANSWER_KEPT_MS more.
   * False if it is no longer the one awaited for its key (a newer send took its place): then nobody
   * waits for it, and its caller lets its answer go.
   */
  late(): boolean;
  /** It never reached the log (refused, withdrawn, failed): no answer will come. */
  failed(): void;
}

interface Entry {
  answer: Promise<AppendResult>;
  /**
   * Called when a late entry goes without an answer: the draft's pending registration goes too (an
   * entry still within its deadline leaves that to its append, whose timer is still running).
   */
  abandon: () => void;
  /** Set once late: when it stops being awaited. */
  expiry?: NodeJS.Timeout;
}

/** The sequencer's dedupe key, within its conversation. */
export const resendKey = (conversationId: string, sender: string, clientMsgId: string): string =>
  `${conversationId}\u0000${dedupeKeyOf({ sender, clientMsgId })}`;

export class AwaitedAnswers {
  private readonly byKey = new Map<string, Entry>();

  /**
   * Registers a draft about to be appended. `abandon` is called if its answer stops being awaited
   * after its deadline, before it came (expired, or pushed out by newer drafts).
   */
  expect(key: string, abandon: () => void): AwaitedAnswer {
    let resolve!: (result: AppendResult) => void;
    const answer = new Promise<AppendResult>((r) => {
      resolve = r;
    });
    // A second send with the same key while the first waits: both are answered alike (the dedupe
    // rows), and the newer is the one a resend would be waiting for.
    this.drop(key);
    const entry: Entry = { answer, abandon };
    this.byKey.set(key, entry);
    if (this.byKey.size > AWAITED_MAX) this.drop(this.byKey.keys().next().value!);
    const mine = () => this.byKey.get(key) === entry;
    return {
      settle: (result) => {
        resolve(result);
        if (mine()) this.forget(key);
      },
      late: () => {
        if (!mine()) return false;
        entry.expiry = setTimeout(() => {
          if (mine()) this.drop(key);
        }, LATE_ANSWER_KEPT_MS);
        entry.expiry.unref();
        return true;
      },
      failed: () => {
        if (mine()) this.forget(key);
      },
    };
  }

  /** The answer a draft with this key still waits for, if one does. */
  get(key: string): Promise<AppendResult> | undefined {
    return this.byKey.get(key)?.answer;
  }

  get size(): number {
    return this.byKey.size;
  }

  private forget(key: string): void {
    const entry = this.byKey.get(key);
    if (entry?.expiry) clearTimeout(entry.expiry);
    this.byKey.delete(key);
  }

  private drop(key: string): void {
    const entry = this.byKey.get(key);
    if (!entry) return;
    const late = entry.expiry !== undefined;
    this.forget(key);
    if (late) entry.abandon();
  }
}
