/**
 * Starts the real `switchboard start` process (from dist/, built by `npm test`) on a free port
 * with its own data dir, and can kill -9 and restart it on the same data dir.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { signDevToken } from "../../internal/lib/auth.js";

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const cliPath = join(repoRoot, "dist/cmd/switchboard.js");

export interface ServerProcess {
  port: number;
  /** The port of the gRPC server (when started with --grpc-port). */
  grpcPort: number;
  url: string;
  httpUrl: string;
  /** The JSON line the process printed when it started ({"status":"started",…}). */
  startLine: StartLine;
  dataDir: string;
  child: ChildProcess;
  stderr: () => string;
  /** kill -9, as a crash would. */
  kill(): Promise<void>;
  /** Graceful stop (SIGTERM). */
  stop(): Promise<void>;
  /** Starts a new process on the same data dir and port. */
  restart(): Promise<ServerProcess>;
  /** Stops and removes the data dir. */
  dispose(): Promise<void>;
}

type StartLine = { port: number; grpc_port: number } & Record<string, unknown>;

export interface StartOptions {
  dataDir?: string;
  port?: number;
  env?: Record<string, string>;
  args?: string[];
  /**
   * Runs the process under `ulimit -f` (KiB): a write past that file size fails (EFBIG) as a write to
   * a full disk does, without a file system of that size. SIGXFSZ is ignored, as for a shell.
   */
  fileSizeLimitKiB?: number;
}

/** Which backend the server runs on: `SWITCHBOARD_TEST_BACKEND=distributed` runs the same tests on Kafka + Cassandra. */
export const testBackend =
  process.env.SWITCHBOARD_TEST_BACKEND === "distributed" ? "distributed" : "embedded";
let serverCount = 0;

/** Environment for a distributed server: real Kafka and Cassandra, and topics/keyspace of its own. */
async function distributedEnv(): Promise<Record<string, string>> {
  const { ensureServer } = await import("../infra/servers.js");
  const kafka = await ensureServer("kafka");
  const cassandra = await ensureServer("cassandra");
  const id = `${Date.now().toString(36)}${process.pid.toString(36)}${++serverCount}`;
  return {
    ...kafka,
    ...cassandra,
    SWITCHBOARD_KAFKA_TOPIC_PREFIX: `e2e-${id}.`,
    SWITCHBOARD_KAFKA_PARTITIONS: "3",
    SWITCHBOARD_CASSANDRA_KEYSPACE: `e2e_${id}`,
  };
}

export async function startServer(options: StartOptions = {}): Promise<ServerProcess> {
  if (testBackend === "distributed" && !options.args?.includes("--backend")) {
    const env = await distributedEnv();
    options = {
      ...options,
      args: [...(options.args ?? []), "--backend", "distributed"],
      env: { ...env, ...options.env },
    };
  }
  const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), "switchboard-test-"));
  const command = [
    process.execPath,
    cliPath,
    "start",
    "--port",
    String(options.port ?? 0),
    "--data-dir",
    dataDir,
    ...(options.args ?? []),
  ];
  const limit = options.fileSizeLimitKiB;
  const child = spawn(
    limit === undefined ? command[0]! : "bash",
    limit === undefined
      ? command.slice(1)
      : ["-c", `trap "" XFSZ; ulimit -f ${limit}; exec "$0" "$@"`, ...command],
    {
      env: { ...process.env, SWITCHBOARD_LOG_LEVEL: "warn", ...options.env },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let err = "";
  child.stderr!.on("data", (d: Buffer) => {
    err = (err + d.toString()).slice(-20_000);
  });
  const started = await new Promise<StartLine>((resolvePort, reject) => {
    let out = "";
    const onData = (d: Buffer) => {
      out += d.toString();
      const line = out.split("\n").find((l) => l.includes('"started"'));
      if (line) {
        child.stdout!.off("data", onData);
        clearTimeout(slow);
        resolvePort(JSON.parse(line) as StartLine);
      }
    };
    child.stdout!.on("data", onData);
    child.once("exit", (code) => reject(new Error(`server exited with ${code} before starting:\n${err}`)));
    const slow = setTimeout(() => {
      child.kill("SIGKILL"); // a start that never finished must not outlive the test
      reject(new Error(`server did not start within 120 s:\n${err}`));
    }, 120_000);
    slow.unref();
  });
  const { port, grpc_port: grpcPort } = started;
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  const server: ServerProcess = {
    port,
    grpcPort,
    url: `ws://127.0.0.1:${port}/ws`,
    httpUrl: `http://127.0.0.1:${port}`,
    startLine: started,
    dataDir,
    child,
    stderr: () => err,
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await exited;
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      await exited;
    },
    restart: () => startServer({ ...options, dataDir, port }),
    async dispose() {
      await server.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
  return server;
}

/** Runs the CLI to completion and returns its stdout lines parsed as JSON. */
export async function runCli(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; lines: unknown[]; stderr: string }> {
  const child = spawn(process.execPath, [cliPath, ...args], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout.on("data", (d: Buffer) => {
    out += d.toString();
  });
  child.stderr.on("data", (d: Buffer) => {
    err += d.toString();
  });
  const code = await new Promise<number>((r) => child.once("exit", (c) => r(c ?? 1)));
  const lines = out
    .split("\n")
    .filter((l) => l.trim().length > 0)
    .map((l) => JSON.parse(l) as unknown);
  return { code, lines, stderr: err };
}

/**
 * `switchboard start ARGS` to its end: it must end by itself (a refusal); one still running after
 * 20 s is killed (code null). On a free port unless the arguments or `env` name one, on a fresh data
 * dir (removed after) unless the arguments name one.
 */
export async function refusedStart(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; stderr: string }> {
  const port = "SWITCHBOARD_HTTP_PORT" in env || args.includes("--port") ? [] : ["--port", "0"];
  const dir = args.includes("--data-dir") ? undefined : tempDir();
  const child = spawn(
    process.execPath,
    [cliPath, "start", ...port, ...(dir ? ["--data-dir", dir.path] : []), ...args],
    { env: { ...process.env, SWITCHBOARD_LOG_LEVEL: "warn", ...env }, stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
  const code = await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)));
  clearTimeout(timer);
  dir?.remove();
  return { code, stderr };
}

/** Mints a dev token with the server's own secret (in-process: tests need thousands). */
export async function devToken(dataDir: string, user: string, ttlSeconds = 3600): Promise<string> {
  return signDevToken(dataDir, user, ttlSeconds);
}

export function tempDir(prefix = "switchboard-"): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}
