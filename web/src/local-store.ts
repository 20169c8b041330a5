/**
 * What the client keeps in the browser's localStorage, shared by every tab of the origin: the
 * signed-in session (so a reload or a second tab opens signed in, even while the server is down),
 * the outbox of messages not yet acknowledged (so a reload loses none of them: they are sent
 * again with the same client_msg_id, and the server stores each once), and where the user's inbox
 * and large groups were processed up to (the SDK's checkpoint).
 */
import type { Checkpoint } from "../../sdk/src/index.js";

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
  /** Whether a `storage` event's key (null: the whole storage cleared) may have changed the session. */
  changedBy: (key: string | null): boolean => key === null || key === SESSION_KEY,
};

/**
 * The unacknowledged messages of one user on one server, one localStorage item each: tabs write
 * their own items, never a list another tab may be rewriting at the same moment (a read-modify-write
 * of one list could drop a message another tab just added).
 */
export class Outbox {
  /** Where earlier versions kept the whole list, under one key. */
  private readonly listKey: string;
  private readonly prefix: string;

  constructor(server: string, userId: string) {
    this.listKey = `switchboard:outbox:${server}:${userId}`;
    // "|" is in neither a user id nor an origin: user alice's prefix is not the start of alice:x's.
    this.prefix = `${this.listKey}|`;
  }

  /** Every message, oldest written first. */
  entries(): OutboxEntry[] {
    this.takeInList();
    return this.keys()
      .map((key) => readJson<OutboxEntry>(key))
      .filter(isEntry)
      .sort((a, b) => a.createdAtMs - b.createdAtMs);
  }

  add(entry: OutboxEntry): void {
    localStorage.setItem(this.prefix + entry.clientMsgId, JSON.stringify(entry));
  }

  remove(clientMsgId: string): void {
    localStorage.removeItem(this.prefix + clientMsgId);
  }

  /** Forgets every message (the user signed out: their bodies do not stay on the device). */
  clear(): void {
    localStorage.removeItem(this.listKey);
    for (const key of this.keys()) localStorage.removeItem(key);
  }

  private keys(): string[] {
    const keys: string[] = [];
    for (let i = 0; i < localStorage.length; i++) {
      const key = localStorage.key(i);
      if (key?.startsWith(this.prefix)) keys.push(key);
    }
    return keys;
  }

  /** Moves a list an earlier version stored into items of their own. */
  private takeInList(): void {
    const list = readJson<unknown>(this.listKey);
    if (list === undefined) return;
    if (Array.isArray(list)) for (const e of list) if (isEntry(e)) this.add(e);
    localStorage.removeItem(this.listKey);
  }
}

function isEntry(e: unknown): e is OutboxEntry {
  if (typeof e !== "object" || e === null) return false;
  const { conversationId, clientMsgId, body, createdAtMs } = e as Partial<OutboxEntry>;
  return (
    typeof conversationId === "string" &&
    typeof clientMsgId === "string" &&
    typeof body === "string" &&
    typeof createdAtMs === "number"
  );
}

/**
 * The SDK's checkpoint of one user on one server: the inbox cursor (under the key earlier versions
 * kept it in), the newest seq seen per pull-model group, and the server's data set they belong to.
 * Every tab of the origin saves here, so each value only moves up: a tab behind another never takes
 * the stored one back. Within one data set, that is: positions of another data set (the server was
 * restored from a backup, and its positions start again lower) replace the stored ones.
 */
export class CheckpointStore {
  private readonly cursorKey: string;
  private readonly pullKey: string;
  private readonly dataSetKey: string;

  constructor(server: string, userId: string) {
    this.cursorKey = `switchboard:cursor:${server}:${userId}`;
    this.pullKey = `switchboard:pull:${server}:${userId}`;
    this.dataSetKey = `switchboard:data-set:${server}:${userId}`;
  }

  /** The stored checkpoint; undefined on a device new to this user (or a cursor that is not one). */
  load(): Checkpoint | undefined {
    const cursor = Number(localStorage.getItem(this.cursorKey) ?? Number.NaN);
    if (!Number.isSafeInteger(cursor) || cursor < 0) return undefined;
    const dataSet = localStorage.getItem(this.dataSetKey);
    return { cursor, pullPositions: this.pullPositions(), ...(dataSet ? { dataSet } : {}) };
  }

  /**
   * A device new to this user starts at `cursor` (the inbox head of data set `dataSet`, "" if the
   * server names none), unless another tab started it.
   */
  start(cursor: number, dataSet: string): void {
    if (this.load() !== undefined) return;
    localStorage.setItem(this.cursorKey, String(cursor));
    if (dataSet !== "") localStorage.setItem(this.dataSetKey, dataSet);
  }

  /** Saves what a tab processed, keeping what another tab saved further on (the highest of each). */
  save(checkpoint: Checkpoint): void {
    let stored = this.load();
    if (checkpoint.dataSet !== undefined && checkpoint.dataSet !== stored?.dataSet) {
      // Positions of another data set say nothing of these; a first data set named (by an older
      // server or version before) keeps them, as the SDK did.
      if (stored?.dataSet !== undefined) {
        localStorage.removeItem(this.pullKey);
        stored = undefined;
      }
      localStorage.setItem(this.dataSetKey, checkpoint.dataSet);
    }
    if (stored === undefined || checkpoint.cursor > stored.cursor)
      localStorage.setItem(this.cursorKey, String(checkpoint.cursor));
    const positions = stored?.pullPositions ?? {};
    let moved = false;
    for (const [id, seq] of Object.entries(checkpoint.pullPositions)) {
      if (seq > (positions[id] ?? -1)) {
        positions[id] = seq;
        moved = true;
      }
    }
    if (moved) localStorage.setItem(this.pullKey, JSON.stringify(positions));
  }

  private pullPositions(): Record<string, number> {
    const stored = readJson<Record<string, unknown>>(this.pullKey);
    const positions: Record<string, number> = {};
    if (typeof stored !== "object" || stored === null || Array.isArray(stored)) return positions;
    for (const [id, seq] of Object.entries(stored))
      if (typeof seq === "number" && Number.isSafeInteger(seq) && seq >= 0) positions[id] = seq;
    return positions;
  }
}
