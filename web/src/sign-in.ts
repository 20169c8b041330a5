/**
 * Where tokens come from: a dev token from the gateway's /v1/dev/token (dev mode only), or one the
 * user pasted (in production an app's backend mints them). The user id is the token's `sub`.
 */
import { type TokenSource, unverifiedClaims } from "../../sdk/src/index.js";

export interface Credentials {
  userId: string;
  token: TokenSource;
  source: "dev" | "backend" | "pasted";
  /** Where a fetched token comes from again when it expires. */
  tokenUrl?: string;
  /** The token in use now, to remember for the next page load. */
  current(): string;
}

/** The gateway's HTTP base URL without a trailing slash, e.g. http://127.0.0.1:8080. */
export function normalizeServer(input: string): string {
  const url = new URL(input.trim() || location.origin);
  return url.origin;
}

/** What the server's /v1/connect tells a client (docs/protocol.md §1.1). */
export interface Discovery {
  /** The WebSocket URL to connect to. */
  url: string;
  /** The VAPID key to subscribe to Web Push with; undefined when the server has no Web Push. */
  webPushPublicKey: string | undefined;
}

/**
 * Asks the server's /v1/connect where to connect, or uses the conventional URL (and no Web Push)
 * if it cannot say.
 */
export async function discover(server: string): Promise<Discovery> {
  try {
    const res = await fetch(`${server}/v1/connect`);
    if (res.ok) {
      const body = (await res.json()) as { url: string; web_push_public_key?: unknown };
      const key = body.web_push_public_key;
      return { url: body.url, webPushPublicKey: typeof key === "string" && key !== "" ? key : undefined };
    }
  } catch {
    // fall through: another origin without CORS, or an older or proxied deployment
  }
  return { url: `${server.replace(/^http/, "ws")}/ws`, webPushPublicKey: undefined };
}

/** When a token with this `exp` claim expires, Unix ms (never, without one). */
const expiryOf = (exp: unknown): number => (typeof exp === "number" ? exp * 1000 : Number.POSITIVE_INFINITY);

/** When the token expires, Unix ms (never, without `exp`). */
export function expiresAtMs(token: string): number {
  return expiryOf(unverifiedClaims(token).exp);
}

/**
 * A token that will never do (malformed, without a user, expired), or a token URL that refused the
 * user (401, 403): unlike a server out of reach, a reason to forget a remembered session.
 */
export class TokenNotUsable extends Error {
  override name = "TokenNotUsable";
}

export function pastedToken(token: string): Credentials {
  const trimmed = token.trim();
  let claims: ReturnType<typeof unverifiedClaims>;
  try {
    claims = unverifiedClaims(trimmed);
  } catch (err) {
    throw new TokenNotUsable(err instanceof Error ? err.message : String(err));
  }
  const { sub, exp } = claims;
  if (typeof sub !== "string" || sub === "") throw new TokenNotUsable("the token has no user id (sub claim)");
  if (expiryOf(exp) <= Date.now()) throw new TokenNotUsable("the token has expired");
  return { userId: sub, token: trimmed, source: "pasted", current: () => trimmed };
}

/**
 * A token fetched from a URL: the gateway's /v1/dev/token in dev mode, or the app's own backend
 * (which knows its signed-in user from its cookie: the request carries credentials). Use the
 * remembered one while it is good (a reload while the server is down must still open), fetch one
 * otherwise (so a refusal shows on the sign-in form), and fetch again only when it is about to
 * expire, never on every reconnect (a server that is down would fill the console with failed
 * requests). The answer is JSON with a `token`.
 */
export async function fetchedToken(
  source: "dev" | "backend",
  tokenUrl: string,
  remembered?: string,
  onRenewed: (token: string) => void = () => {},
): Promise<Credentials> {
  const fresh = (t: string) => expiresAtMs(t) - Date.now() > 60_000;
  const fetchToken = async () => {
    const res = await fetch(tokenUrl, {
      credentials: source === "backend" ? "include" : "same-origin",
    }).catch((err: unknown) => {
      // The browser says only "Failed to fetch": the server is down, the address wrong, or the
      // page's policy (or the server's CORS) keeps the request from going out.
      throw new Error(
        `could not reach ${new URL(tokenUrl, location.href).origin} for a token (${err instanceof Error ? err.message : String(err)}): is the server running, and its address right?`,
      );
    });
    const body = (await res.json().catch(() => ({}))) as { token?: string; error?: string };
    if (!res.ok || !body.token) {
      const why = body.error ?? `no token from ${tokenUrl} (HTTP ${res.status})`;
      // Refused (not signed in there, or not allowed): for good. Any other failure may pass.
      throw res.status === 401 || res.status === 403 ? new TokenNotUsable(why) : new Error(why);
    }
    onRenewed(body.token);
    return body.token;
  };
  let token = remembered !== undefined && fresh(remembered) ? remembered : await fetchToken();
  const { userId } = pastedToken(token);
  return {
    userId,
    source,
    tokenUrl,
    current: () => token,
    token: async () => {
      if (!fresh(token)) token = await fetchToken();
      return token;
    },
  };
}

export function devTokenUrl(server: string, userId: string): string {
  return `${server}/v1/dev/token?user=${encodeURIComponent(userId)}`;
}
