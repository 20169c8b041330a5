/**
 * What the client keeps in the browser's localStorage, shared by every tab of the origin: the
 * signed-in session (so a reload or a second tab opens signed in, even while the server is down)
 * and the outbox of messages not yet acknowledged (so a reload loses none of them: they are sent
 * again with the same client_msg_id, and the server stores each once).
 */

export interface StoredSession {
  server: string;
  /** The WebSocket URL /v1/connect gave: a reload while the server is down needs no request. */
  gatewayUrl: string;
  userId: string;
  token: string;
  /** "dev", "backend": fetch a fresh token from tokenUrl when this one expires; "pasted": ask again. */
  source: "dev" | "backend" | "pasted";
  tokenUrl?: string;
  /**
   * The user confirmed signing in to this server, which is not the page's own (sign-in-form.ts):
   * without it, a session for another server is not opened again.
   */
  confirmed?: true;
}

export interface OutboxEntry {
  conversationId: string;
  clientMsgId: string;
  body: string;
  createdAtMs: number;
}

const SESSION_KEY = "switchboard:session";

function readJson<T>(key: string): T | undefined {
  try {
    const text = localStorage.getItem(key);
    return text === null ? undefined : (JSON.parse(text) as T);
  } catch {
    return undefined; // unreadable or corrupted: as if nothing was stored
  }
}

export const sessionStore = {
  load: (): StoredSession | undefined => readJson<StoredSession>(SESSION_KEY),
  save: (session: StoredSession): void => localStorage.setItem(SESSION_KEY, JSON.stringify(session)),
  clear: (): void => localStorage.removeItem(SESSION_KEY),
};

/** The unacknowledged messages of one user on one server. */
export class Outbox {
  private readonly key: string;

  constructor(server: string, userId: string) {
    this.key = `switchboard:outbox:${server}:${userId}`;
  }

  entries(): OutboxEntry[] {
    return readJson<OutboxEntry[]>(this.key) ?? [];
  }

  add(entry: OutboxEntry): void {
    this.write([...this.entries().filter((e) => e.clientMsgId !== entry.clientMsgId), entry]);
  }

  remove(clientMsgId: string): void {
    this.write(this.entries().filter((e) => e.clientMsgId !== clientMsgId));
  }

  private write(entries: OutboxEntry[]): void {
    if (entries.length === 0) localStorage.removeItem(this.key);
    else localStorage.setItem(this.key, JSON.stringify(entries));
  }
}
