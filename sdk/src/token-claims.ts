/**
 * A JWT's claims as its payload states them, not verified (the server verifies tokens): what a client
 * may read of its own token, such as who it names and when it expires. Throws when the token is not
 * three dot-separated parts, or its payload is not base64url JSON.
 */
export function unverifiedClaims(token: string): { sub?: unknown; exp?: unknown } {
  const payload = token.split(".")[1];
  if (!payload) throw new Error("that is not a JWT (three dot-separated parts)");
  const json = atob(payload.replace(/-/g, "+").replace(/_/g, "/"));
  return JSON.parse(json) as { sub?: unknown; exp?: unknown };
}
