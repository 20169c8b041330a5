/**
 * JWKS authentication: tokens signed by a key from the configured JWKS URL are accepted; HS/RS
 * confusion, unknown kids, wrong issuer/audience and expired tokens are not; a key set that cannot be
 * fetched is an outage (try again), not a bad token (stop).
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { expectCase, RawClient } from "../helpers/raw-client.js";
import { type ServerProcess, startServer } from "../helpers/server.js";

let jwks: Server;
let server: ServerProcess;
let sign: (
  claims: { sub?: string; iss?: string; aud?: string; exp?: string },
  kid?: string,
) => Promise<string>;
let publicJwk: Record<string, unknown>;

function upgradeStatus(token: string, url = server.url): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers: { authorization: `Bearer ${token}` } });
    ws.on("unexpected-response", (_req, res) => resolve(res.statusCode ?? 0));
    ws.on("open", () => {
      ws.close();
      resolve(101);
    });
    ws.on("error", reject);
  });
}

beforeAll(async () => {
  const { publicKey, privateKey } = await generateKeyPair("RS256");
  publicJwk = { ...(await exportJWK(publicKey)), kid: "key-1", alg: "RS256", use: "sig" };
  sign = (claims, kid = "key-1") =>
    new SignJWT({})
      .setProtectedHeader({ alg: "RS256", kid })
      .setSubject(claims.sub ?? "jwks-user")
      .setIssuer(claims.iss ?? "https://issuer.test")
      .setAudience(claims.aud ?? "switchboard")
      .setExpirationTime(claims.exp ?? "1h")
      .sign(privateKey);
  jwks = createServer((_req, res) =>
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ keys: [publicJwk] })),
  );
  await new Promise<void>((r) => jwks.listen(0, "127.0.0.1", () => r()));
  server = await startServer({
    // Dev mode asked for, so that the test below sees the JWKS URL (not dev mode being off) refuse it.
    args: ["--dev"],
    env: {
      SWITCHBOARD_AUTH_JWKS_URL: `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/jwks.json`,
      SWITCHBOARD_AUTH_ISSUER: "https://issuer.test",
      SWITCHBOARD_AUTH_AUDIENCE: "switchboard",
    },
  });
});

afterAll(async () => {
  await server.dispose();
  await new Promise<void>((r) => jwks.close(() => r()));
});

describe("JWKS authentication", () => {
  it("accepts a token signed by a JWKS key", async () => {
    expect(await upgradeStatus(await sign({}))).toBe(101);
  });

  it("does not hand out dev tokens when a JWKS URL is configured, even in dev mode", async () => {
    const res = await fetch(`${server.httpUrl}/v1/dev/token?user=alice`);
    expect(res.status).toBe(404);
    expect(((await res.json()) as { error: string }).error).toContain("auth.jwksUrl is set");
    expect(server.startLine.warning).toMatch(/dev tokens are not served: auth.jwksUrl is set/);
  });

  it("rejects unknown kids, wrong issuer or audience, expired tokens and HS256 confusion", async () => {
    expect(await upgradeStatus(await sign({}, "other-kid"))).toBe(401);
    expect(await upgradeStatus(await sign({ iss: "https://evil.test" }))).toBe(401);
    expect(await upgradeStatus(await sign({ aud: "someone-else" }))).toBe(401);
    expect(await upgradeStatus(await sign({ exp: "-1m" }))).toBe(401);
    // HS256 signed with the public key's modulus as the "secret": the classic confusion attack.
    const confused = await new SignJWT({})
      .setProtectedHeader({ alg: "HS256", kid: "key-1" })
      .setSubject("mallory")
      .setIssuer("https://issuer.test")
      .setAudience("switchboard")
      .setExpirationTime("1h")
      .sign(new TextEncoder().encode(String(publicJwk.n)));
    expect(await upgradeStatus(confused)).toBe(401);
  });

  it("treats an unreachable key set as an outage, not a bad token: 503 on the upgrade, 1011 on an auth frame", async () => {
    // A port nothing listens on: every fetch of the key set is refused.
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, "127.0.0.1", () => r()));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const outage = await startServer({
      env: {
        SWITCHBOARD_AUTH_JWKS_URL: `http://127.0.0.1:${port}/jwks.json`,
        SWITCHBOARD_AUTH_ISSUER: "https://issuer.test",
        SWITCHBOARD_AUTH_AUDIENCE: "switchboard",
      },
    });
    try {
      const token = await sign({});
      expect(await upgradeStatus(token, outage.url)).toBe(503);
      const c = await RawClient.connect(outage.url);
      const err = expectCase(await c.request({ case: "auth", value: { token } }), "error");
      expect(err.reason).toBe("AUTH_UNAVAILABLE");
      expect(err.retryAfterMs).toBe(1000);
      expect(await c.closed).toBe(1011);
    } finally {
      await outage.dispose();
    }
  });

  it("bounds header-authenticated upgrades waiting on a key set: auth.authTimeoutMs each, gateway.unauthenticatedMax at once", async () => {
    // A key set that takes every request and never answers.
    const held: Array<() => void> = [];
    const silent = createServer((_req, res) => held.push(() => res.destroy()));
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", () => r()));
    const slow = await startServer({
      env: {
        SWITCHBOARD_AUTH_JWKS_URL: `http://127.0.0.1:${(silent.address() as AddressInfo).port}/jwks.json`,
        SWITCHBOARD_AUTH_AUDIENCE: "switchboard",
        SWITCHBOARD_AUTH_AUTH_TIMEOUT_MS: "1500",
        SWITCHBOARD_GATEWAY_UNAUTHENTICATED_MAX: "1",
      },
    });
    try {
      const token = await sign({});
      const startedAt = Date.now();
      const first = upgradeStatus(token, slow.url);
      // While the first waits on the key set, a second header upgrade finds no slot...
      await new Promise((r) => setTimeout(r, 300));
      const secondAt = Date.now();
      expect(await upgradeStatus(token, slow.url)).toBe(503);
      expect(Date.now() - secondAt).toBeLessThan(1_000); // refused at once, not after waiting too
      // ...while a socket that will authenticate with a frame still gets one (counted apart).
      const framed = await RawClient.connect(slow.url);
      framed.close();
      // The first ends at the auth deadline (1.5 s), not at jose's own fetch timeout (5 s).
      expect(await first).toBe(503);
      const waited = Date.now() - startedAt;
      expect(waited).toBeGreaterThanOrEqual(1_400);
      expect(waited).toBeLessThan(4_000);
    } finally {
      for (const end of held) end();
      await slow.dispose();
      await new Promise<void>((r) => silent.close(() => r()));
    }
  });
});

describe("several issuers (auth.issuers)", () => {
  it("checks a token with the keys of the issuer it claims, and only those", async () => {
    // Two identity providers, each with a key set of its own.
    const providers = await Promise.all(
      ["https://tenant-a.test", "https://tenant-b.test"].map(async (issuer, i) => {
        const { publicKey, privateKey } = await generateKeyPair("ES256");
        const jwk = { ...(await exportJWK(publicKey)), kid: "k1", alg: "ES256", use: "sig" };
        const http = createServer((_req, res) =>
          res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ keys: [jwk] })),
        );
        await new Promise<void>((r) => http.listen(0, "127.0.0.1", () => r()));
        const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}/jwks-${i}.json`;
        return { issuer, http, url, privateKey };
      }),
    );
    const [a, b] = providers as [(typeof providers)[0], (typeof providers)[0]];
    const signed = (claimed: string, key: CryptoKey | Uint8Array | object, sub: string) =>
      new SignJWT({})
        .setProtectedHeader({ alg: "ES256", kid: "k1" })
        .setSubject(sub)
        .setIssuer(claimed)
        .setAudience("switchboard")
        .setExpirationTime("1h")
        .sign(key as CryptoKey);
    const multi = await startServer({
      env: {
        SWITCHBOARD_AUTH_ISSUERS: providers.map((p) => `${p.issuer}=${p.url}`).join(","),
        SWITCHBOARD_AUTH_AUDIENCE: "switchboard",
      },
    });
    try {
      expect(await upgradeStatus(await signed(a.issuer, a.privateKey, "ann"), multi.url)).toBe(101);
      expect(await upgradeStatus(await signed(b.issuer, b.privateKey, "bea"), multi.url)).toBe(101);
      // B's key (same kid) on a token that claims A: checked with A's keys only, refused.
      expect(await upgradeStatus(await signed(a.issuer, b.privateKey, "mallory"), multi.url)).toBe(401);
      // An issuer not listed, even with a listed provider's key.
      expect(await upgradeStatus(await signed("https://evil.test", a.privateKey, "eve"), multi.url)).toBe(
        401,
      );
      const c = await RawClient.connect(multi.url);
      const err = expectCase(
        await c.request({
          case: "auth",
          value: { token: await signed("https://evil.test", a.privateKey, "eve") },
        }),
        "error",
      );
      expect(err.reason).toBe("INVALID_TOKEN");
      expect(await c.closed).toBe(3500);
    } finally {
      await multi.dispose();
      for (const p of providers) await new Promise<void>((r) => p.http.close(() => r()));
    }
  });
});
