/**
 * Starts and stops the system under test as a child process pinned to its own core, and reads its
 * resource use from /proc (RSS, CPU time) and its Prometheus /metrics. Every server started here is
 * killed when the benchmark ends, fails or is interrupted.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import {
  closeSync,
  createWriteStream,
  existsSync,
  fdatasyncSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

const here = dirname(fileURLToPath(import.meta.url)); // dist/bench
export const SWITCHBOARD_BIN = resolve(here, "../cmd/switchboard.js");
export const BARE_SERVER_BIN = resolve(here, "bare-server.js");

/** Something of the system under test that must not outlive the benchmark. */
export interface Killable {
  /** Synchronous: it runs in the process's exit handler. */
  killNow(): void;
}

const live = new Set<Killable>();
let cleanupInstalled = false;

/** Kills `k` when the benchmark exits, fails or is interrupted (until `forget(k)`). */
export function killOnExit(k: Killable): void {
  live.add(k);
  if (cleanupInstalled) return;
  cleanupInstalled = true;
  process.on("exit", () => {
    for (const s of live) s.killNow();
  });
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.once(sig, () => {
      process.stderr.write(`\nbench: ${sig}, stopping servers\n`);
      for (const s of live) s.killNow();
      process.exit(130);
    });
  }
}

export function forget(k: Killable): void {
  live.delete(k);
}

let tasksetOk: boolean | undefined;
export function hasTaskset(): boolean {
  if (tasksetOk === undefined) {
    try {
      execFileSync("taskset", ["-c", "0", "true"], { stdio: "ignore" });
      tasksetOk = true;
    } catch {
      tasksetOk = false;
    }
  }
  return tasksetOk;
}

/** Pins every thread of this process to `cpus` (e.g. "1"); returns false when taskset is missing. */
export function pinSelf(cpus: string): boolean {
  if (!hasTaskset()) return false;
  try {
    execFileSync("taskset", ["-a", "-c", "-p", cpus, String(process.pid)], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** Moves every thread of this process to SCHED_RR priority 1 (chrt); false when not permitted. */
export function realtimeSelf(): boolean {
  try {
    execFileSync("chrt", ["-a", "-r", "-p", "1", String(process.pid)], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

let clkTck = 0;
function ticksPerSecond(): number {
  if (clkTck === 0) {
    try {
      clkTck = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

/** user+system CPU seconds of a process (all threads), from /proc/PID/stat. */
export function procCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(rest[11]) + Number(rest[12])) / ticksPerSecond();
}

/** Busy CPU seconds of the whole machine (all cores, from /proc/stat; idle and iowait excluded). */
export function machineBusySeconds(): number {
  const line = readFileSync("/proc/stat", "utf8").split("\n", 1)[0]!;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0); // user..steal (guest is inside user)
  return (total - v[3]! - v[4]!) / ticksPerSecond();
}

/** A field of /proc/PID/status in kB (VmRSS, VmHWM, RssAnon...). */
export function procStatusKb(pid: number, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) : Number.NaN;
}

export interface StartOptions {
  kind: "switchboard" | "bare";
  /** taskset CPU list for the server, or undefined for no pinning. */
  cpus: string | undefined;
  /** Scheduling niceness for the server (negative = ahead of other work; needs privileges). */
  nice?: number;
  /** Run the server under SCHED_RR priority 1 (chrt): ahead of all normal work on its core. */
  realtime?: boolean;
  env?: Record<string, string>;
  nodeArgs?: string[];
  /** Extra arguments of `switchboard start` (e.g. --backend distributed). */
  args?: string[];
  /** How long the server may take to print its start line (default 30 s). */
  startTimeoutMs?: number;
  keepData?: boolean;
  /** Parent of the temporary data dir (default: the OS temp dir). */
  dataRoot?: string;
  /** Start on this data dir (a restart) instead of a fresh one. */
  dataDir?: string;
  /** Listen on this port (a restart) instead of a free one. */
  port?: number;
}

export class ServerProcess implements Killable {
  port = 0;
  /** The inspector's WebSocket URL when started with --inspect. */
  inspectorUrl: string | undefined;
  exited: Promise<number | null>;
  private exitCode: number | null | undefined;
  private stderrTail: string[] = [];

  private constructor(
    readonly child: ChildProcess,
    readonly dataDir: string,
    readonly kind: string,
    private readonly keepData: boolean,
  ) {
    this.exited = new Promise((res) =>
      child.once("exit", (code, signal) => {
        this.exitCode = code ?? (signal ? 128 : null);
        forget(this);
        res(this.exitCode);
      }),
    );
  }

  get pid(): number {
    return this.child.pid!;
  }

  static async start(opts: StartOptions): Promise<ServerProcess> {
    const dataDir =
      opts.dataDir ?? mkdtempSync(join(opts.dataRoot ?? tmpdir(), `switchboard-bench-${opts.kind}-`));
    const script = opts.kind === "switchboard" ? SWITCHBOARD_BIN : BARE_SERVER_BIN;
    if (!existsSync(script)) throw new Error(`${script} is missing: build first (npx tsc -p tsconfig.json)`);
    const nodeArgv = [...(opts.nodeArgs ?? []), script];
    if (opts.kind === "switchboard")
      nodeArgv.push("start", "--port", String(opts.port ?? 0), "--data-dir", dataDir, ...(opts.args ?? []));
    else nodeArgv.push("--port", "0");
    let argv = [process.execPath, ...nodeArgv];
    if (opts.cpus !== undefined && hasTaskset()) argv = ["taskset", "-c", opts.cpus, ...argv];
    if (opts.nice) argv = ["nice", "-n", String(opts.nice), ...argv];
    if (opts.realtime) argv = ["chrt", "-r", "1", ...argv];
    const child = spawn(argv[0]!, argv.slice(1), {
      cwd: dataDir,
      env: { ...process.env, SWITCHBOARD_LOG_LEVEL: "warn", ...opts.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const server = new ServerProcess(child, dataDir, opts.kind, opts.keepData ?? false);
    killOnExit(server);
    const log = createWriteStream(join(dataDir, "server.stderr.log"), { flags: "a" });
    child.stderr!.on("data", (chunk: Buffer) => {
      log.write(chunk);
      const lines = chunk.toString("utf8").split("\n").filter(Boolean);
      server.stderrTail.push(...lines);
      for (const l of lines) {
        const m = /Debugger listening on (ws:\/\/\S+)/.exec(l);
        if (m) server.inspectorUrl = m[1];
      }
      if (server.stderrTail.length > 50) server.stderrTail.splice(0, server.stderrTail.length - 50);
    });
    const lines = createInterface({ input: child.stdout! });
    const started = await new Promise<{ port: number }>((res, rej) => {
      const startMs = opts.startTimeoutMs ?? 30_000;
      const timer = setTimeout(
        () =>
          rej(new Error(`${opts.kind} server did not start within ${startMs / 1000} s: ${server.tail()}`)),
        startMs,
      );
      lines.once("line", (line) => {
        clearTimeout(timer);
        try {
          const msg = JSON.parse(line) as { status?: string; port?: number };
          if (msg.status !== "started" || !msg.port) throw new Error(line);
          res({ port: msg.port });
        } catch {
          rej(new Error(`unexpected server output: ${line}`));
        }
      });
      child.once("exit", (code) => {
        clearTimeout(timer);
        rej(
          new Error(`${opts.kind} server exited (${code}) before starting: ${server.stderrTail.join("\n")}`),
        );
      });
    });
    lines.on("line", () => undefined); // keep draining stdout
    server.port = started.port;
    return server;
  }

  /** Resident set size in kB (VmRSS). */
  rssKb(): number {
    return procStatusKb(this.pid, "VmRSS");
  }

  cpuSeconds(): number {
    return procCpuSeconds(this.pid);
  }

  /** Scrapes /metrics and returns the sum of every sample of each requested metric name. */
  async metrics(names: string[]): Promise<Record<string, number>> {
    const res = await fetch(`http://127.0.0.1:${this.port}/metrics`);
    return sumMetrics(await res.text(), names);
  }

  /**
   * Forces a full garbage collection in the server through the inspector protocol (the server must
   * run with --inspect=127.0.0.1:0), so memory readings do not depend on when V8 last collected.
   */
  async collectGarbage(): Promise<boolean> {
    if (!this.inspectorUrl) return false;
    const ws = new WebSocket(this.inspectorUrl);
    try {
      await new Promise<void>((res, rej) => {
        ws.once("open", () => res());
        ws.once("error", rej);
      });
      await new Promise<void>((res, rej) => {
        ws.on("message", (data: Buffer) => {
          const msg = JSON.parse(data.toString("utf8")) as { id?: number; error?: unknown };
          if (msg.id === 1) msg.error ? rej(new Error(JSON.stringify(msg.error))) : res();
        });
        ws.send(JSON.stringify({ id: 1, method: "HeapProfiler.collectGarbage" }));
      });
      return true;
    } catch {
      return false;
    } finally {
      ws.terminate();
    }
  }

  tail(): string {
    return this.stderrTail.join("\n");
  }

  get running(): boolean {
    return this.exitCode === undefined;
  }

  /** Graceful stop (SIGTERM, so a --cpu-prof profile gets written), then SIGKILL after `graceMs`. */
  async stop(graceMs = 15_000): Promise<number | null> {
    if (this.running) {
      this.child.kill("SIGTERM");
      const timer = setTimeout(() => this.child.kill("SIGKILL"), graceMs);
      await this.exited;
      clearTimeout(timer);
    }
    if (!this.keepData) rmSync(this.dataDir, { recursive: true, force: true });
    return this.exitCode ?? null;
  }

  /** kill -9, keeping the data dir (for a restart on it). */
  async crash(): Promise<void> {
    if (this.running) this.child.kill("SIGKILL");
    await this.exited;
  }

  killNow(): void {
    if (this.running) this.child.kill("SIGKILL");
    if (!this.keepData) rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** Latency of a 4 KiB write + fdatasync in `dir` (the floor under any durable ack), in ms. */
export function fsyncProbe(dir: string, n = 100): { p50_ms: number; p99_ms: number; max_ms: number } {
  const tmp = mkdtempSync(join(dir, "switchboard-bench-fsync-"));
  const fd = openSync(join(tmp, "probe"), "w");
  const block = Buffer.alloc(4096, 1);
  const xs: number[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const t = performance.now();
      writeSync(fd, block, 0, block.length, (i % 16) * 4096);
      fdatasyncSync(fd);
      xs.push(performance.now() - t);
    }
  } finally {
    closeSync(fd);
    rmSync(tmp, { recursive: true, force: true });
  }
  xs.sort((a, b) => a - b);
  const at = (q: number) => Math.round(xs[Math.min(xs.length - 1, Math.floor(q * xs.length))]! * 100) / 100;
  return { p50_ms: at(0.5), p99_ms: at(0.99), max_ms: at(1) };
}

/**
 * The sum of every sample of each requested metric in a Prometheus text page. A request is a metric
 * name (every sample of it, whatever its labels) or one series, `name{label="value"}`, spelt as the
 * page spells its labels (prom-client: in the order they were declared).
 */
export function sumMetrics(text: string, names: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  const wanted = new Set(names);
  for (const line of text.split("\n")) {
    if (line.startsWith("#") || !line.trim()) continue;
    const sp = line.lastIndexOf(" ");
    const brace = line.indexOf("{");
    const labelled = brace >= 0 && brace < sp;
    const name = labelled ? line.slice(0, brace) : line.slice(0, sp);
    const value = Number(line.slice(sp + 1));
    if (wanted.has(name)) out[name] = (out[name] ?? 0) + value;
    if (labelled) {
      const series = line.slice(0, line.lastIndexOf("}", sp) + 1);
      if (wanted.has(series)) out[series] = (out[series] ?? 0) + value;
    }
  }
  return out;
}
