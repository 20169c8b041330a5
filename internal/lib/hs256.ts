/**
 * HS256 JWT verification for the data dir's dev secret (RFC 7515 compact serialization, RFC 7519
 * claims), synchronous on node:crypto.
 *
 * Why not jose here: its WebCrypto verify runs each HMAC as a job on the libuv thread pool and
 * resolves it through promises, which made token verification the largest single cost of an
 * authenticated connect (11 % of the server's busy time at 2,500 connects/s, issue 12). An HMAC over
 * a few hundred bytes takes about a microsecond inline. Keys from a JWKS URL (asymmetric algorithms)
 * still go through jose.
 *
 * The checks are jose's for this case: the header must name HS256 and no critical extension; the
 * signature is compared in constant time; `exp` and `nbf` must be numbers and hold now (within the
 * clock tolerance); `iat`, if present, a number; `iss` and `aud` must match when configured (`aud` may
 * be a string or a list); header and claims must be valid UTF-8 (RFC 7519 §7.2).
 */
import { createHmac, type KeyObject, timingSafeEqual } from "node:crypto";

/** What jose's errors carry in `code`, so callers map both the same way. */
export type JwtErrorCode =
  | "ERR_JWS_INVALID"
  | "ERR_JWS_SIGNATURE_VERIFICATION_FAILED"
  | "ERR_JWT_CLAIM_VALIDATION_FAILED"
  | "ERR_JWT_EXPIRED"
  | "ERR_JOSE_ALG_NOT_ALLOWED"
  | "ERR_JWT_INVALID";

export class JwtError extends Error {
  constructor(
    readonly code: JwtErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "JwtError";
  }
}

export interface Hs256Checks {
  issuer?: string;
  audience?: string;
  /** Seconds `exp` may lie in the past and `nbf` in the future (jose's clockTolerance). */
  clockToleranceS?: number;
}

/** A token's claims, as far as this platform reads them. */
export interface JwtClaims {
  sub?: unknown;
  exp?: number;
  [claim: string]: unknown;
}

/** Tokens longer than this are refused before any decoding (a header or claims set is small). */
export const TOKEN_CHARS_MAX = 8192;
const BASE64URL = /^[A-Za-z0-9_-]*$/;
const UTF8 = new TextDecoder("utf-8", { fatal: true });

function decodeJson(part: string, what: string): Record<string, unknown> {
  if (!BASE64URL.test(part)) throw new JwtError("ERR_JWS_INVALID", `${what} is not base64url`);
  let value: unknown;
  try {
    value = JSON.parse(UTF8.decode(Buffer.from(part, "base64url")));
  } catch {
    throw new JwtError("ERR_JWS_INVALID", `${what} is not JSON in UTF-8`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value))
    throw new JwtError("ERR_JWS_INVALID", `${what} is not a JSON object`);
  return value as Record<string, unknown>;
}

/** Verifies `token` against any of `keys` and returns its claims; throws JwtError. */
export function verifyHs256(
  token: string,
  keys: KeyObject | readonly KeyObject[],
  checks: Hs256Checks = {},
  nowMs = Date.now(),
): JwtClaims {
  if (token.length > TOKEN_CHARS_MAX) throw new JwtError("ERR_JWS_INVALID", "token too long");
  const parts = token.split(".");
  if (parts.length !== 3) throw new JwtError("ERR_JWS_INVALID", "not a compact JWS");
  const [headerPart, payloadPart, signaturePart] = parts as [string, string, string];
  const header = decodeJson(headerPart, "header");
  if (header.alg !== "HS256") throw new JwtError("ERR_JOSE_ALG_NOT_ALLOWED", "alg is not HS256");
  if (header.crit !== undefined) throw new JwtError("ERR_JWS_INVALID", "unsupported critical header");
  if (header.b64 !== undefined) throw new JwtError("ERR_JWS_INVALID", "unsupported b64 header");
  if (!BASE64URL.test(signaturePart)) throw new JwtError("ERR_JWS_INVALID", "signature is not base64url");
  const signature = Buffer.from(signaturePart, "base64url");
  const signed = `${headerPart}.${payloadPart}`;
  const signedWith = (key: KeyObject) => {
    const expected = createHmac("sha256", key).update(signed).digest();
    return signature.length === expected.length && timingSafeEqual(signature, expected);
  };
  if (!(Array.isArray(keys) ? keys : [keys]).some(signedWith))
    throw new JwtError("ERR_JWS_SIGNATURE_VERIFICATION_FAILED", "signature verification failed");
  // One spelling per signature: a last character differing only in its unused low bits decodes to
  // the same bytes, and such a variant of a valid token is refused, not accepted as that token.
  if (signature.toString("base64url") !== signaturePart)
    throw new JwtError("ERR_JWS_INVALID", "signature is not in canonical base64url");

  const claims = decodeJson(payloadPart, "claims set");
  const nowS = Math.floor(nowMs / 1000);
  for (const name of ["exp", "nbf", "iat"] as const)
    if (claims[name] !== undefined && (typeof claims[name] !== "number" || !Number.isFinite(claims[name])))
      throw new JwtError("ERR_JWT_CLAIM_VALIDATION_FAILED", `"${name}" claim must be a number`);
  const tolerance = checks.clockToleranceS ?? 0;
  if (typeof claims.nbf === "number" && claims.nbf > nowS + tolerance)
    throw new JwtError("ERR_JWT_CLAIM_VALIDATION_FAILED", `"nbf" claim timestamp check failed`);
  if (typeof claims.exp === "number" && claims.exp <= nowS - tolerance)
    throw new JwtError("ERR_JWT_EXPIRED", `"exp" claim timestamp check failed`);
  if (checks.issuer !== undefined && claims.iss !== checks.issuer)
    throw new JwtError("ERR_JWT_CLAIM_VALIDATION_FAILED", `unexpected "iss" claim value`);
  if (checks.audience !== undefined) {
    const aud = claims.aud;
    const ok =
      typeof aud === "string" ? aud === checks.audience : Array.isArray(aud) && aud.includes(checks.audience);
    if (!ok) throw new JwtError("ERR_JWT_CLAIM_VALIDATION_FAILED", `unexpected "aud" claim value`);
  }
  return claims as JwtClaims;
}
