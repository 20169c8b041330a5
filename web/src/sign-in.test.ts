import { afterEach, describe, expect, it, vi } from "vitest";
import { devTokenUrl, expiresAtMs, fetchedToken, pastedToken, TokenNotUsable } from "./sign-in.js";

/** An unsigned JWT with these claims: the client only reads claims, the server verifies. */
function jwt(claims: Record<string, unknown>): string {
  const part = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${part({ alg: "HS256" })}.${part(claims)}.signature`;
}

describe("sign-in tokens", () => {
  it("takes the user id from a pasted token's sub and refuses expired or malformed ones", () => {
    const inAnHour = Math.floor(Date.now() / 1000) + 3600;
    const credentials = pastedToken(`  ${jwt({ sub: "alice", exp: inAnHour })}\n`);
    expect(credentials.userId).toBe("alice");
    expect(credentials.source).toBe("pasted");
    expect(expiresAtMs(credentials.current())).toBe(inAnHour * 1000);
    expect(expiresAtMs(jwt({ sub: "alice" }))).toBe(Number.POSITIVE_INFINITY);
    expect(() => pastedToken(jwt({ sub: "alice", exp: 1 }))).toThrow("expired");
    expect(() => pastedToken(jwt({ exp: inAnHour }))).toThrow("no user id");
    expect(() => pastedToken("not a token")).toThrow("not a JWT");
    // Three parts, but not a payload of claims: said in the user's words, not atob's or JSON's.
    for (const token of ["a.b.c", `x.${btoa("[1]")}.y`, `x.${btoa("{oops")}.y`, "a.b.c.d"])
      expect(() => pastedToken(token)).toThrow(/^that is not a JWT/);
    // Each of these will never do: a remembered session holding one is forgotten.
    for (const token of ["a.b.c", jwt({ sub: "alice", exp: 1 }), jwt({ exp: inAnHour })])
      expect(() => pastedToken(token)).toThrow(TokenNotUsable);
  });

  afterEach(() => {
    vi.unstubAllGlobals();
  });

  it("tells a token URL's refusal of the user (for good) from a failure that may pass", async () => {
    vi.stubGlobal("location", { href: "https://chat.example/" });
    const answer = (status: number) =>
      vi.stubGlobal("fetch", async () => new Response(JSON.stringify({}), { status }));
    answer(401);
    await expect(fetchedToken("backend", "https://chat.example/token")).rejects.toThrow(TokenNotUsable);
    answer(503);
    const passing = await fetchedToken("backend", "https://chat.example/token").catch((e: unknown) => e);
    expect(passing).toBeInstanceOf(Error);
    expect(passing).not.toBeInstanceOf(TokenNotUsable);
    vi.stubGlobal("fetch", async () => {
      throw new TypeError("Failed to fetch");
    });
    const unreachable = await fetchedToken("dev", "https://chat.example/token").catch((e: unknown) => e);
    expect(unreachable).not.toBeInstanceOf(TokenNotUsable);
    expect(String(unreachable)).toContain("could not reach https://chat.example for a token");
  });

  it("asks the gateway for a dev token of an escaped user id", () => {
    expect(devTokenUrl("http://127.0.0.1:8080", "a+b@x")).toBe(
      "http://127.0.0.1:8080/v1/dev/token?user=a%2Bb%40x",
    );
  });
});
