// Test harness for the real servers in test/infra (Kafka, Cassandra): start or reuse
// them, and break them on purpose (kill -9, SIGSTOP) for fault tests.
//
// The shell scripts are the single source of truth for installing, starting and
// stopping (CI and developers run the same `test/infra/up.sh NAME`); this module
// only drives them and reads their state files, so it needs nothing but node:
// builtins. A server is shared by every test file and every worker: up.sh reuses a
// running one and serialises concurrent starts with a lock file.
//
// Typical use (e.g. in a vitest globalSetup, with a generous hook timeout because
// the very first run downloads the jars):
//   const env = await ensureServer("kafka");   // { KAFKA_BROKERS: "127.0.0.1:19092" }
//   ...
//   await restartServer("cassandra");          // kill -9, then start again on the same data

import { spawn } from "node:child_process";
import { open, readdir, readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * kube: the control plane (KUBECONFIG, KUBECTL); helm, prometheus, grpcurl and chromium: only install
 * binaries (HELM; PROMETHEUS, PROMTOOL; GRPCURL; CHROMIUM).
 */
export type ServerName = "kafka" | "cassandra" | "kube" | "helm" | "prometheus" | "grpcurl" | "chromium";

/** The KEY=value lines up.sh printed, e.g. { KAFKA_BROKERS: "127.0.0.1:19092" }. */
export type ServerEnv = Record<string, string>;

export interface EnsureOptions {
  /** Keep the data of the previous run on a cold start (default: start empty). */
  keepData?: boolean;
  /** Give up after this long; the default leaves room for the first-run download. */
  timeoutMs?: number;
}

// Resolved from this file, not the cwd, so tests can run from any directory.
const infraDir = dirname(fileURLToPath(import.meta.url));

// Must match lib.sh: SB_CACHE and SB_RUN.
const cacheDir = process.env.SWITCHBOARD_CACHE ?? join(homedir(), ".cache", "switchboard");

/** The directory holding a server's server.pid, server.log, config and data. */
export function serverRunDir(name: ServerName): string {
  return join(cacheDir, "run", name);
}

/** Path of the server's log (stdout and stderr of the JVM since its last start). */
export function serverLogPath(name: ServerName): string {
  return join(serverRunDir(name), "server.log");
}

interface ScriptResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

// Runs test/infra/<script> NAME. up.sh's progress lines go to our stderr as they
// come (a cold start can take minutes and should not look hung); stdout is kept
// for the KEY=value lines. The server itself writes only to its log file, so the
// pipes close as soon as the script exits.
function runScript(
  script: "up.sh" | "down.sh",
  name: ServerName,
  env: NodeJS.ProcessEnv,
  timeoutMs: number,
): Promise<ScriptResult> {
  return new Promise((resolve, reject) => {
    const child = spawn("bash", [join(infraDir, script), name], {
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
      timeout: timeoutMs,
      killSignal: "SIGKILL",
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      stdout += chunk;
    });
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
      stderr += chunk;
      process.stderr.write(chunk);
    });
    child.on("error", reject);
    child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

function parseEnv(stdout: string): ServerEnv {
  const env: ServerEnv = {};
  for (const line of stdout.split("\n")) {
    const m = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(line.trim());
    if (m) env[m[1]!] = m[2]!;
  }
  return env;
}

function lastLines(text: string, lines: number): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

// Error messages stay readable: some log lines (Cassandra's Netty banner) run to
// kilobytes.
function clip(text: string, width = 400): string {
  return text
    .split("\n")
    .map((l) => (l.length > width ? `${l.slice(0, width)}…` : l))
    .join("\n");
}

// One in-flight start per server in this process: parallel callers share it
// (across processes, up.sh's lock does the same job).
const starting = new Map<ServerName, Promise<ServerEnv>>();

/**
 * Starts the server if it is not running (installing it on first use) and returns
 * its connection settings. Throws an Error with the reason and the log tail if it
 * cannot be started.
 */
export function ensureServer(name: ServerName, options: EnsureOptions = {}): Promise<ServerEnv> {
  const pending = starting.get(name);
  if (pending) return pending;
  const p = startServer(name, options).finally(() => starting.delete(name));
  starting.set(name, p);
  return p;
}

async function startServer(name: ServerName, options: EnsureOptions): Promise<ServerEnv> {
  // A cold kube build compiles Kubernetes from source (12-32 min on 2 cores).
  const timeoutMs = options.timeoutMs ?? (name === "kube" ? 45 : 15) * 60_000;
  const env: NodeJS.ProcessEnv = {};
  if (options.keepData) env[`${name.toUpperCase()}_KEEP_DATA`] = "1";
  const r = await runScript("up.sh", name, env, timeoutMs);
  const parsed = parseEnv(r.stdout);
  if (r.code === 0 && Object.keys(parsed).length > 0) return parsed;
  const why = r.signal
    ? `was killed by ${r.signal} (timeout ${timeoutMs} ms?)`
    : `exited with code ${r.code}`;
  throw new Error(
    `test/infra/up.sh ${name} ${why}\n` +
      `--- up.sh stderr (last 40 lines) ---\n${clip(lastLines(r.stderr, 40))}\n` +
      `--- ${serverLogPath(name)} (last 30 lines) ---\n${clip(await serverLogTail(name, 30))}`,
  );
}

/** Stops the server cleanly (SIGTERM, then SIGKILL after a grace period). Data stays. */
export async function stopServer(name: ServerName): Promise<void> {
  const r = await runScript("down.sh", name, {}, 120_000);
  if (r.code !== 0) {
    throw new Error(`test/infra/down.sh ${name} exited with code ${r.code}\n${lastLines(r.stderr, 40)}`);
  }
}

/**
 * The pid of our running server, or undefined. Checked against the JVM's command
 * line (-Dswitchboard.infra=<run dir>), so a stale pid file that now names some
 * other process is never signalled.
 */
export async function serverPid(name: ServerName): Promise<number | undefined> {
  let pid: number;
  try {
    pid = Number.parseInt((await readFile(join(serverRunDir(name), "server.pid"), "utf8")).trim(), 10);
  } catch {
    return undefined;
  }
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  try {
    const args = (await readFile(`/proc/${pid}/cmdline`, "utf8")).split("\0");
    return args.includes(`-Dswitchboard.infra=${serverRunDir(name)}`) ? pid : undefined;
  } catch {
    return undefined; // no such process
  }
}

async function signalServer(name: ServerName, signal: NodeJS.Signals): Promise<number> {
  const pid = await serverPid(name);
  if (pid === undefined) throw new Error(`${name} is not running (no live pid in ${serverRunDir(name)})`);
  process.kill(pid, signal);
  return pid;
}

// After SIGKILL the JVM's main thread turns zombie at once, but its other threads
// take a moment longer to die, and only then are its ports and file locks released.
// So "gone" means: no such process, or a zombie with no other thread left.
async function processGone(pid: number): Promise<boolean> {
  try {
    const threads = await readdir(`/proc/${pid}/task`);
    if (threads.length > 1) return false;
    return /^State:\s*Z/m.test(await readFile(`/proc/${pid}/status`, "utf8"));
  } catch {
    return true; // no such process (or it vanished while we looked)
  }
}

/**
 * kill -9: a crash with no clean shutdown. Resolves once the process has released
 * its ports, so a restart can bind them again.
 */
export async function killServer(name: ServerName): Promise<void> {
  const pid = await signalServer(name, "SIGKILL");
  const deadline = Date.now() + 10_000;
  while (!(await processGone(pid))) {
    if (Date.now() > deadline) throw new Error(`${name} (pid ${pid}) survived SIGKILL for 10 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * SIGSTOP: the server freezes but its sockets stay open, so clients see timeouts
 * rather than refused connections (like a long GC pause or a hung host).
 * Always pair with resumeServer (up.sh also resumes a stopped server it reuses).
 */
export async function pauseServer(name: ServerName): Promise<void> {
  await signalServer(name, "SIGSTOP");
}

/** SIGCONT: undoes pauseServer. */
export async function resumeServer(name: ServerName): Promise<void> {
  await signalServer(name, "SIGCONT");
}

/**
 * Crash and recover: kill -9, then start again on the same data (unlike a cold
 * ensureServer, which starts empty). Returns the connection settings, which do not
 * change.
 */
export async function restartServer(
  name: ServerName,
  options: Omit<EnsureOptions, "keepData"> = {},
): Promise<ServerEnv> {
  if ((await serverPid(name)) !== undefined) await killServer(name);
  return ensureServer(name, { ...options, keepData: true });
}

/** The last `lines` lines of the server log, for a failing test to print. */
export async function serverLogTail(name: ServerName, lines = 50): Promise<string> {
  // Only the end of the file is read: logs of long runs grow to many megabytes.
  const maxBytes = Math.max(64 * 1024, lines * 1024);
  let file: Awaited<ReturnType<typeof open>> | undefined;
  try {
    file = await open(serverLogPath(name), "r");
    const { size } = await file.stat();
    const length = Math.min(size, maxBytes);
    const buf = Buffer.alloc(length);
    await file.read(buf, 0, length, size - length);
    return lastLines(buf.toString("utf8"), lines);
  } catch {
    return `(no log at ${serverLogPath(name)})`;
  } finally {
    await file?.close();
  }
}
