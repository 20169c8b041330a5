import { describe, expect, it } from "vitest";
import { configDocs, envName, loadConfig, unknownVariables } from "./config.js";

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

  it("reads integers as decimal digits only, and refuses an empty value", () => {
    for (const raw of ["", " ", "0x1F", "1e3", "1.0", "8080abc", "Infinity", "0b1", "99999999999999999999"])
      expect(() => loadConfig({ SWITCHBOARD_HTTP_PORT: raw }), JSON.stringify(raw)).toThrow(
        /invalid configuration SWITCHBOARD_HTTP_PORT=.*expected a decimal integer/,
      );
    expect(() => loadConfig({ SWITCHBOARD_HTTP_PORT: "" })).toThrow(/set but empty/);
    expect(() => loadConfig({}, { "http.port": "" })).toThrow(/--http.port/);
    expect(loadConfig({ SWITCHBOARD_HTTP_PORT: " 8123 " }).http.port).toBe(8123);
    expect(loadConfig({ SWITCHBOARD_GATEWAY_CONNECTIONS_MAX: "031" }).gateway.connectionsMax).toBe(31);
    expect(() => loadConfig({ SWITCHBOARD_TRACING_SAMPLE_RATIO: "" })).toThrow(/SAMPLE_RATIO/);
    expect(() => loadConfig({ SWITCHBOARD_TRACING_SAMPLE_RATIO: "0x1" })).toThrow(/SAMPLE_RATIO/);
    expect(loadConfig({ SWITCHBOARD_TRACING_SAMPLE_RATIO: "0.05" }).tracing.sampleRatio).toBe(0.05);
  });

  it("refuses a duration no timer can hold, and an auth timeout too short to authenticate in", () => {
    // setTimeout takes at most 2^31 - 1 ms; node runs a longer one after 1 ms.
    for (const env of [
      "SWITCHBOARD_AUTH_AUTH_TIMEOUT_MS",
      "SWITCHBOARD_GATEWAY_PING_INTERVAL_MS",
      "SWITCHBOARD_PRESENCE_HEARTBEAT_INTERVAL_MS",
      "SWITCHBOARD_SHUTDOWN_TIMEOUT_MS",
    ])
      expect(() => loadConfig({ [env]: String(2 ** 31) }), env).toThrow(
        new RegExp(`${env}="2147483648".*\\[\\d+, 2147483647\\]`),
      );
    expect(
      loadConfig({ SWITCHBOARD_GATEWAY_PING_INTERVAL_MS: String(2 ** 31 - 1) }).gateway.pingIntervalMs,
    ).toBe(2 ** 31 - 1);
    expect(() => loadConfig({ SWITCHBOARD_AUTH_AUTH_TIMEOUT_MS: "0" })).toThrow(/AUTH_AUTH_TIMEOUT_MS/);
    expect(() => loadConfig({ SWITCHBOARD_KAFKA_DEDUPE_WINDOW_HOURS: "175201" })).toThrow(
      /DEDUPE_WINDOW_HOURS/,
    );
  });

  it("keeps the slow-header bound on: http.headersTimeoutMs is at least 1000", () => {
    for (const raw of ["", "0", "999"])
      expect(() => loadConfig({ SWITCHBOARD_HTTP_HEADERS_TIMEOUT_MS: raw }), raw).toThrow(
        /SWITCHBOARD_HTTP_HEADERS_TIMEOUT_MS/,
      );
    expect(loadConfig({ SWITCHBOARD_HTTP_HEADERS_TIMEOUT_MS: "1000" }).http.headersTimeoutMs).toBe(1000);
  });

  it("refuses settings that do not work together, naming both", () => {
    const refused: Array<[Record<string, string>, RegExp]> = [
      [
        { SWITCHBOARD_GATEWAY_BODY_CHARS_MAX: "200000" },
        /gateway\.frameBytesMax \(SWITCHBOARD_GATEWAY_FRAME_BYTES_MAX\) and gateway\.bodyCharsMax \(SWITCHBOARD_GATEWAY_BODY_CHARS_MAX\).*2403072/,
      ],
      [{ SWITCHBOARD_GATEWAY_FRAME_BYTES_MAX: "1203071" }, /gateway\.frameBytesMax .* gateway\.bodyCharsMax/],
      [
        { SWITCHBOARD_PRESENCE_OFFLINE_AFTER_MS: "9999" },
        /presence\.offlineAfterMs .* and presence\.heartbeatIntervalMs .*must be at least twice/,
      ],
      [
        { SWITCHBOARD_KAFKA_TLS: "true", SWITCHBOARD_KAFKA_TLS_CERT_FILE: "/c.pem" },
        /kafka\.tlsCertFile .* and kafka\.tlsKeyFile/,
      ],
      [
        { SWITCHBOARD_KAFKA_TLS: "true", SWITCHBOARD_KAFKA_TLS_KEY_FILE: "/k.pem" },
        /kafka\.tlsKeyFile .* and kafka\.tlsCertFile/,
      ],
      [
        { SWITCHBOARD_KAFKA_TLS_CA_FILE: "/ca.pem" },
        /kafka\.tlsCaFile .* and kafka\.tls \(SWITCHBOARD_KAFKA_TLS\)/,
      ],
      [
        { SWITCHBOARD_CASSANDRA_TLS_CA_FILE: "/ca.pem" },
        /cassandra\.tlsCaFile .* and cassandra\.tls \(SWITCHBOARD_CASSANDRA_TLS\)/,
      ],
      [{ SWITCHBOARD_CASSANDRA_PASSWORD: "pw" }, /cassandra\.password .* and cassandra\.username/],
    ];
    for (const [env, message] of refused) expect(() => loadConfig(env), JSON.stringify(env)).toThrow(message);
    // The limits as documented, and what each pair allows.
    const ok = loadConfig({
      SWITCHBOARD_GATEWAY_BODY_CHARS_MAX: "200000",
      SWITCHBOARD_GATEWAY_FRAME_BYTES_MAX: "2403072",
      SWITCHBOARD_PRESENCE_HEARTBEAT_INTERVAL_MS: "500",
      SWITCHBOARD_PRESENCE_OFFLINE_AFTER_MS: "1000",
      SWITCHBOARD_KAFKA_TLS: "true",
      SWITCHBOARD_KAFKA_TLS_CA_FILE: "/ca.pem",
      SWITCHBOARD_KAFKA_TLS_CERT_FILE: "/c.pem",
      SWITCHBOARD_KAFKA_TLS_KEY_FILE: "/k.pem",
      SWITCHBOARD_CASSANDRA_TLS: "true",
      SWITCHBOARD_CASSANDRA_TLS_CA_FILE: "/ca.pem",
      SWITCHBOARD_CASSANDRA_USERNAME: "u",
      SWITCHBOARD_CASSANDRA_PASSWORD: "pw",
    });
    expect(ok.gateway.frameBytesMax).toBe(2_403_072);
    // The defaults hold together.
    expect(() => loadConfig({})).not.toThrow();
  });

  it("names unknown SWITCHBOARD_* variables, with the setting they resemble", () => {
    expect(
      unknownVariables({
        SWITCHBOARD_AUTH_JWKSURL: "https://id.example.com/jwks",
        SWITCHBOARD_HTTP_PROT: "80",
        SWITCHBOARD_COMPLETELY_DIFFERENT_THING: "x",
        SWITCHBOARD_HTTP_PORT: "80",
        PATH: "/bin",
      }),
    ).toEqual([
      { name: "SWITCHBOARD_AUTH_JWKSURL", didYouMean: "SWITCHBOARD_AUTH_JWKS_URL" },
      { name: "SWITCHBOARD_COMPLETELY_DIFFERENT_THING" },
      { name: "SWITCHBOARD_HTTP_PROT", didYouMean: "SWITCHBOARD_HTTP_PORT" },
    ]);
    // Not settings, and not typos: the client commands', the test harness's, Kubernetes' Service links.
    expect(
      unknownVariables({
        SWITCHBOARD_URL: "ws://x/ws",
        SWITCHBOARD_TOKEN: "t",
        SWITCHBOARD_TEST_BACKEND: "distributed",
        SWITCHBOARD_OPERATOR_SERVICE_HOST: "10.0.0.1",
        SWITCHBOARD_OPERATOR_SERVICE_PORT_METRICS: "8081",
        SWITCHBOARD_OPERATOR_PORT: "tcp://10.0.0.1:8081",
        SWITCHBOARD_OPERATOR_PORT_8081_TCP_PORT: "8081",
      }),
    ).toEqual([]);
    // A _PORT variable that is no Service link is still named.
    expect(unknownVariables({ SWITCHBOARD_GRPC_PORTS: "9090" })).toEqual([
      { name: "SWITCHBOARD_GRPC_PORTS", didYouMean: "SWITCHBOARD_GRPC_PORT" },
    ]);
  });

  it("documents every setting", () => {
    const docs = configDocs();
    expect(docs).toContain("SWITCHBOARD_GATEWAY_FRAME_BYTES_MAX");
    expect(docs.split("\n").length).toBeGreaterThan(30);
  });
});
