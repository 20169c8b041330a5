/**
 * RFC 8291 message encryption for Web Push with the aes128gcm content coding (RFC 8188): one record,
 * keyed by an ephemeral ECDH P-256 share with the subscription's p256dh key and its auth secret.
 */
import { createCipheriv, createECDH, hkdfSync, randomBytes } from "node:crypto";

/** Record size announced in the header; the single record must fit in it. */
const RECORD_SIZE = 4096;
const TAG_BYTES = 16;
const LAST_RECORD_DELIMITER = 0x02;
/** Largest plaintext one record holds: the delimiter and the tag take the rest. */
export const WEB_PUSH_PLAINTEXT_BYTES_MAX = RECORD_SIZE - TAG_BYTES - 1;

const info = (label: string) => Buffer.from(`Content-Encoding: ${label}\0`, "latin1");
const hkdf = (ikm: Buffer, salt: Buffer, infoBytes: Buffer, length: number) =>
  Buffer.from(hkdfSync("sha256", ikm, salt, infoBytes, length));

export interface SubscriptionKeys {
  /** The user agent's public key, uncompressed P-256 point (65 bytes). */
  p256dh: Buffer;
  /** The 16-byte authentication secret. */
  auth: Buffer;
}

/** The request body: salt ‖ rs ‖ idlen ‖ keyid (the sender's public key) ‖ ciphertext. */
export function encryptWebPushPayload(plaintext: Buffer, keys: SubscriptionKeys): Buffer {
  if (plaintext.length > WEB_PUSH_PLAINTEXT_BYTES_MAX) {
    throw new Error(`payload of ${plaintext.length} bytes exceeds ${WEB_PUSH_PLAINTEXT_BYTES_MAX}`);
  }
  const sender = createECDH("prime256v1");
  const senderPublic = sender.generateKeys();
  const sharedSecret = sender.computeSecret(keys.p256dh);
  // RFC 8291 §3.4: the input keying material binds both public keys and the auth secret.
  const keyInfo = Buffer.concat([Buffer.from("WebPush: info\0", "latin1"), keys.p256dh, senderPublic]);
  const ikm = hkdf(sharedSecret, keys.auth, keyInfo, 32);
  const salt = randomBytes(16);
  const contentKey = hkdf(ikm, salt, info("aes128gcm"), 16);
  const nonce = hkdf(ikm, salt, info("nonce"), 12);
  const cipher = createCipheriv("aes-128-gcm", contentKey, nonce);
  const ciphertext = Buffer.concat([
    cipher.update(Buffer.concat([plaintext, Buffer.from([LAST_RECORD_DELIMITER])])),
    cipher.final(),
    cipher.getAuthTag(),
  ]);
  const header = Buffer.alloc(16 + 4 + 1);
  salt.copy(header, 0);
  header.writeUInt32BE(RECORD_SIZE, 16);
  header.writeUInt8(senderPublic.length, 20);
  return Buffer.concat([header, senderPublic, ciphertext]);
}
