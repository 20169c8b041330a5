/**
 * docs/server-api.md's grpcurl commands, run as written against a server configured as the guide
 * says: the guide is exact, or this fails. The grant and the commands are read from the guide itself.
 */
import { execFile, spawn } from "node:child_process";
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

/** The sh block after the guide's marker `<!-- server-api-docs:<name> -->`. */
function guideCommands(name = "grpcurl"): string {
  const m = new RegExp(`<!-- server-api-docs:${name} -->\\s*\`\`\`sh\\n([\\s\\S]*?)\`\`\``).exec(guide);
  if (!m) throw new Error(`docs/server-api.md has no sh block after its server-api-docs:${name} marker`);
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

/**
 * Starts a script in bash as `bash()` does, with its input a pipe the test writes to: `until(text)`
 * resolves once the output holds `text`, `end()` closes the input and resolves with how it exited.
 */
function interactive(script: string) {
  const child = spawn("bash", ["-c", script.replaceAll("127.0.0.1:9090", `127.0.0.1:${server.grpcPort}`)], {
    cwd: repoRoot,
    env: { ...process.env, PATH: `${dirname(bin)}:${process.env.PATH}`, KEY: key.key },
  });
  let out = "";
  const waiters = new Set<() => void>();
  const onData = (b: Buffer) => {
    out += b.toString();
    for (const w of waiters) w();
  };
  child.stdout.on("data", onData);
  child.stderr.on("data", onData);
  const exited = new Promise<number>((resolve) => child.on("close", (code) => resolve(code ?? -1)));
  return {
    output: () => out,
    write: (line: string) => child.stdin.write(`${line}\n`),
    until: (text: string, timeoutMs = 20_000) =>
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no ${text} in ${out.slice(0, 2_000)}`)), timeoutMs);
        const check = () => {
          if (!out.includes(text)) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve();
        };
        waiters.add(check);
        check();
      }),
    end: async () => {
      child.stdin.end();
      const timer = setTimeout(() => child.kill(), 20_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
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
    // As the guide says: a method outside the key's grant is PermissionDenied, its reason readable.
    const refused = await bash(`${guideCommands()}\napi ListSessions '{"userId":"alice"}'`);
    expect(refused.code).not.toBe(0);
    expect(refused.out).toContain("PermissionDenied");
    expect(refused.out).toContain("METHOD_NOT_ALLOWED");
  });

  it("its event stream command stays open, shows the batches and sends the acks typed into it", async () => {
    // The guide's calls first (a receipt in the log), then its stream command after its api().
    const setup = guideCommands();
    expect((await bash(`set -euo pipefail\n${setup}`)).code).toBe(0);
    const stream = interactive(`set -euo pipefail\n${setup}\n${guideCommands("grpcurl-stream")}`);
    await stream.until('"cursor": "1"');
    await stream.until('"body": "your receipt"');
    stream.write('{"ack":{"cursor":"1"}}');
    // Ended by closing its input (Ctrl-D): the stream ends with OK.
    expect(await stream.end()).toBe(0);
    expect(stream.output()).not.toMatch(/ERROR/);
    // The acknowledgement was sent: the subscription has passed the receipt.
    const again = interactive(`${setup.split("\n}\n")[0]}\n}\n${guideCommands("grpcurl-stream")}`);
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    expect(await again.end()).toBe(0);
    expect(again.output()).not.toContain("your receipt");
    // As the guide says: with -d '<json>' grpcurl half-closes, and the stream ends right away, OK.
    const started = Date.now();
    const halfClosed = await bash(
      `${setup.split("\n}\n")[0]}\n}\napi StreamEvents '{"subscribe":{"subscription":"shell-2"}}'`,
    );
    expect(halfClosed.code).toBe(0);
    expect(Date.now() - started).toBeLessThan(10_000);
  }, 120_000);

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
