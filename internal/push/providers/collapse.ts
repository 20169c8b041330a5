/** Collapse keys on the wire (ADR 0008 §8): the conversation id, hashed where a provider limits length. */
import { createHash } from "node:crypto";

const hashed = (value: string) => createHash("sha256").update(value).digest("base64url");

/** apns-collapse-id: at most 64 bytes. */
export function apnsCollapseId(conversationId: string): string {
  return Buffer.byteLength(conversationId) <= 64 ? conversationId : hashed(conversationId);
}

/** Web Push Topic (RFC 8030 §5.4): at most 32 characters of the base64url alphabet. */
export function webPushTopic(conversationId: string): string {
  return hashed(conversationId).slice(0, 32);
}
