/**
 * What `switchboard start` refuses, or warns about, before it serves anything: a gateway on a public
 * address that would check tokens against a key it just made up (a misspelled JWKS variable), an
 * unauthenticated gRPC port where `--dev` does not apply, unknown SWITCHBOARD_* variables, values
 * that are no decimal integer, settings that do not work together, and storage or push
 * configuration that no retry can heal (which the storage retry loop used to retry for ever).
 */
import { execFileSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { devSecret } from "../../internal/lib/auth.js";
import { RawClient } from "../helpers/raw-client.js";
import {
  cliPath,
  devToken,
  refusedStart,
  type ServerProcess,
  startServer,
  tempDir,
} from "../helpers/server.js";

const cleanup: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

function dataDir(): string {
  const dir = tempDir();
  cleanup.push(() => dir.remove());
  return dir.path;
}

async function started(options: Parameters<typeof startServer>[0]): Promise<ServerProcess> {
  const server = await startServer(options);
  cleanup.push(() => server.dispose());
  return server;
}

describe("client tokens on a public address", () => {
  it("refuses to make up a dev secret, and names the misspelled JWKS variable", async () => {
    const dir = dataDir();
    const r = await refusedStart(["--host", "0.0.0.0", "--data-dir", dir], {
      SWITCHBOARD_AUTH_JWKSURL: "https://id.example.com/.well-known/jwks.json",
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      "unknown environment variable SWITCHBOARD_AUTH_JWKSURL ignored: did you mean SWITCHBOARD_AUTH_JWKS_URL?",
    );
    expect(r.stderr).toMatch(/refusing to serve clients on 0\.0\.0\.0 with a newly created dev secret/);
    expect(existsSync(join(dir, "dev-jwt-secret"))).toBe(false);
  });

  it("starts with an existing dev secret (a mounted Secret), warning loudly", async () => {
    const dir = dataDir();
    devSecret(dir);
    const server = await started({ dataDir: dir, args: ["--host", "0.0.0.0"] });
    expect(server.stderr()).toMatch(
      /client tokens are verified with the dev secret .* while serving on 0\.0\.0\.0/,
    );
  });

  it("starts quietly with auth.secretFile, and verifies tokens with it", async () => {
    const dir = dataDir();
    const file = join(dir, "hs256");
    writeFileSync(file, "the issuer's shared key, of 32 bytes or more\n");
    const server = await started({
      args: ["--host", "0.0.0.0"],
      env: { SWITCHBOARD_AUTH_SECRET_FILE: file },
    });
    expect(server.stderr()).not.toMatch(/client tokens are verified with the dev secret/);
    // A dev-secret token is refused; one of the shared key is accepted.
    await expect(
      RawClient.connect(server.url, { token: await devToken(server.dataDir, "mallory") }),
    ).rejects.toThrow(/401/);
    const { SignJWT } = await import("jose");
    const token = await new SignJWT({})
      .setProtectedHeader({ alg: "HS256" })
      .setSubject("alice")
      .setExpirationTime("1h")
      .sign(new TextEncoder().encode("the issuer's shared key, of 32 bytes or more"));
    const c = await RawClient.connect(server.url, { token });
    c.close();
    // `switchboard token` in the same environment signs with that key, not a data dir's dev secret.
    const printed = execFileSync(process.execPath, [cliPath, "token", "--user", "bob"], {
      cwd: dir,
      env: { ...process.env, SWITCHBOARD_AUTH_SECRET_FILE: file },
    }).toString();
    const bob = await RawClient.connect(server.url, { token: JSON.parse(printed).token });
    bob.close();
  });
});

describe("--dev where dev mode does not apply", () => {
  it("opens no gRPC port without authentication on a public address", async () => {
    const r = await refusedStart(["--role", "id", "--dev", "--host", "0.0.0.0", "--data-dir", dataDir()]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /the gRPC port has no authentication.*dev mode was asked for but does not apply: http\.host 0\.0\.0\.0 is not a loopback address/,
    );
    expect(r.stderr).not.toContain("DEV MODE: gRPC port open WITHOUT AUTHENTICATION");
  });

  it("opens none beside a JWKS URL either", async () => {
    const r = await refusedStart(["--grpc-port", "0", "--dev", "--data-dir", dataDir()], {
      SWITCHBOARD_AUTH_JWKS_URL: "https://id.example.com/jwks",
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/the gRPC port has no authentication.*does not apply: auth\.jwksUrl is set/);
  });
});

describe("configuration refused at once, naming the setting", () => {
  it("an empty or non-decimal number", async () => {
    const empty = await refusedStart(["--data-dir", dataDir()], { SWITCHBOARD_HTTP_PORT: "" });
    expect(empty.code).toBe(1);
    expect(empty.stderr).toMatch(
      /invalid configuration SWITCHBOARD_HTTP_PORT=\\"\\": expected a decimal integer .*set but empty/,
    );
    const hex = await refusedStart(["--data-dir", dataDir()], { SWITCHBOARD_HTTP_PORT: "0x1F90" });
    expect(hex.code).toBe(1);
    expect(hex.stderr).toMatch(/invalid configuration SWITCHBOARD_HTTP_PORT=\\"0x1F90\\"/);
    const off = await refusedStart(["--data-dir", dataDir()], { SWITCHBOARD_HTTP_HEADERS_TIMEOUT_MS: "0" });
    expect(off.code).toBe(1);
    expect(off.stderr).toMatch(
      /SWITCHBOARD_HTTP_HEADERS_TIMEOUT_MS=\\"0\\": expected a decimal integer in \[1000,/,
    );
  });

  it("settings that do not work together", async () => {
    const r = await refusedStart(["--data-dir", dataDir()], { SWITCHBOARD_GATEWAY_BODY_CHARS_MAX: "200000" });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/gateway\.frameBytesMax .* and gateway\.bodyCharsMax/);
  });

  it("storage configuration no retry can heal, before the storage retry loop", async () => {
    const distributed = ["--role", "sequencer", "--backend", "distributed", "--data-dir", dataDir()];
    const unreachable = {
      SWITCHBOARD_KAFKA_BROKERS: "127.0.0.1:1",
      SWITCHBOARD_CASSANDRA_CONTACT_POINTS: "127.0.0.1:1",
    };
    const sasl = await refusedStart(distributed, {
      ...unreachable,
      SWITCHBOARD_KAFKA_SASL_MECHANISM: "plain",
    });
    expect(sasl.code).toBe(1);
    expect(sasl.stderr).toMatch(/kafka\.saslMechanism plain needs kafka\.saslUsername/);
    expect(sasl.stderr).not.toContain("retrying");
    const brokers = await refusedStart(distributed, { ...unreachable, SWITCHBOARD_KAFKA_BROKERS: " " });
    expect(brokers.code).toBe(1);
    expect(brokers.stderr).toMatch(/kafka\.brokers \(SWITCHBOARD_KAFKA_BROKERS\) is empty/);
    const pem = await refusedStart(distributed, {
      ...unreachable,
      SWITCHBOARD_KAFKA_TLS: "true",
      SWITCHBOARD_KAFKA_TLS_CA_FILE: "/nonexistent/ca.crt",
    });
    expect(pem.code).toBe(1);
    expect(pem.stderr).toMatch(/kafka\.tlsCaFile: cannot read \/nonexistent\/ca\.crt/);
  });

  it("push provider configuration, before storage opens", async () => {
    const r = await refusedStart(
      ["--role", "push", "--backend", "distributed", "--dev", "--grpc-port", "0", "--data-dir", dataDir()],
      {
        SWITCHBOARD_KAFKA_BROKERS: "127.0.0.1:1",
        SWITCHBOARD_CASSANDRA_CONTACT_POINTS: "127.0.0.1:1",
        SWITCHBOARD_PUSH_APNS_KEY_FILE: "/nonexistent/AuthKey.p8",
        SWITCHBOARD_PUSH_APNS_KEY_ID: "K",
        SWITCHBOARD_PUSH_APNS_TEAM_ID: "T",
        SWITCHBOARD_PUSH_APNS_TOPIC: "com.example",
      },
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/push\.apns\.keyFile: cannot read \/nonexistent\/AuthKey\.p8/);
    expect(r.stderr).not.toContain("open storage failed");
  });
});
