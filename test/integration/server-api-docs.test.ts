/**
 * docs/server-api.md's grpcurl commands, run as written against a server configured as the guide
 * says: the guide is exact, or this fails. The grant and the commands are read from the guide itself.
 */
import { execFile } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { newKey } from "../../internal/grpc-auth/key-file.js";
import { grpcurlPath } from "../helpers/grpc.js";
import { repoRoot, type ServerProcess, startServer, tempDir } from "../helpers/server.js";

const guide = readFileSync(join(repoRoot, "docs/server-api.md"), "utf8");
const key = newKey("client:billing");
const dir = tempDir("switchboard-api-docs-");
let bin: string;
let server: ServerProcess;

/** The guide's value of an environment variable in its start-up example. */
function guideSetting(name: string): string {
  const m = new RegExp(`${name}='([^']*)'`).exec(guide);
  if (!m) throw new Error(`docs/server-api.md no longer sets ${name}='…'`);
  return m[1]!;
}

/** The sh block after the guide's marker. */
function guideCommands(): string {
  const m = /<!-- server-api-docs:grpcurl -->\s*```sh\n([\s\S]*?)```/.exec(guide);
  if (!m) throw new Error("docs/server-api.md has no grpcurl block after its server-api-docs:grpcurl marker");
  return m[1]!;
}

/** Runs a script in bash from the repository root, with grpcurl on PATH and the guide's $KEY. */
function bash(script: string, env: Record<string, string> = {}): Promise<{ code: number; out: string }> {
  const port = String(server.grpcPort);
  return new Promise((resolve, reject) => {
    execFile(
      "bash",
      ["-c", script.replaceAll("127.0.0.1:9090", `127.0.0.1:${port}`)],
      {
        cwd: repoRoot,
        timeout: 60_000,
        env: { ...process.env, PATH: `${dirname(bin)}:${process.env.PATH}`, KEY: key.key, ...env },
      },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== "number") return reject(err);
        resolve({ code: typeof err?.code === "number" ? err.code : 0, out: stdout + stderr });
      },
    );
  });
}

beforeAll(async () => {
  bin = await grpcurlPath();
  const keyFile = join(dir.path, "grpc-keys");
  writeFileSync(keyFile, `${key.line}\n`);
  server = await startServer({
    args: ["--grpc-port", "0"],
    env: {
      SWITCHBOARD_GRPC_KEY_FILE: keyFile,
      SWITCHBOARD_GRPC_CLIENTS: guideSetting("SWITCHBOARD_GRPC_CLIENTS"),
    },
  });
}, 900_000);
afterAll(async () => {
  await server?.dispose();
  dir.remove();
});

describe("docs/server-api.md", () => {
  it("its grpcurl commands work as written", async () => {
    const { code, out } = await bash(`set -euo pipefail\n${guideCommands()}`);
    expect(out).not.toMatch(/ERROR/);
    expect(code).toBe(0);
    expect(out).toContain('"name": "ops"');
    expect(out).toContain('"sender": "bot:billing"');
    expect(out).toContain('"body": "your receipt"');
    expect(out).toMatch(/"userId": "alice"[\s\S]*"userId": "bob"/);
  });

  it("fails as it says without the key, and for a method outside the grant", async () => {
    const commands = guideCommands();
    const denied = await bash(`${commands}\napi ListSessions '{"userId":"alice"}'`);
    expect(denied.code).not.toBe(0);
    expect(denied.out).toContain("PermissionDenied");
    const anonymous = await bash(commands.replace('-H "authorization: Bearer $KEY" ', ""));
    expect(anonymous.code).not.toBe(0);
    expect(anonymous.out).toContain("Unauthenticated");
  });
});
