/**
 * A random UUID v4 for clientMsgId. crypto.randomUUID exists in Node >= 19 and in browsers, but only
 * in secure contexts (https, localhost); getRandomValues works everywhere, so it is the fallback.
 */
export function randomId(): string {
  const c = globalThis.crypto;
  if (typeof c?.randomUUID === "function") return c.randomUUID();
  const b = new Uint8Array(16);
  c.getRandomValues(b);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Server rule for clientMsgId: 1-64 printable ASCII characters. */
export const CLIENT_MSG_ID_PATTERN = /^[\x21-\x7e]{1,64}$/;

/** Counts Unicode code points (the server's notion of "characters"), stopping once past `max`. */
export function exceedsChars(text: string, max: number): boolean {
  if (text.length <= max) return false;
  let count = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) i++;
    if (++count > max) return true;
  }
  return false;
}
