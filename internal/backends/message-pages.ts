/**
 * Pages of messages bounded in bytes as well as in count, read in chunks. A page of 1,000 messages
 * of 100,000 characters each would be ~300 MB if read whole and cut afterwards. Each chunk is sized
 * from what the previous ones cost, so a page of small messages takes a few reads; and never larger
 * than what the remaining budget plus OVERSHOOT_BYTES_MAX holds if every body in it were as long as
 * allowed, so small messages followed by large ones cannot make one chunk load hundreds of megabytes.
 * A page loads at most its budget plus OVERSHOOT_BYTES_MAX (and the first chunk's FIRST_CHUNK).
 */
import type { HistoryPage, HistoryQuery, MessageStore, StoredMessage } from "./types.js";

const FIRST_CHUNK = 8;
const OVERSHOOT_BYTES_MAX = 16 * 1024 * 1024;

/** A page's bounds: `bytesMax` of bodies (at least one message), bodies at most `bodyCharsMax` long. */
export interface PageBytes {
  bytesMax: number;
  bodyCharsMax: number;
}

/** What a body costs on the wire: its UTF-8 bytes (the budget a client was told is in those). */
export function bodyBytes(body: string): number {
  return Buffer.byteLength(body, "utf8");
}

/**
 * How many more messages to read: those the remaining budget fits at the average so far, plus one;
 * at most what it holds with the overshoot allowed if each were as long as a body may be.
 */
function nextChunk(bytes: number, count: number, bounds: PageBytes, left: number): number {
  const average = Math.max(1, bytes / count);
  const fits = Math.floor((bounds.bytesMax - bytes) / average) + 1;
  // The longest body's bytes: `bodyCharsMax` code points of at most 4 UTF-8 bytes each.
  const worst = Math.max(1, bounds.bodyCharsMax * 4);
  const safe = Math.floor((bounds.bytesMax - bytes + OVERSHOOT_BYTES_MAX) / worst);
  return Math.max(1, Math.min(left, fits, safe));
}

/**
 * `store.history` bounded to `bytesMax` of bodies (never empty while a message is there): the
 * messages nearest the cursor paged from (after `afterSeq` going forward, else below `beforeSeq` or
 * the newest), oldest first; `hasMore` when the limit or the budget cut the page.
 */
export async function historyWithinBytes(
  store: Pick<MessageStore, "history">,
  conversationId: string,
  query: HistoryQuery,
  bounds: PageBytes,
): Promise<HistoryPage> {
  const { bytesMax } = bounds;
  const forward = (query.afterSeq ?? 0) > 0;
  let { beforeSeq = 0, afterSeq = 0 } = query;
  const taken: StoredMessage[] = []; // nearest the cursor first
  const done = (hasMore: boolean): HistoryPage => ({
    messages: forward ? taken : taken.reverse(),
    hasMore,
  });
  let bytes = 0;
  let chunk = Math.min(query.limit, FIRST_CHUNK);
  for (;;) {
    const page = await store.history(conversationId, { beforeSeq, afterSeq, limit: chunk });
    const nearestFirst = forward ? page.messages : [...page.messages].reverse();
    for (const m of nearestFirst) {
      const cost = bodyBytes(m.body);
      if (taken.length > 0 && bytes + cost > bytesMax) return done(true);
      taken.push(m);
      bytes += cost;
    }
    if (!page.hasMore) return done(false);
    if (taken.length >= query.limit) return done(true);
    const farthest = taken.at(-1)!;
    if (forward) afterSeq = farthest.seq;
    else beforeSeq = farthest.seq;
    chunk = nextChunk(bytes, taken.length, bounds, query.limit - taken.length);
  }
}

/**
 * `store.getMany` bounded to `bytesMax` of bodies (never empty while a message is there), in the
 * keys' order, missing ones left out; `complete` unless the budget stopped it before the last key.
 */
export async function getManyWithinBytes(
  store: Pick<MessageStore, "getMany">,
  keys: Array<{ conversationId: string; seq: number }>,
  bounds: PageBytes,
): Promise<{ messages: StoredMessage[]; complete: boolean }> {
  const { bytesMax } = bounds;
  const messages: StoredMessage[] = [];
  let bytes = 0;
  let read = 0;
  let chunk = Math.min(keys.length, FIRST_CHUNK);
  while (read < keys.length) {
    const found = await store.getMany(keys.slice(read, read + chunk));
    read += chunk;
    for (const m of found) {
      const cost = bodyBytes(m.body);
      if (messages.length > 0 && bytes + cost > bytesMax) return { messages, complete: false };
      messages.push(m);
      bytes += cost;
    }
    chunk =
      messages.length === 0 ? FIRST_CHUNK : nextChunk(bytes, messages.length, bounds, keys.length - read);
  }
  return { messages, complete: true };
}
