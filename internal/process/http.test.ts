import { describe, expect, it } from "vitest";
import { devModeWarning } from "../cli/server-commands.js";
import { loadConfig } from "../lib/config.js";
import {
  connectAnswer,
  connectionsCheckingIntervalMs,
  devTokensRefusal,
  forwardedProto,
  isHostHeader,
} from "./http.js";

describe("dev tokens", () => {
  it("are served only in dev mode, without a JWKS URL, on a loopback address", () => {
    expect(devTokensRefusal(loadConfig({}))).toMatch(/dev mode is off/);
    const dev = (env: Record<string, string>) => loadConfig({ SWITCHBOARD_AUTH_DEV_TOKENS: "true", ...env });
    for (const host of ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
      expect(devTokensRefusal(dev({ SWITCHBOARD_HTTP_HOST: host })), host).toBeUndefined();
    for (const host of ["0.0.0.0", "::", "10.0.0.5", "chat.example.com"])
      expect(devTokensRefusal(dev({ SWITCHBOARD_HTTP_HOST: host })), host).toMatch(/not a loopback address/);
    expect(devTokensRefusal(dev({ SWITCHBOARD_AUTH_JWKS_URL: "https://id.example.com/jwks" }))).toBe(
      "auth.jwksUrl is set",
    );
    // A deliberate HS256 key is no dev secret: dev tokens are not signed with it.
    expect(devTokensRefusal(dev({ SWITCHBOARD_AUTH_SECRET_FILE: "/etc/switchboard/hs256" }))).toBe(
      "auth.secretFile is set",
    );
  });

  it("make the start-up line shout, and say so when dev mode was asked for but refused", () => {
    expect(devModeWarning(loadConfig({}), 8080)).toBeUndefined();
    expect(devModeWarning(loadConfig({}, { "auth.devTokens": "true" }), 8080)).toMatch(
      /^DEV MODE: GET http:\/\/127\.0\.0\.1:8080\/v1\/dev\/token hands a token for ANY user/,
    );
    const open = loadConfig({}, { "auth.devTokens": "true", "http.host": "0.0.0.0" });
    expect(devModeWarning(open, 8080)).toMatch(/not served: http.host 0.0.0.0 is not a loopback address/);
  });
});

describe("the headers timeout", () => {
  it("is checked often enough to hold within a second (a tenth of it when shorter)", () => {
    expect(connectionsCheckingIntervalMs(10_000)).toBe(1_000);
    expect(connectionsCheckingIntervalMs(60_000)).toBe(1_000);
    expect(connectionsCheckingIntervalMs(2_000)).toBe(200);
    expect(connectionsCheckingIntervalMs(100)).toBe(50);
  });
});

describe("/v1/connect", () => {
  const gateway = { id: "gw-1", connections: 3 };

  it("names the gateway URL, from http.publicUrl or the request's Host", () => {
    expect(connectAnswer(loadConfig({}), "chat.example.com:8080", gateway)).toEqual({
      url: "ws://chat.example.com:8080/ws",
      gateway_id: "gw-1",
      connections: 3,
    });
    const pinned = loadConfig({ SWITCHBOARD_HTTP_PUBLIC_URL: "wss://chat.example.com/ws" });
    expect(connectAnswer(pinned, "10.0.0.5:8080", gateway).url).toBe("wss://chat.example.com/ws");
  });

  it("hands out wss behind a proxy that ended TLS (X-Forwarded-Proto or Forwarded), unless http.publicUrl says", () => {
    expect(connectAnswer(loadConfig({}), "chat.example.com", gateway, "https").url).toBe(
      "wss://chat.example.com/ws",
    );
    expect(connectAnswer(loadConfig({}), "chat.example.com", gateway, "http").url).toBe(
      "ws://chat.example.com/ws",
    );
    const pinned = loadConfig({ SWITCHBOARD_HTTP_PUBLIC_URL: "ws://internal:8080/ws" });
    expect(connectAnswer(pinned, "chat.example.com", gateway, "https").url).toBe("ws://internal:8080/ws");
    expect(forwardedProto({ "x-forwarded-proto": "HTTPS, http" })).toBe("https");
    expect(forwardedProto({ forwarded: 'for=192.0.2.60;proto="https";by=203.0.113.43, proto=http' })).toBe(
      "https",
    );
    expect(forwardedProto({ forwarded: "for=192.0.2.60;proto=http" })).toBe("http");
    expect(forwardedProto({ forwarded: "for=192.0.2.60" })).toBeUndefined();
    expect(forwardedProto({})).toBeUndefined();
  });

  it("takes a Host header for the URL only when it is a host and an optional port", () => {
    for (const host of [
      "chat.example.com",
      "chat.example.com:8443",
      "CHAT.example.com.",
      "10.0.0.5:8080",
      "[::1]:8080",
      "[2001:db8::7]",
      "my_host",
    ])
      expect(isHostHeader(host), host).toBe(true);
    for (const host of [
      "evil.com/path?x=",
      "a b",
      "user@host",
      "host:port",
      "host:123456",
      "a:99999",
      "[:]",
      "[1.2.3.4]",
      "-x.com",
      "a..b",
      "[::1",
      "é.example",
      "h/",
      "h#",
    ])
      expect(isHostHeader(host), host).toBe(false);
  });

  it("offers the VAPID public key only when Web Push is configured", () => {
    expect(connectAnswer(loadConfig({}), "h", gateway)).not.toHaveProperty("web_push_public_key");
    const key = "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM";
    const config = loadConfig({ SWITCHBOARD_PUSH_WEBPUSH_VAPID_PUBLIC_KEY: key });
    expect(connectAnswer(config, "h", gateway).web_push_public_key).toBe(key);
  });
});
