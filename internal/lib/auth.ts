/**
 * Client authentication: JWTs signed with HS256 by a shared secret (auth.secretFile, or the dev secret
 * kept in the data dir), or by a key from a JWKS URL (keys cached per issuer and `kid` by jose's
 * remote key set). The subject (`sub`) is the user id: identities belong to the app, as in Centrifugo.
 */
import { createSecretKey, randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createRemoteJWKSet, type JWTPayload, jwtVerify, SignJWT } from "jose";
import { errors, SwitchboardError } from "./errors.js";
import { verifyHs256 } from "./hs256.js";

export const DEV_SECRET_FILE = "dev-jwt-secret";
export const USER_ID_CHARS_MAX = 128;
const USER_ID_PATTERN = /^[A-Za-z0-9._@:+-]{1,128}$/;

/** Reads the data dir's HS256 dev secret, creating it (mode 0600) on first use. */
export function devSecret(dataDir: string): Uint8Array {
  const path = join(dataDir, DEV_SECRET_FILE);
  if (!existsSync(path)) {
    mkdirSync(dataDir, { recursive: true });
    writeFileSync(path, randomBytes(32).toString("hex"), { flag: "wx", mode: 0o600 });
    chmodSync(path, 0o600);
  }
  return new TextEncoder().encode(readFileSync(path, "utf8").trim());
}

/** Reads auth.secretFile: it must exist and hold a secret (unlike the dev secret, it is never created). */
export function secretFromFile(path: string): Uint8Array {
  let text: string;
  try {
    text = readFileSync(path, "utf8").trim();
  } catch (err) {
    throw new Error(`auth.secretFile: cannot read ${path}: ${(err as Error).message}`);
  }
  if (text === "") throw new Error(`auth.secretFile: ${path} is empty`);
  return new TextEncoder().encode(text);
}

/** Whether `host` (http.host) is a loopback address: only this machine reaches a port bound there. */
export function isLoopbackHost(host: string): boolean {
  return host === "localhost" || host === "::1" || host.startsWith("127.");
}

/** What the start-up check of a gateway's client-token keys reads. */
export interface ClientKeySettings {
  dataDir: string;
  http: { host: string };
  auth: { jwksUrl: string; secretFile: string };
}

/**
 * Checks, before a gateway (role all or gateway) opens anything, what it will verify client tokens
 * with. A JWKS URL or auth.secretFile is a deliberate choice. Without either, tokens are checked
 * against the data dir's dev secret: fine on loopback (development); elsewhere a warning to log is
 * returned, and when that file does not exist yet the start is refused: the gateway would create a
 * random key that no token issuer holds, which is how a misspelled SWITCHBOARD_AUTH_JWKS_URL looks.
 * (Kubernetes Pods of a ChatCluster with `auth.secretRef` have the Secret mounted as that file.)
 */
export function checkClientKeys(config: ClientKeySettings): string | undefined {
  const { jwksUrl, secretFile } = config.auth;
  if (jwksUrl !== "") {
    if (!URL.canParse(jwksUrl)) throw new Error(`auth.jwksUrl ${JSON.stringify(jwksUrl)} is not a URL`);
    return undefined;
  }
  if (secretFile !== "") {
    secretFromFile(secretFile);
    return undefined;
  }
  const host = config.http.host;
  if (isLoopbackHost(host)) return undefined;
  const path = join(config.dataDir, DEV_SECRET_FILE);
  if (!existsSync(path))
    throw new Error(
      `refusing to serve clients on ${host} with a newly created dev secret (${path}): no auth.jwksUrl and no auth.secretFile is set, so client tokens would be checked against a random key no issuer holds. Set auth.jwksUrl (SWITCHBOARD_AUTH_JWKS_URL: check its spelling), or auth.secretFile (SWITCHBOARD_AUTH_SECRET_FILE) to the HS256 key your token issuer shares, or listen on loopback (http.host 127.0.0.1) for development`,
    );
  return `client tokens are verified with the dev secret ${path} (HS256) while serving on ${host}, which is not loopback: no auth.jwksUrl is set. If that key is intended, set auth.secretFile (SWITCHBOARD_AUTH_SECRET_FILE=${path}) to say so; otherwise set auth.jwksUrl (SWITCHBOARD_AUTH_JWKS_URL: check its spelling)`;
}

/** User ids the platform uses itself; no token may claim them. */
const RESERVED_USER_IDS = new Set(["system"]);

export function isValidUserId(id: string): boolean {
  return USER_ID_PATTERN.test(id) && !RESERVED_USER_IDS.has(id);
}

/** `id` if it is a valid user id; INVALID_USER_ID naming `field` otherwise (ids become storage keys). */
export function requireUserId(id: string, field = "user_id"): string {
  if (!isValidUserId(id)) throw errors.invalid("INVALID_USER_ID", `${field} is not a valid user id`);
  return id;
}

/** Signs a dev token for `userId` valid for `ttlSeconds`, with auth.secretFile's key when given. */
export async function signDevToken(
  dataDir: string,
  userId: string,
  ttlSeconds: number,
  secretFile?: string,
): Promise<string> {
  if (!isValidUserId(userId))
    throw new Error(`invalid user id ${JSON.stringify(userId)}: use 1-128 of A-Z a-z 0-9 . _ @ : + -`);
  return new SignJWT({})
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(userId)
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + ttlSeconds)
    .sign(secretFile ? secretFromFile(secretFile) : devSecret(dataDir));
}

export interface Identity {
  userId: string;
  /** Token expiry, Unix milliseconds (Infinity when the token has no exp). */
  expiresAtMs: number;
}

export interface VerifierOptions {
  dataDir: string;
  jwksUrl: string;
  /** auth.secretFile: the HS256 key when there is no JWKS URL; empty: the data dir's dev secret. */
  secretFile?: string | undefined;
  issuer: string;
  audience: string;
}

export type TokenVerifier = (token: string) => Promise<Identity>;

/** Builds the verifier once; it pins the algorithms so `alg: none` and HS/RS confusion fail. */
export function createVerifier(options: VerifierOptions): TokenVerifier {
  const checks = {
    ...(options.issuer ? { issuer: options.issuer } : {}),
    ...(options.audience ? { audience: options.audience } : {}),
  };
  const verify: (token: string) => Promise<JWTPayload> = options.jwksUrl
    ? (() => {
        const keys = createRemoteJWKSet(new URL(options.jwksUrl), {
          cacheMaxAge: 10 * 60_000,
          cooldownDuration: 30_000,
        });
        return async (token) => {
          try {
            return (
              await jwtVerify(token, keys, { ...checks, algorithms: ["RS256", "ES256", "EdDSA", "PS256"] })
            ).payload;
          } catch (err) {
            if (!isKeySetOutage(err)) throw err;
            throw errors.unavailable(
              "AUTH_UNAVAILABLE",
              "the key set at auth.jwksUrl could not be fetched to verify the token; try again",
              err,
            );
          }
        };
      })()
    : (() => {
        // Synchronous on node:crypto: jose's WebCrypto HMAC cost a connect more than the rest of
        // its authentication (hs256.ts).
        const key = options.secretFile ? secretFromFile(options.secretFile) : devSecret(options.dataDir);
        const secret = createSecretKey(Buffer.from(key));
        return async (token) => verifyHs256(token, secret, checks) as JWTPayload;
      })();
  return async (token) => {
    let payload: JWTPayload;
    try {
      payload = await verify(token);
    } catch (err) {
      if (err instanceof SwitchboardError) throw err;
      const code = (err as { code?: string }).code ?? "ERR_JWT_INVALID";
      const reason = code === "ERR_JWT_EXPIRED" ? "TOKEN_EXPIRED" : "INVALID_TOKEN";
      throw Object.assign(errors.unauthenticated(reason, `token rejected (${code})`), { cause: err });
    }
    const sub = payload.sub;
    if (typeof sub !== "string" || !isValidUserId(sub)) {
      throw errors.unauthenticated("INVALID_TOKEN", "token has no valid `sub` (user id)");
    }
    return {
      userId: sub,
      expiresAtMs: payload.exp === undefined ? Number.POSITIVE_INFINITY : payload.exp * 1000,
    };
  };
}

/**
 * Whether verifying failed because the key set could not be had, not because of the token: the JWKS
 * URL timed out, answered other than 200 or with something that is not a key set, or could not be
 * reached at all (a network error, which is not one of jose's). Such a token may be fine a moment later.
 */
function isKeySetOutage(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  if (code === "ERR_JWKS_TIMEOUT" || code === "ERR_JWKS_INVALID" || code === "ERR_JOSE_GENERIC") return true;
  return !(typeof code === "string" && code.startsWith("ERR_J"));
}
