/**
 * A JWT's claims as its payload states them, not verified (the server verifies tokens): what a client
 * may read of its own token, such as who it names and when it expires. Throws when the token is not
 * three dot-separated parts, or its payload is not base64url JSON.
 */
export function unverifiedClaims(token: string): { sub?: unknown; exp?: unknown } {
  const parts = token.split(".");
  if (parts.length !== 3 || !parts[1]) throw new Error("that is not a JWT (three dot-separated parts)");
  let claims: unknown;
  try {
    claims = JSON.parse(atob(parts[1].replace(/-/g, "+").replace(/_/g, "/")));
  } catch {
    // atob's and JSON's own messages ("Failed to execute 'atob'…") tell the user nothing.
    throw new Error("that is not a JWT: its middle part is not base64url-encoded JSON");
  }
  if (typeof claims !== "object" || claims === null || Array.isArray(claims))
    throw new Error("that is not a JWT: its middle part is not a JSON object of claims");
  return claims as { sub?: unknown; exp?: unknown };
}
