/**
 * Typing indicators. The server neither stores nor expires typing (docs/protocol.md §4), so both
 * ends keep time here: the typist renews "typing" while keys come and sends "stopped" after a pause
 * or with the message; a watcher forgets a typist who went quiet (a closed tab sends no "stopped").
 */

/** How often a typist renews "typing" while still typing. */
export const TYPING_RENEW_MS = 3_000;
/** A typist who pressed no key for this long has stopped. */
export const TYPING_IDLE_MS = 4_000;
/** A watcher shows "is typing" at most this long after the last renewal. */
export const TYPING_SHOWN_MS = 6_000;

type Timer = ReturnType<typeof setTimeout>;

/** The user's own typing in one conversation at a time. */
export class TypingSender {
  private conversationId: string | undefined;
  private lastSentAt = 0;
  private idleTimer: Timer | undefined;

  constructor(private readonly send: (conversationId: string, typing: boolean) => void) {}

  /** A key was pressed in the composer of this conversation. */
  keystroke(conversationId: string): void {
    if (this.conversationId !== conversationId) this.stop();
    const now = Date.now();
    if (this.conversationId === undefined || now - this.lastSentAt >= TYPING_RENEW_MS) {
      this.conversationId = conversationId;
      this.lastSentAt = now;
      this.send(conversationId, true);
    }
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => this.stop(), TYPING_IDLE_MS);
  }

  /** The message was sent, the composer emptied, or the user left the conversation. */
  stop(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    if (this.conversationId !== undefined) this.send(this.conversationId, false);
    this.conversationId = undefined;
    this.lastSentAt = 0;
  }
}

/** Who is typing where, as told by typing events, each entry expiring on its own. */
export class TypingWatcher {
  private readonly typists = new Map<string, Map<string, Timer>>();

  constructor(private readonly changed: (conversationId: string) => void) {}

  update(conversationId: string, userId: string, typing: boolean): void {
    const users = this.typists.get(conversationId) ?? new Map<string, Timer>();
    clearTimeout(users.get(userId));
    if (typing) {
      users.set(
        userId,
        setTimeout(() => this.update(conversationId, userId, false), TYPING_SHOWN_MS),
      );
    } else if (!users.delete(userId)) {
      return;
    }
    this.typists.set(conversationId, users);
    this.changed(conversationId);
  }

  /** A message from the typist arrived: whatever they typed has been sent. */
  messageFrom(conversationId: string, userId: string): void {
    this.update(conversationId, userId, false);
  }

  typing(conversationId: string): string[] {
    return [...(this.typists.get(conversationId)?.keys() ?? [])].sort();
  }
}

export function typingLine(users: string[]): string {
  if (users.length === 0) return "";
  if (users.length === 1) return `${users[0]} is typing…`;
  return `${users.slice(0, -1).join(", ")} and ${users.at(-1)} are typing…`;
}
