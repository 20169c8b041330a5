import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../lib/config.js";
import { createLogger } from "../lib/log.js";
import { distributedOptions } from "./backends.js";

const use = { sequencer: false, appends: true, provision: false, role: "gateway" };
const log = createLogger();

describe("storage credentials from the configuration", () => {
  it("hands Kafka SASL/TLS and Cassandra credentials to the clients, reading the PEM files", () => {
    const dir = mkdtempSync(join(tmpdir(), "switchboard-tls-"));
    try {
      writeFileSync(join(dir, "ca.crt"), "CA PEM");
      writeFileSync(join(dir, "tls.crt"), "CERT PEM");
      writeFileSync(join(dir, "tls.key"), "KEY PEM");
      const config = loadConfig({
        SWITCHBOARD_KAFKA_TLS: "true",
        SWITCHBOARD_KAFKA_TLS_CA_FILE: join(dir, "ca.crt"),
        SWITCHBOARD_KAFKA_TLS_CERT_FILE: join(dir, "tls.crt"),
        SWITCHBOARD_KAFKA_TLS_KEY_FILE: join(dir, "tls.key"),
        SWITCHBOARD_KAFKA_SASL_MECHANISM: "scram-sha-512",
        SWITCHBOARD_KAFKA_SASL_USERNAME: "chat",
        SWITCHBOARD_KAFKA_SASL_PASSWORD: "s3cret",
        SWITCHBOARD_CASSANDRA_USERNAME: "cass",
        SWITCHBOARD_CASSANDRA_PASSWORD: "pw",
        SWITCHBOARD_CASSANDRA_TLS: "true",
        SWITCHBOARD_CASSANDRA_TLS_CA_FILE: join(dir, "ca.crt"),
      });
      const o = distributedOptions(config, log, use);
      expect(o.ssl).toEqual({ ca: ["CA PEM"], cert: "CERT PEM", key: "KEY PEM" });
      expect(o.sasl).toEqual({ mechanism: "scram-sha-512", username: "chat", password: "s3cret" });
      expect(o.cassandra.credentials).toEqual({ username: "cass", password: "pw" });
      expect(o.cassandra.ssl).toEqual({ ca: ["CA PEM"] });
      expect(o).toMatchObject({ sequencer: use.sequencer, appends: use.appends, provision: use.provision });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("connects plainly by default, and names the setting of a missing file or user", () => {
    const o = distributedOptions(loadConfig({}), log, use);
    expect(o.ssl).toBeUndefined();
    expect(o.sasl).toBeUndefined();
    expect(o.cassandra.credentials).toBeUndefined();
    expect(() =>
      distributedOptions(
        loadConfig({ SWITCHBOARD_KAFKA_TLS: "true", SWITCHBOARD_KAFKA_TLS_CA_FILE: "/nonexistent/ca.crt" }),
        log,
        use,
      ),
    ).toThrow(/kafka\.tlsCaFile: cannot read \/nonexistent\/ca\.crt/);
    expect(() =>
      distributedOptions(loadConfig({ SWITCHBOARD_KAFKA_SASL_MECHANISM: "plain" }), log, use),
    ).toThrow(/needs kafka\.saslUsername/);
  });
});
