import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SignJWT } from "jose";
import { afterEach, describe, expect, it } from "vitest";
import { checkClientKeys, createVerifier, DEV_SECRET_FILE, devSecret, signDevToken } from "./auth.js";
import { loadConfig } from "./config.js";

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
      { dataDir, "http.host": "0.0.0.0", "auth.jwksUrl": "https://id.example.com/k" },
    );
    expect(checkClientKeys(jwks)).toBeUndefined();
    expect(() =>
      checkClientKeys(loadConfig({}, { dataDir, "http.host": "0.0.0.0", "auth.jwksUrl": "id.example.com" })),
    ).toThrow(/auth\.jwksUrl "id\.example\.com" is not a URL/);
    const file = join(dir, "hs256");
    writeFileSync(file, "shared-secret-of-the-issuer\n");
    expect(
      checkClientKeys(loadConfig({}, { dataDir, "http.host": "0.0.0.0", "auth.secretFile": file })),
    ).toBe(undefined);
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
    writeFileSync(file, "shared-secret-of-the-issuer\n");
    const verify = createVerifier({ dataDir: dir, jwksUrl: "", issuer: "", audience: "", secretFile: file });
    const token = await new SignJWT({})
      .setProtectedHeader({ alg: "HS256" })
      .setSubject("alice")
      .setExpirationTime("1h")
      .sign(new TextEncoder().encode("shared-secret-of-the-issuer"));
    expect((await verify(token)).userId).toBe("alice");
    // A token of the data dir's dev secret is not accepted then.
    await expect(verify(await signDevToken(dir, "mallory", 60))).rejects.toMatchObject({
      reason: "INVALID_TOKEN",
    });
  });
});
