import { describe, expect, it } from "vitest";
import { configDocs, envName, loadConfig } from "./config.js";

describe("config", () => {
  it("derives environment names from the tree", () => {
    expect(envName(["gateway", "frameBytesMax"])).toBe("SWITCHBOARD_GATEWAY_FRAME_BYTES_MAX");
    expect(envName(["dataDir"])).toBe("SWITCHBOARD_DATA_DIR");
  });

  it("applies defaults, then environment, then overrides", () => {
    const c = loadConfig(
      { SWITCHBOARD_HTTP_PORT: "9000", SWITCHBOARD_AUTH_ALLOWED_ORIGINS: "https://a, https://b" },
      { dataDir: "/x" },
    );
    expect(c.http.port).toBe(9000);
    expect(c.auth.allowedOrigins).toEqual(["https://a", "https://b"]);
    expect(c.dataDir).toBe("/x");
    expect(c.groups.membersMax).toBe(100_000);
    expect(c.gateway.bodyCharsMax).toBe(100_000);
    expect(c.presence).toEqual({ heartbeatIntervalMs: 5_000, offlineAfterMs: 30_000 });
  });

  it("names the offending variable on a bad value", () => {
    expect(() => loadConfig({ SWITCHBOARD_HTTP_PORT: "eighty" })).toThrow(/SWITCHBOARD_HTTP_PORT/);
    expect(() => loadConfig({}, { "http.port": "70000" })).toThrow(/--http.port/);
    expect(() => loadConfig({}, { "http.nope": "1" })).toThrow(/unknown configuration key/);
    expect(() => loadConfig({ SWITCHBOARD_LOG_LEVEL: "warning" })).toThrow(/SWITCHBOARD_LOG_LEVEL/);
    expect(loadConfig({ SWITCHBOARD_LOG_LEVEL: "debug" }).log.level).toBe("debug");
  });

  it("documents every setting", () => {
    const docs = configDocs();
    expect(docs).toContain("SWITCHBOARD_GATEWAY_FRAME_BYTES_MAX");
    expect(docs.split("\n").length).toBeGreaterThan(30);
  });
});
