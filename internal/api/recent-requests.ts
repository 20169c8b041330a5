/**
 * Idempotency keys of requests that create something (CreateGroup), remembered by this process for a
 * bounded time and count: a retry with the same key by the same caller gets what the first attempt
 * made instead of a second one, and the same key with another request is refused. In memory only:
 * CreateGroup also derives the group's id from the key, so that a retry reaching another process, or
 * this one after a restart, finds the group in the store (there, a reused key is not recognised).
 */
import { dropOldest } from "../lib/drop-oldest.js";
import { errors } from "../lib/errors.js";

/** How long a key is remembered. */
export const REQUEST_KEYS_KEPT_MS = 60 * 60_000;
/** Keys remembered at most (the oldest are forgotten first). */
export const REQUEST_KEYS_MAX = 10_000;
const KEY_PATTERN = /^[\x21-\x7e]{1,64}$/;

interface Entry<T> {
  atMs: number;
  /** What the request asked for: the same key with another request is a mistake, not a retry. */
  fingerprint: string;
  result: Promise<T>;
}

/** The key, if it is one (1-64 printable ASCII characters); INVALID_IDEMPOTENCY_KEY otherwise. */
export function requireIdempotencyKey(key: string): string {
  if (!KEY_PATTERN.test(key))
    throw errors.invalid(
      "INVALID_IDEMPOTENCY_KEY",
      "idempotency_key must be 1-64 printable ASCII characters",
    );
  return key;
}

export class RecentRequests<T> {
  /** By caller and key, oldest first (an entry is never moved: insertion order is age order). */
  private readonly entries = new Map<string, Entry<T>>();

  constructor(
    private readonly keptMs = REQUEST_KEYS_KEPT_MS,
    private readonly max = REQUEST_KEYS_MAX,
    private readonly now: () => number = Date.now,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  /**
   * `create()`'s result, or, when `caller` sent `key` before (within the window) with the same
   * `fingerprint`, the first attempt's (`duplicate`; a concurrent retry waits for it). A failed
   * attempt is forgotten, so that a retry tries again, and so is one whose result `made` says this
   * attempt did not make (the store found what an attempt this process never saw made: that attempt's
   * request is unknown here, so no request may be refused as another one). An empty key remembers
   * nothing.
   */
  async run(
    caller: string,
    key: string,
    fingerprint: string,
    create: () => Promise<T>,
    made: (value: T) => boolean = () => true,
  ): Promise<{ value: T; duplicate: boolean }> {
    if (key === "") return { value: await create(), duplicate: false };
    requireIdempotencyKey(key);
    this.sweep();
    const id = JSON.stringify([caller, key]);
    const seen = this.entries.get(id);
    if (seen) {
      if (seen.fingerprint !== fingerprint)
        throw errors.invalid(
          "IDEMPOTENCY_KEY_REUSED",
          "idempotency_key was used for a different request: a retry must repeat the request unchanged",
        );
      return { value: await seen.result, duplicate: true };
    }
    const entry: Entry<T> = { atMs: this.now(), fingerprint, result: create() };
    this.entries.set(id, entry);
    while (this.entries.size > this.max) dropOldest(this.entries);
    try {
      const value = await entry.result;
      if (!made(value) && this.entries.get(id) === entry) this.entries.delete(id);
      return { value, duplicate: false };
    } catch (err) {
      if (this.entries.get(id) === entry) this.entries.delete(id);
      throw err;
    }
  }

  /** Forgets keys older than the window. */
  private sweep(): void {
    const oldest = this.now() - this.keptMs;
    for (const [id, entry] of this.entries) {
      if (entry.atMs > oldest) break;
      this.entries.delete(id);
    }
  }
}
