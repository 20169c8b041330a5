/** What the embedded stores share: their key type, the write guard, and key bounds. */

export type Key = string | number | Array<string | number>;
/** Every write goes through the backend's guard: the first failed commit poisons the backend. */
export type Guard = <T>(p: Promise<T>) => Promise<T>;
export const SEQ_MAX = Number.MAX_SAFE_INTEGER;
/** Sorts after every string second element (keys are UTF-8; U+10FFFF is the largest code point). */
export const KEY_END = "\u{10FFFF}\u{10FFFF}";
