import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../lib/config.js";
import { createLogger } from "../lib/log.js";
import { checkDistributedConfig, distributedOptions } from "./backends.js";

const use = { sequencer: false, appends: true, provision: false, role: "gateway" };
const pem = (label: string) => `-----BEGIN ${label}-----\nAAAA\n-----END ${label}-----\n`;
const CA_PEM = pem("CERTIFICATE");
const CERT_PEM = pem("CERTIFICATE");
const KEY_PEM = pem("PRIVATE KEY");
const log = createLogger();

describe("storage credentials from the configuration", () => {
  it("hands Kafka SASL/TLS and Cassandra credentials to the clients, reading the PEM files", () => {
    const dir = mkdtempSync(join(tmpdir(), "switchboard-tls-"));
    try {
      writeFileSync(join(dir, "ca.crt"), CA_PEM);
      writeFileSync(join(dir, "tls.crt"), CERT_PEM);
      writeFileSync(join(dir, "tls.key"), KEY_PEM);
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
      expect(o.ssl).toEqual({ ca: [CA_PEM], cert: CERT_PEM, key: KEY_PEM });
      expect(o.sasl).toEqual({ mechanism: "scram-sha-512", username: "chat", password: "s3cret" });
      expect(o.cassandra.credentials).toEqual({ username: "cass", password: "pw" });
      expect(o.cassandra.ssl).toMatchObject({ ca: [CA_PEM], rejectUnauthorized: true });
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

describe("the consumer-group member file", () => {
  it("is one per process when processes of a role share a data dir: named by the port each listens on", () => {
    const config = loadConfig({ SWITCHBOARD_DATA_DIR: "/var/lib/sb" });
    const router = { ...use, role: "router" };
    const first = distributedOptions(config, log, { ...router, httpPort: 17104 }).memberFile;
    const second = distributedOptions(config, log, { ...router, httpPort: 17106 }).memberFile;
    expect(first).toBe("/var/lib/sb/kafka-members-router-17104.json");
    expect(second).toBe("/var/lib/sb/kafka-members-router-17106.json");
    // The same process started again (same port) finds its file; a set kafka.memberFile is kept.
    expect(distributedOptions(config, log, { ...router, httpPort: 17104 }).memberFile).toBe(first);
    const set = loadConfig({ SWITCHBOARD_KAFKA_MEMBER_FILE: "/tmp/kafka-members.json" });
    expect(distributedOptions(set, log, { ...router, httpPort: 17104 }).memberFile).toBe(
      "/tmp/kafka-members.json",
    );
  });
});

describe("the distributed backend's configuration, checked before a role's storage retry loop", () => {
  it("names the setting of what no retry can heal: no brokers, no contact points, SASL without a user, a file that is no PEM", () => {
    expect(() => checkDistributedConfig(loadConfig({ SWITCHBOARD_KAFKA_BROKERS: "" }), log)).toThrow(
      /kafka\.brokers \(SWITCHBOARD_KAFKA_BROKERS\) is empty/,
    );
    expect(() => checkDistributedConfig(loadConfig({ SWITCHBOARD_KAFKA_BROKERS: " , " }), log)).toThrow(
      /kafka\.brokers/,
    );
    expect(() =>
      checkDistributedConfig(loadConfig({ SWITCHBOARD_CASSANDRA_CONTACT_POINTS: "" }), log),
    ).toThrow(/cassandra\.contactPoints \(SWITCHBOARD_CASSANDRA_CONTACT_POINTS\) is empty/);
    expect(() =>
      checkDistributedConfig(loadConfig({ SWITCHBOARD_KAFKA_SASL_MECHANISM: "scram-sha-256" }), log),
    ).toThrow(/kafka\.saslMechanism scram-sha-256 needs kafka\.saslUsername/);
    const dir = mkdtempSync(join(tmpdir(), "switchboard-tls-"));
    try {
      writeFileSync(join(dir, "ca.crt"), "not a certificate");
      expect(() =>
        checkDistributedConfig(
          loadConfig({
            SWITCHBOARD_CASSANDRA_TLS: "true",
            SWITCHBOARD_CASSANDRA_TLS_CA_FILE: join(dir, "ca.crt"),
          }),
          log,
        ),
      ).toThrow(/cassandra\.tlsCaFile: .*ca\.crt holds no PEM block/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    expect(() => checkDistributedConfig(loadConfig({}), log)).not.toThrow();
  });
});
