/**
 * Client authentication: JWTs signed with HS256 by a shared secret (auth.secretFile, or the dev secret
 * kept in the data dir), or by a key from a JWKS URL (keys cached per issuer and `kid` by jose's
 * remote key set). The subject (`sub`) is the user id: identities belong to the app, as in Centrifugo.
 */
import { createSecretKey, type KeyObject, randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { isIPv4 } from "node:net";
import { join } from "node:path";
import { createRemoteJWKSet, decodeJwt, type JWTPayload, jwtVerify, SignJWT } from "jose";
import { errors, SwitchboardError } from "./errors.js";
import { type Hs256Checks, TOKEN_CHARS_MAX, verifyHs256 } from "./hs256.js";
import { createLogger, type Logger } from "./log.js";
import { reloadingFile } from "./reloading-file.js";

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

/** Bytes an HS256 key must have at least: the size of the hash (RFC 7518 §3.2). */
export const SECRET_BYTES_MIN = 32;

/** The keys of auth.secretFile: tokens of any of them are accepted; `switchboard token` signs with `signing`. */
export interface SecretFileKeys {
  keys: Uint8Array[];
  signing: Uint8Array;
  /** Why the file's lines were not taken as keys of their own, when it has several. */
  note?: string;
}

/**
 * The keys of auth.secretFile's text. Its whole text, surrounding whitespace trimmed, is a key (as it
 * always was: a file written before keys were listed one per line, such as a base64 secret wrapped
 * at 64 characters, verifies as before). When it has several lines and each, trimmed, could be a
 * key, each is one too: a key rotates by adding a line, then removing the old one. Every key has at
 * least SECRET_BYTES_MIN bytes of UTF-8 (a short key can be guessed offline from any token a client
 * holds, and then signs tokens for every user); a file whose whole text is shorter is refused.
 */
export function parseSecrets(text: string, path: string): SecretFileKeys {
  const encode = (key: string) => new TextEncoder().encode(key);
  const whole = text.trim();
  if (whole === "") throw new Error(`auth.secretFile: ${path} is empty`);
  const wholeKey = encode(whole);
  if (wholeKey.length < SECRET_BYTES_MIN)
    throw new Error(
      `auth.secretFile: the key in ${path} has ${wholeKey.length} bytes; an HS256 key needs at least ${SECRET_BYTES_MIN} (e.g. 64 hex digits: openssl rand -hex 32)`,
    );
  const lines = whole
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line !== "")
    .map(encode);
  if (lines.length < 2) return { keys: [wholeKey], signing: wholeKey };
  const short = lines.findIndex((key) => key.length < SECRET_BYTES_MIN);
  if (short >= 0)
    return {
      keys: [wholeKey],
      signing: wholeKey,
      note: `line ${short + 1} of the ${lines.length} non-blank lines has ${lines[short]!.length} bytes, fewer than a key needs (${SECRET_BYTES_MIN}): the whole text is taken as one key, not each line`,
    };
  return { keys: [...lines, wholeKey], signing: lines[0]! };
}

/** Reads auth.secretFile: it must exist and hold keys (unlike the dev secret, it is never created). */
export function secretsFromFile(path: string): SecretFileKeys {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new Error(`auth.secretFile: cannot read ${path}: ${(err as Error).message}`);
  }
  return parseSecrets(text, path);
}

/**
 * auth.issuers: each trusted token issuer (`iss`) and the JWKS URL of its keys, from entries
 * `issuer=jwksUrl` (split at the first `=`).
 */
export function parseIssuers(entries: readonly string[]): Map<string, URL> {
  const issuers = new Map<string, URL>();
  for (const entry of entries) {
    const at = entry.indexOf("=");
    const issuer = entry.slice(0, Math.max(at, 0)).trim();
    const url = entry.slice(at + 1).trim();
    if (at <= 0 || issuer === "" || !URL.canParse(url))
      throw new Error(`auth.issuers: ${JSON.stringify(entry)} is not issuer=jwksUrl`);
    if (issuers.has(issuer)) throw new Error(`auth.issuers: the issuer ${issuer} is listed twice`);
    issuers.set(issuer, new URL(url));
  }
  return issuers;
}

/** Whether `host` (http.host) is a loopback address: only this machine reaches a port bound there. */
export function isLoopbackHost(host: string): boolean {
  return host === "localhost" || host === "::1" || (isIPv4(host) && host.startsWith("127."));
}

/** What the start-up check of a gateway's client-token keys reads. */
export interface ClientKeySettings {
  dataDir: string;
  http: { host: string };
  auth: { jwksUrl: string; secretFile: string; audience: string; issuer: string; issuers: readonly string[] };
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
  const { jwksUrl, secretFile, issuers } = config.auth;
  if (issuers.length > 0) {
    if (jwksUrl !== "" || secretFile !== "" || config.auth.issuer !== "")
      throw new Error(
        "auth.issuers names every trusted issuer and its JWKS: set it without auth.jwksUrl, auth.secretFile and auth.issuer",
      );
    parseIssuers(issuers);
    return config.auth.audience === "" ? noAudienceWarning("auth.issuers") : undefined;
  }
  if (jwksUrl !== "" && secretFile !== "")
    throw new Error(
      "auth.jwksUrl and auth.secretFile are both set: tokens are verified with one or the other (the key set's asymmetric keys, or the file's HS256 keys); set only the one your token issuer uses",
    );
  if (jwksUrl !== "") {
    if (!URL.canParse(jwksUrl)) throw new Error(`auth.jwksUrl ${JSON.stringify(jwksUrl)} is not a URL`);
    return config.auth.audience === "" ? noAudienceWarning("auth.jwksUrl") : undefined;
  }
  if (secretFile !== "") {
    secretsFromFile(secretFile);
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

/** The start-up warning for key sets (`setting`) trusted without an audience to check. */
function noAudienceWarning(setting: "auth.jwksUrl" | "auth.issuers"): string {
  return `${setting} is set without auth.audience: any token its issuer signed, also one issued to another application, is accepted here for its subject. Set auth.audience (SWITCHBOARD_AUTH_AUDIENCE) to the audience your issuer puts in this app's tokens${setting === "auth.jwksUrl" ? ", and auth.issuer" : ""}`;
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
    .sign(secretFile ? secretsFromFile(secretFile).signing : devSecret(dataDir));
}

export interface Identity {
  userId: string;
  /** Token expiry, Unix milliseconds (Infinity when the token has no exp). */
  expiresAtMs: number;
}

export interface VerifierOptions {
  dataDir: string;
  jwksUrl: string;
  /** auth.issuers: `issuer=jwksUrl` entries, instead of jwksUrl and issuer. */
  issuers?: readonly string[];
  /** auth.secretFile: the HS256 keys when there is no JWKS URL; empty: the data dir's dev secret. */
  secretFile?: string | undefined;
  issuer: string;
  audience: string;
  /** auth.clockSkewSeconds (0 when absent). */
  clockSkewSeconds?: number;
  /** Where a re-read of auth.secretFile is reported (a logger of its own when absent). */
  log?: Logger;
}

/** How often auth.secretFile is looked at for a new version. */
const SECRET_FILE_RECHECK_MS = 5_000;

export type TokenVerifier = (token: string) => Promise<Identity>;

/** The asymmetric algorithms a JWKS key may sign with (pinned: `alg: none` and HS/RS confusion fail). */
const KEY_SET_ALGORITHMS = ["RS256", "ES256", "EdDSA", "PS256"];

/** A JWKS URL's keys, fetched when needed and cached per `kid` (jose's remote key set). */
function keySet(url: URL): ReturnType<typeof createRemoteJWKSet> {
  return createRemoteJWKSet(url, { cacheMaxAge: 10 * 60_000, cooldownDuration: 30_000 });
}

/** `token`'s claims, verified with a key of `keys`; AUTH_UNAVAILABLE when the key set cannot be had. */
async function verifyWithKeySet(
  token: string,
  keys: ReturnType<typeof createRemoteJWKSet>,
  checks: ClaimChecks,
  clockToleranceS: number,
): Promise<JWTPayload> {
  try {
    return (
      await jwtVerify(token, keys, {
        ...checks,
        clockTolerance: clockToleranceS,
        algorithms: KEY_SET_ALGORITHMS,
      })
    ).payload;
  } catch (err) {
    if (!isKeySetOutage(err)) throw err;
    throw errors.unavailable(
      "AUTH_UNAVAILABLE",
      "the key set of the token's issuer (auth.jwksUrl or auth.issuers) could not be fetched to verify the token; try again",
      err,
    );
  }
}

type ClaimsVerifier = (token: string) => Promise<JWTPayload>;
type ClaimChecks = { issuer?: string; audience?: string };

/** Tokens of auth.jwksUrl's keys. */
function keySetVerifier(url: URL, checks: ClaimChecks, skewS: number): ClaimsVerifier {
  const keys = keySet(url);
  return (token) => verifyWithKeySet(token, keys, checks, skewS);
}

/**
 * Tokens of auth.issuers: each issuer's keys check only tokens that claim that issuer, with `iss`
 * required to be it, so a key of one issuer never validates a token claiming another.
 */
function issuersVerifier(issuers: Map<string, URL>, checks: ClaimChecks, skewS: number): ClaimsVerifier {
  const sets = new Map([...issuers].map(([iss, url]) => [iss, keySet(url)]));
  return async (token) => {
    const iss = decodeJwt(token).iss;
    const keys = iss === undefined ? undefined : sets.get(iss);
    if (iss === undefined || keys === undefined)
      throw Object.assign(new Error("the token's issuer is not in auth.issuers"), {
        code: "ERR_JWT_CLAIM_VALIDATION_FAILED",
      });
    return verifyWithKeySet(token, keys, { ...checks, issuer: iss }, skewS);
  };
}

/**
 * HS256 tokens of auth.secretFile's keys (read again when the file changes), or of the dev secret.
 * Synchronous on node:crypto: jose's WebCrypto HMAC cost a connect more than the rest of its
 * authentication (hs256.ts).
 */
function hs256Verifier(options: VerifierOptions, checks: Hs256Checks): ClaimsVerifier {
  const toKeys = (keys: Uint8Array[]) => keys.map((k) => createSecretKey(Buffer.from(k)));
  const file = options.secretFile;
  let keys: () => KeyObject[];
  if (file) {
    const log = options.log ?? createLogger();
    keys = reloadingFile(file, "auth.secretFile", SECRET_FILE_RECHECK_MS, log, (text) => {
      const parsed = parseSecrets(text, file);
      if (parsed.note) log.warn(`auth.secretFile: ${parsed.note}`, { file });
      return toKeys(parsed.keys);
    });
  } else {
    const dev = toKeys([devSecret(options.dataDir)]);
    keys = () => dev;
  }
  return async (token) => verifyHs256(token, keys(), checks) as JWTPayload;
}

/** Builds the verifier once; it pins the algorithms so `alg: none` and HS/RS confusion fail. */
export function createVerifier(options: VerifierOptions): TokenVerifier {
  const skewS = options.clockSkewSeconds ?? 0;
  const checks = {
    ...(options.issuer ? { issuer: options.issuer } : {}),
    ...(options.audience ? { audience: options.audience } : {}),
  };
  const issuers = parseIssuers(options.issuers ?? []);
  const verify =
    issuers.size > 0
      ? issuersVerifier(issuers, checks, skewS)
      : options.jwksUrl
        ? keySetVerifier(new URL(options.jwksUrl), checks, skewS)
        : hs256Verifier(options, { ...checks, clockToleranceS: skewS });
  return async (token) => {
    // Before either verifier decodes anything: jose parses and hashes whatever it is given.
    if (token.length > TOKEN_CHARS_MAX)
      throw errors.unauthenticated(
        "INVALID_TOKEN",
        `token rejected (longer than ${TOKEN_CHARS_MAX} characters)`,
      );
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
      expiresAtMs: payload.exp === undefined ? Number.POSITIVE_INFINITY : (payload.exp + skewS) * 1000,
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
