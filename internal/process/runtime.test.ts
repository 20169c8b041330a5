import { describe, expect, it } from "vitest";
import { loadConfig } from "../lib/config.js";
import { discardingLogger } from "../lib/log.js";
import { admitUnauthenticatedPort } from "./runtime.js";

const log = discardingLogger();
const dev = (overrides: Record<string, string> = {}) =>
  loadConfig({}, { "auth.devTokens": "true", ...overrides });

describe("a gRPC port without authentication", () => {
  it("opens in dev mode on loopback, or where explicitly allowed", () => {
    expect(() => admitUnauthenticatedPort(dev(), log)).not.toThrow();
    const allowed = loadConfig({}, { "grpc.allowUnauthenticated": "true", "http.host": "0.0.0.0" });
    expect(() => admitUnauthenticatedPort(allowed, log)).not.toThrow();
  });

  it("does not open where --dev was asked for but dev mode does not apply (the same decision as dev tokens)", () => {
    // `start --dev --host 0.0.0.0` with a JWKS URL opened it to anyone.
    expect(() =>
      admitUnauthenticatedPort(
        dev({ "http.host": "0.0.0.0", "auth.jwksUrl": "https://id.example.com/jwks" }),
        log,
      ),
    ).toThrow(
      /the gRPC port has no authentication.*dev mode was asked for but does not apply: auth\.jwksUrl is set/,
    );
    expect(() => admitUnauthenticatedPort(dev({ "http.host": "0.0.0.0" }), log)).toThrow(
      /does not apply: http\.host 0\.0\.0\.0 is not a loopback address/,
    );
    expect(() =>
      admitUnauthenticatedPort(dev({ "auth.jwksUrl": "https://id.example.com/jwks" }), log),
    ).toThrow(/does not apply: auth\.jwksUrl is set/);
    expect(() => admitUnauthenticatedPort(dev({ "auth.secretFile": "/etc/hs256" }), log)).toThrow(
      /does not apply: auth\.secretFile is set/,
    );
    expect(() => admitUnauthenticatedPort(loadConfig({}), log)).toThrow(
      /the gRPC port has no authentication/,
    );
  });
});
