import { createHmac, createSecretKey } from "node:crypto";
import { SignJWT, UnsecuredJWT } from "jose";
import { describe, expect, it } from "vitest";
import { JwtError, verifyHs256 } from "./hs256.js";

const SECRET = new TextEncoder().encode("0123456789abcdef0123456789abcdef");
const KEY = createSecretKey(Buffer.from(SECRET));
const NOW_S = 1_800_000_000;
const NOW_MS = NOW_S * 1000;

const sign = (claims: Record<string, unknown>, header: Record<string, unknown> = {}, secret = SECRET) =>
  new SignJWT(claims).setProtectedHeader({ alg: "HS256", typ: "JWT", ...header }).sign(secret);

const codeOf = (f: () => unknown): string => {
  try {
    f();
  } catch (err) {
    expect(err).toBeInstanceOf(JwtError);
    return (err as JwtError).code;
  }
  throw new Error("verified, expected a refusal");
};

describe("verifyHs256", () => {
  it("returns the claims of a token jose signed with the key", async () => {
    const token = await sign({ sub: "alice", exp: NOW_S + 60, iat: NOW_S, nbf: NOW_S, extra: [1] });
    expect(verifyHs256(token, KEY, {}, NOW_MS)).toEqual({
      sub: "alice",
      exp: NOW_S + 60,
      iat: NOW_S,
      nbf: NOW_S,
      extra: [1],
    });
  });

  it("refuses another key's signature, a changed claim and a cut signature", async () => {
    const other = await sign(
      { sub: "alice" },
      {},
      new TextEncoder().encode("another secret of enough length!!"),
    );
    expect(codeOf(() => verifyHs256(other, KEY, {}, NOW_MS))).toBe("ERR_JWS_SIGNATURE_VERIFICATION_FAILED");
    const [h, , s] = (await sign({ sub: "alice" })).split(".");
    const forged = `${h}.${Buffer.from(JSON.stringify({ sub: "mallory" })).toString("base64url")}.${s}`;
    expect(codeOf(() => verifyHs256(forged, KEY, {}, NOW_MS))).toBe("ERR_JWS_SIGNATURE_VERIFICATION_FAILED");
    const good = await sign({ sub: "alice" });
    expect(codeOf(() => verifyHs256(good.slice(0, -4), KEY, {}, NOW_MS))).toBe(
      "ERR_JWS_SIGNATURE_VERIFICATION_FAILED",
    );
  });

  it("refuses a signature spelled with other unused low bits (the same bytes, another string)", async () => {
    const good = await sign({ sub: "alice" });
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const last = alphabet[alphabet.indexOf(good.at(-1)!) ^ 1]!;
    const variant = `${good.slice(0, -1)}${last}`;
    expect(Buffer.from(variant.split(".")[2]!, "base64url")).toEqual(
      Buffer.from(good.split(".")[2]!, "base64url"),
    );
    expect(codeOf(() => verifyHs256(variant, KEY, {}, NOW_MS))).toBe("ERR_JWS_INVALID");
    expect(verifyHs256(good, KEY, {}, NOW_MS)).toEqual({ sub: "alice" });
  });

  it("refuses alg none, other algorithms and critical headers", async () => {
    const unsigned = new UnsecuredJWT({ sub: "alice" }).encode();
    expect(codeOf(() => verifyHs256(unsigned, KEY, {}, NOW_MS))).toBe("ERR_JOSE_ALG_NOT_ALLOWED");
    const hs512 = await new SignJWT({ sub: "alice" }).setProtectedHeader({ alg: "HS512" }).sign(SECRET);
    expect(codeOf(() => verifyHs256(hs512, KEY, {}, NOW_MS))).toBe("ERR_JOSE_ALG_NOT_ALLOWED");
    // An RS256 header over an HMAC made with the key's bytes (the HS/RS confusion) is refused by name.
    const confused = (await sign({ sub: "alice" })).replace(
      /^[^.]+/,
      Buffer.from('{"alg":"RS256"}').toString("base64url"),
    );
    expect(codeOf(() => verifyHs256(confused, KEY, {}, NOW_MS))).toBe("ERR_JOSE_ALG_NOT_ALLOWED");
    const crit = signRaw({ alg: "HS256", crit: ["exp"] }, { sub: "alice" });
    expect(codeOf(() => verifyHs256(crit, KEY, {}, NOW_MS))).toBe("ERR_JWS_INVALID");
    expect(verifyHs256(signRaw({ alg: "HS256" }, { sub: "alice" }), KEY, {}, NOW_MS).sub).toBe("alice");
  });

  it("refuses malformed tokens", () => {
    for (const token of ["", "garbage", "a.b", "a.b.c.d", "!!.e30.AAAA", `${"x".repeat(9000)}.e30.e30`])
      expect(codeOf(() => verifyHs256(token, KEY, {}, NOW_MS))).toBe("ERR_JWS_INVALID");
    const notJson = `${Buffer.from('{"alg":"HS256"}').toString("base64url")}.${Buffer.from("[1]").toString("base64url")}.`;
    expect(codeOf(() => verifyHs256(notJson, KEY, {}, NOW_MS))).toBe("ERR_JWS_SIGNATURE_VERIFICATION_FAILED");
    // Signed, but a claims set that is no JSON object, or not UTF-8 (RFC 7519 §7.2; jose refuses it).
    for (const body of [
      Buffer.from("[1]"),
      Buffer.from([0x7b, 0x22, 0x73, 0x22, 0x3a, 0x22, 0xff, 0x22, 0x7d]),
    ])
      expect(codeOf(() => verifyHs256(signBytes({ alg: "HS256" }, body), KEY, {}, NOW_MS))).toBe(
        "ERR_JWS_INVALID",
      );
    // 8,192 characters at most, before anything is decoded: the longest token of these claims that
    // fits is verified, one character more is refused.
    let x = "";
    while (tokenSync({ sub: "alice", x: `${x}y` }).length <= 8192) x += "y";
    const atLimit = tokenSync({ sub: "alice", x });
    const over = tokenSync({ sub: "alice", x: `${x}y` });
    expect(atLimit.length).toBeGreaterThan(8188);
    expect(verifyHs256(atLimit, KEY, {}, NOW_MS).sub).toBe("alice");
    expect(codeOf(() => verifyHs256(over, KEY, {}, NOW_MS))).toBe("ERR_JWS_INVALID");
  });

  it("accepts a token signed with any of several keys (a rotation), and no other", async () => {
    const next = createSecretKey(Buffer.from("the next key, of enough length, 0123456789"));
    const signedWithNext = await sign({ sub: "bob" }, {}, new Uint8Array(next.export()));
    expect(verifyHs256(signedWithNext, [KEY, next], {}, NOW_MS).sub).toBe("bob");
    expect(verifyHs256(tokenSync({ sub: "alice" }), [KEY, next], {}, NOW_MS).sub).toBe("alice");
    expect(codeOf(() => verifyHs256(signedWithNext, [KEY], {}, NOW_MS))).toBe(
      "ERR_JWS_SIGNATURE_VERIFICATION_FAILED",
    );
    expect(codeOf(() => verifyHs256(signedWithNext, [], {}, NOW_MS))).toBe(
      "ERR_JWS_SIGNATURE_VERIFICATION_FAILED",
    );
  });

  it("allows the clock tolerance on both sides: exp in the past and nbf in the future by that much", () => {
    const checks = { clockToleranceS: 5 };
    expect(verifyHs256(tokenSync({ exp: NOW_S - 4 }), KEY, checks, NOW_MS).exp).toBe(NOW_S - 4);
    expect(codeOf(() => verifyHs256(tokenSync({ exp: NOW_S - 5 }), KEY, checks, NOW_MS))).toBe(
      "ERR_JWT_EXPIRED",
    );
    expect(verifyHs256(tokenSync({ nbf: NOW_S + 5 }), KEY, checks, NOW_MS).nbf).toBe(NOW_S + 5);
    expect(codeOf(() => verifyHs256(tokenSync({ nbf: NOW_S + 6 }), KEY, checks, NOW_MS))).toBe(
      "ERR_JWT_CLAIM_VALIDATION_FAILED",
    );
  });

  it("checks exp, nbf and iat like jose: expired at exp, valid from nbf", async () => {
    expect(codeOf(() => verifyHs256(tokenSync({ exp: NOW_S }), KEY, {}, NOW_MS))).toBe("ERR_JWT_EXPIRED");
    expect(verifyHs256(tokenSync({ exp: NOW_S + 1 }), KEY, {}, NOW_MS).exp).toBe(NOW_S + 1);
    expect(codeOf(() => verifyHs256(tokenSync({ nbf: NOW_S + 1 }), KEY, {}, NOW_MS))).toBe(
      "ERR_JWT_CLAIM_VALIDATION_FAILED",
    );
    expect(verifyHs256(tokenSync({ nbf: NOW_S }), KEY, {}, NOW_MS).nbf).toBe(NOW_S);
    for (const claim of ["exp", "nbf", "iat"])
      expect(codeOf(() => verifyHs256(tokenSync({ [claim]: "soon" }), KEY, {}, NOW_MS))).toBe(
        "ERR_JWT_CLAIM_VALIDATION_FAILED",
      );
  });

  it("checks iss and aud when asked", () => {
    const checks = { issuer: "https://id.example", audience: "switchboard" };
    const good = tokenSync({ iss: checks.issuer, aud: ["other", "switchboard"] });
    expect(verifyHs256(good, KEY, checks, NOW_MS).iss).toBe(checks.issuer);
    expect(verifyHs256(tokenSync({ iss: checks.issuer, aud: "switchboard" }), KEY, checks, NOW_MS).aud).toBe(
      "switchboard",
    );
    for (const claims of [
      { aud: "switchboard" },
      { iss: "https://evil.example", aud: "switchboard" },
      { iss: checks.issuer },
      { iss: checks.issuer, aud: ["other"] },
    ])
      expect(codeOf(() => verifyHs256(tokenSync(claims), KEY, checks, NOW_MS))).toBe(
        "ERR_JWT_CLAIM_VALIDATION_FAILED",
      );
  });
});

/** A token signed here with the key, for headers and claims jose's builder would refuse to write. */
function signRaw(header: Record<string, unknown>, claims: Record<string, unknown>): string {
  const h = Buffer.from(JSON.stringify(header)).toString("base64url");
  const body = Buffer.from(JSON.stringify(claims)).toString("base64url");
  return `${h}.${body}.${createHmac("sha256", KEY).update(`${h}.${body}`).digest("base64url")}`;
}

const tokenSync = (claims: Record<string, unknown>) =>
  signRaw({ alg: "HS256", typ: "JWT" }, { sub: "alice", ...claims });

/** A token over raw claim bytes (not necessarily JSON or UTF-8), signed here with the key. */
function signBytes(header: Record<string, unknown>, claims: Buffer): string {
  const h = Buffer.from(JSON.stringify(header)).toString("base64url");
  const body = claims.toString("base64url");
  return `${h}.${body}.${createHmac("sha256", KEY).update(`${h}.${body}`).digest("base64url")}`;
}
