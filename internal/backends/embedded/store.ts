/** What the embedded stores share: their key type, the write guard, and key bounds. */

export type Key = string | number | Array<string | number>;
/**
 * Every write goes through the backend's guard: the first failed commit poisons the backend. The
 * write is a function, so that what it throws at once (a write of a new record shape stores the shape
 * then and there, and that can fail) counts as a failed commit too, and so that nothing is written
 * once a commit failed.
 */
export type Guard = <T>(write: () => Promise<T>) => Promise<T>;
export const SEQ_MAX = Number.MAX_SAFE_INTEGER;
/** Sorts after every string second element (keys are UTF-8; U+10FFFF is the largest code point). */
export const KEY_END = "\u{10FFFF}\u{10FFFF}";
