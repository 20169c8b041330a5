import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SignJWT } from "jose";
import { afterEach, describe, expect, it, vi } from "vitest";
import {
  checkClientKeys,
  createVerifier,
  DEV_SECRET_FILE,
  devSecret,
  isLoopbackHost,
  parseIssuers,
  signDevToken,
} from "./auth.js";
import { loadConfig } from "./config.js";

/** An issuer's HS256 key: at least 32 bytes. */
const ISSUER_SECRET = "shared-secret-of-the-token-issuer-0123456789";
const NEXT_SECRET = "the-issuers-next-secret-after-a-rotation-0123456789";

const signWith = (secret: string, sub: string, claims: Record<string, unknown> = {}) =>
  new SignJWT(claims)
    .setProtectedHeader({ alg: "HS256" })
    .setSubject(sub)
    .setExpirationTime("1h")
    .sign(new TextEncoder().encode(secret));

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), "switchboard-auth-"));
  dirs.push(d);
  return d;
}

describe("the keys a gateway checks client tokens with, at start", () => {
  it("accepts the data dir's dev secret on loopback, creating it as before", () => {
    const dataDir = join(tempDir(), "data");
    for (const host of ["127.0.0.1", "localhost", "::1"])
      expect(checkClientKeys(loadConfig({}, { dataDir, "http.host": host })), host).toBeUndefined();
  });

  it("refuses a public address where it would create the dev secret: a misspelled JWKS variable looks like this", () => {
    const dataDir = join(tempDir(), "data");
    // SWITCHBOARD_AUTH_JWKSURL is no setting: the configuration falls back to the dev secret.
    const config = loadConfig(
      { SWITCHBOARD_AUTH_JWKSURL: "https://id.example.com/jwks", SWITCHBOARD_HTTP_HOST: "0.0.0.0" },
      { dataDir },
    );
    expect(() => checkClientKeys(config)).toThrow(
      /refusing to serve clients on 0\.0\.0\.0 with a newly created dev secret.*SWITCHBOARD_AUTH_JWKS_URL.*auth\.secretFile/,
    );
    expect(existsSync(join(dataDir, DEV_SECRET_FILE))).toBe(false);
  });

  it("warns on a public address with an existing dev secret (a mounted Secret), naming how to say it is intended", () => {
    const dataDir = tempDir();
    devSecret(dataDir);
    const warning = checkClientKeys(loadConfig({}, { dataDir, "http.host": "0.0.0.0" }));
    expect(warning).toMatch(
      /verified with the dev secret .*dev-jwt-secret \(HS256\) while serving on 0\.0\.0\.0/,
    );
    expect(warning).toMatch(/SWITCHBOARD_AUTH_SECRET_FILE=/);
  });

  it("takes a JWKS URL or auth.secretFile as intended on any address, checking them", () => {
    const dir = tempDir();
    const dataDir = join(dir, "data");
    const jwks = loadConfig(
      {},
      {
        dataDir,
        "http.host": "0.0.0.0",
        "auth.jwksUrl": "https://id.example.com/k",
        "auth.audience": "chat",
      },
    );
    expect(checkClientKeys(jwks)).toBeUndefined();
    // Without an audience, a token the issuer made for another app would do: said at start.
    expect(
      checkClientKeys(
        loadConfig({}, { dataDir, "http.host": "0.0.0.0", "auth.jwksUrl": "https://id.example.com/k" }),
      ),
    ).toMatch(/auth\.jwksUrl is set without auth\.audience.*another application.*SWITCHBOARD_AUTH_AUDIENCE/);
    expect(() =>
      checkClientKeys(loadConfig({}, { dataDir, "http.host": "0.0.0.0", "auth.jwksUrl": "id.example.com" })),
    ).toThrow(/auth\.jwksUrl "id\.example\.com" is not a URL/);
    const file = join(dir, "hs256");
    writeFileSync(file, `${ISSUER_SECRET}\n`);
    expect(
      checkClientKeys(loadConfig({}, { dataDir, "http.host": "0.0.0.0", "auth.secretFile": file })),
    ).toBe(undefined);
    // Both at once: one of them would be ignored.
    expect(() =>
      checkClientKeys(
        loadConfig(
          {},
          {
            dataDir,
            "auth.secretFile": file,
            "auth.jwksUrl": "https://id.example.com/k",
            "auth.audience": "a",
          },
        ),
      ),
    ).toThrow(/auth\.jwksUrl and auth\.secretFile are both set/);
    // A key shorter than the hash (32 bytes) can be guessed from any token: refused, naming it.
    writeFileSync(join(dir, "weak"), "hunter2\n");
    expect(() => checkClientKeys(loadConfig({}, { dataDir, "auth.secretFile": join(dir, "weak") }))).toThrow(
      /the key in .*weak has 7 bytes; an HS256 key needs at least 32/,
    );
    expect(() =>
      checkClientKeys(
        loadConfig({}, { dataDir, "http.host": "0.0.0.0", "auth.secretFile": join(dir, "nope") }),
      ),
    ).toThrow(/auth\.secretFile: cannot read/);
    writeFileSync(join(dir, "empty"), "\n");
    expect(() => checkClientKeys(loadConfig({}, { dataDir, "auth.secretFile": join(dir, "empty") }))).toThrow(
      /auth\.secretFile: .* is empty/,
    );
    // Nothing was created in the data dir.
    expect(existsSync(dataDir)).toBe(false);
  });
});

describe("auth.secretFile", () => {
  it("is the key tokens are verified with, instead of the dev secret", async () => {
    const dir = tempDir();
    const file = join(dir, "hs256");
    writeFileSync(file, `${ISSUER_SECRET}\n`);
    const verify = createVerifier({ dataDir: dir, jwksUrl: "", issuer: "", audience: "", secretFile: file });
    const token = await signWith(ISSUER_SECRET, "alice");
    expect((await verify(token)).userId).toBe("alice");
    // A token of the data dir's dev secret is not accepted then.
    await expect(verify(await signDevToken(dir, "mallory", 60))).rejects.toMatchObject({
      reason: "INVALID_TOKEN",
    });
  });
});

describe("auth.secretFile rotation", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it("takes a file of several keys, and a new version of the file within 5 s without a restart", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    const dir = tempDir();
    const file = join(dir, "hs256");
    writeFileSync(file, `${ISSUER_SECRET}\n`);
    const verify = createVerifier({ dataDir: dir, jwksUrl: "", issuer: "", audience: "", secretFile: file });
    const old = await signWith(ISSUER_SECRET, "alice");
    const next = await signWith(NEXT_SECRET, "bob");
    expect((await verify(old)).userId).toBe("alice");
    await expect(verify(next)).rejects.toMatchObject({ reason: "INVALID_TOKEN" });

    // The new key is added; the issuers move to it; the old key is removed.
    writeFileSync(file, `${ISSUER_SECRET}\n${NEXT_SECRET}\n`);
    vi.advanceTimersByTime(6_000);
    expect((await verify(next)).userId).toBe("bob");
    expect((await verify(old)).userId).toBe("alice");
    writeFileSync(file, `${NEXT_SECRET}\n`);
    vi.advanceTimersByTime(6_000);
    await expect(verify(old)).rejects.toMatchObject({ reason: "INVALID_TOKEN" });
    expect((await verify(next)).userId).toBe("bob");

    // A version with a weak key is not taken: the one before stays in force.
    writeFileSync(file, "short\n");
    vi.advanceTimersByTime(6_000);
    expect((await verify(next)).userId).toBe("bob");
  });

  it("keeps a file written before as one key: a base64 secret wrapped over lines verifies as it did", async () => {
    const dir = tempDir();
    const file = join(dir, "wrapped");
    // openssl rand -base64 96 writes two lines of 64 characters; tokens were signed with both lines.
    const wrapped = `${"A".repeat(64)}\n${"B".repeat(64)}`;
    writeFileSync(file, `${wrapped}\n`);
    const verify = createVerifier({ dataDir: dir, jwksUrl: "", issuer: "", audience: "", secretFile: file });
    expect((await verify(await signWith(wrapped, "alice"))).userId).toBe("alice");
    // A line too short to be a key of its own (openssl rand -base64 64: 64 and 24 characters): the
    // whole text is the only key, and a token of the first line alone is refused.
    const uneven = `${"C".repeat(64)}\n${"D".repeat(24)}`;
    writeFileSync(join(dir, "uneven"), uneven);
    const strict = createVerifier({
      dataDir: dir,
      jwksUrl: "",
      issuer: "",
      audience: "",
      secretFile: join(dir, "uneven"),
    });
    expect((await strict(await signWith(uneven, "bob"))).userId).toBe("bob");
    await expect(strict(await signWith("C".repeat(64), "mallory"))).rejects.toMatchObject({
      reason: "INVALID_TOKEN",
    });
  });

  it("is what switchboard token signs with: the file's first key", async () => {
    const dir = tempDir();
    const both = join(dir, "both");
    writeFileSync(both, `${NEXT_SECRET}\n${ISSUER_SECRET}\n`);
    const minted = await signDevToken(dir, "carol", 60, both);
    const verifierOf = (secret: string) => {
      const file = join(dir, `only-${secret.length}`);
      writeFileSync(file, secret);
      return createVerifier({ dataDir: dir, jwksUrl: "", issuer: "", audience: "", secretFile: file });
    };
    expect((await verifierOf(NEXT_SECRET)(minted)).userId).toBe("carol");
    await expect(verifierOf(ISSUER_SECRET)(minted)).rejects.toMatchObject({ reason: "INVALID_TOKEN" });
  });
});

describe("clock skew", () => {
  it("accepts a token auth.clockSkewSeconds before its nbf and after its exp, and ends it that long after exp", async () => {
    const dir = tempDir();
    const nowS = Math.floor(Date.now() / 1000);
    const strict = createVerifier({ dataDir: dir, jwksUrl: "", issuer: "", audience: "" });
    const lenient = createVerifier({
      dataDir: dir,
      jwksUrl: "",
      issuer: "",
      audience: "",
      clockSkewSeconds: 30,
    });
    const secret = new TextDecoder().decode(devSecret(dir));
    // Issued by a clock 10 s ahead of this one: nbf in the future.
    const early = await signWith(secret, "alice", { nbf: nowS + 10 });
    await expect(strict(early)).rejects.toMatchObject({ reason: "INVALID_TOKEN" });
    expect((await lenient(early)).userId).toBe("alice");
    // Expired 10 s ago by this clock.
    const late = await new SignJWT({})
      .setProtectedHeader({ alg: "HS256" })
      .setSubject("bob")
      .setExpirationTime(nowS - 10)
      .sign(new TextEncoder().encode(secret));
    await expect(strict(late)).rejects.toMatchObject({ reason: "TOKEN_EXPIRED" });
    expect(await lenient(late)).toEqual({ userId: "bob", expiresAtMs: (nowS - 10 + 30) * 1000 });
  });
});

describe("token size", () => {
  it("refuses a token over 8,192 characters before any key set is fetched", async () => {
    // A JWKS URL nothing answers: a fetch would end in AUTH_UNAVAILABLE.
    const verify = createVerifier({
      dataDir: tempDir(),
      jwksUrl: "http://127.0.0.1:9/jwks",
      issuer: "",
      audience: "",
    });
    const header = Buffer.from(JSON.stringify({ alg: "RS256", kid: "k" })).toString("base64url");
    const long = `${header}.${"e".repeat(9_000)}.sig`;
    await expect(verify(long)).rejects.toMatchObject({ reason: "INVALID_TOKEN" });
    const short = `${header}.${Buffer.from('{"sub":"a"}').toString("base64url")}.sig`;
    await expect(verify(short)).rejects.toMatchObject({ reason: "AUTH_UNAVAILABLE" });
  });
});

describe("isLoopbackHost", () => {
  it("is true for loopback addresses only, not for names that start like one", () => {
    for (const host of ["127.0.0.1", "127.1.2.3", "localhost", "::1"])
      expect(isLoopbackHost(host), host).toBe(true);
    for (const host of ["127.example.com", "0.0.0.0", "10.0.0.1", "example.com", "::"])
      expect(isLoopbackHost(host), host).toBe(false);
  });
});

describe("auth.issuers", () => {
  it("reads issuer=jwksUrl entries, split at the first =, refusing malformed and repeated issuers", () => {
    const issuers = parseIssuers([
      "https://a.example=https://a.example/jwks.json",
      "b=https://b.example/keys?tenant=b",
    ]);
    expect([...issuers].map(([iss, url]) => [iss, url.href])).toEqual([
      ["https://a.example", "https://a.example/jwks.json"],
      ["b", "https://b.example/keys?tenant=b"],
    ]);
    for (const bad of ["https://a.example", "=https://x/jwks", "a=not a url"])
      expect(() => parseIssuers([bad]), bad).toThrow(/is not issuer=jwksUrl/);
    expect(() => parseIssuers(["a=https://x/1", "a=https://x/2"])).toThrow(/the issuer a is listed twice/);
  });

  it("stands alone at start, and wants an audience", () => {
    const dataDir = join(tempDir(), "data");
    const base = { dataDir, "http.host": "0.0.0.0", "auth.issuers": "a=https://a/jwks,b=https://b/jwks" };
    expect(checkClientKeys(loadConfig({}, { ...base, "auth.audience": "chat" }))).toBeUndefined();
    expect(checkClientKeys(loadConfig({}, base))).toMatch(/auth\.issuers is set without auth\.audience/);
    for (const other of [{ "auth.jwksUrl": "https://c/jwks" }, { "auth.issuer": "a" }])
      expect(() => checkClientKeys(loadConfig({}, { ...base, "auth.audience": "chat", ...other }))).toThrow(
        /set it without auth\.jwksUrl, auth\.secretFile and auth\.issuer/,
      );
    expect(() => checkClientKeys(loadConfig({}, { ...base, "auth.issuers": "nonsense" }))).toThrow(
      /is not issuer=jwksUrl/,
    );
  });
});
