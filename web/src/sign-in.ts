/**
 * Where tokens come from: a dev token from the gateway's /v1/dev/token (dev mode only), or one the
 * user pasted (in production an app's backend mints them). The user id is the token's `sub`.
 */
import type { TokenSource } from "../../sdk/src/index.js";

export interface Credentials {
  userId: string;
  token: TokenSource;
}

/** The gateway's HTTP base URL without a trailing slash, e.g. http://127.0.0.1:8080. */
export function normalizeServer(input: string): string {
  const url = new URL(input.trim() || location.origin);
  return url.origin;
}

/** The WebSocket URL the platform tells clients to use, or the conventional one if it cannot say. */
export async function gatewayUrl(server: string): Promise<string> {
  try {
    const res = await fetch(`${server}/v1/connect`);
    if (res.ok) return ((await res.json()) as { url: string }).url;
  } catch {
    // fall through: an older or proxied deployment without discovery
  }
  return `${server.replace(/^http/, "ws")}/ws`;
}

function claims(token: string): { sub?: unknown; exp?: unknown } {
  const payload = token.split(".")[1];
  if (!payload) throw new Error("that is not a JWT (three dot-separated parts)");
  const json = atob(payload.replace(/-/g, "+").replace(/_/g, "/"));
  return JSON.parse(json) as { sub?: unknown; exp?: unknown };
}

export function pastedToken(token: string): Credentials {
  const trimmed = token.trim();
  const { sub } = claims(trimmed);
  if (typeof sub !== "string" || sub === "") throw new Error("the token has no user id (sub claim)");
  return { userId: sub, token: trimmed };
}

/**
 * Dev tokens last an hour: fetch one now (so a refusal shows on the sign-in form) and again only
 * when it is about to expire, never on every reconnect (a server that is down would fill the
 * console with failed requests).
 */
export async function devToken(server: string, userId: string): Promise<Credentials> {
  const fetchToken = async () => {
    const res = await fetch(`${server}/v1/dev/token?user=${encodeURIComponent(userId)}`);
    const body = (await res.json()) as { token?: string; error?: string };
    if (!res.ok || !body.token) throw new Error(body.error ?? `dev token refused (HTTP ${res.status})`);
    return body.token;
  };
  let token = await fetchToken();
  const expiresAt = (t: string) => Number(claims(t).exp ?? Number.POSITIVE_INFINITY) * 1000;
  return {
    userId,
    token: async () => {
      if (expiresAt(token) - Date.now() < 60_000) token = await fetchToken();
      return token;
    },
  };
}
