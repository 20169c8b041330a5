/**
 * `perf record` of the server during one step: unlike V8's --cpu-prof (whose sampler thread shares
 * the server's pinned core), perf samples from the kernel, so it sees every thread (main, LMDB
 * writer, libuv pool) and kernel time (syscalls, fsync, TCP). JS frames are named through the
 * /tmp/perf-PID.map that `node --perf-basic-prof` writes.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, rmSync } from "node:fs";

export function hasPerf(): boolean {
  try {
    execFileSync("perf", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

export class PerfRecording {
  private child: ChildProcess | undefined;
  private done: Promise<void> = Promise.resolve();

  constructor(
    readonly pid: number,
    readonly file: string,
  ) {}

  /** Starts recording after `delayMs`, for `seconds`. */
  start(delayMs: number, seconds: number): void {
    this.done = new Promise((resolve) => {
      setTimeout(() => {
        this.child = spawn(
          "perf",
          [
            "record",
            "-F",
            "999",
            "-g",
            "-p",
            String(this.pid),
            "-o",
            this.file,
            "--",
            "sleep",
            String(seconds),
          ],
          { stdio: "ignore" },
        );
        this.child.once("exit", () => resolve());
        this.child.once("error", () => resolve());
      }, delayMs);
    });
  }

  async finish(): Promise<void> {
    await this.done;
  }

  /** Self-time report: by thread and DSO, then by symbol. */
  report(top = 40): string {
    if (!existsSync(this.file)) return "perf: no data recorded";
    const run = (sort: string, limit: number) => {
      try {
        return execFileSync(
          "perf",
          [
            "report",
            "-i",
            this.file,
            "--no-children",
            "-g",
            "none",
            "--sort",
            sort,
            "--stdio",
            "--percent-limit",
            "0.3",
          ],
          { stdio: ["ignore", "pipe", "ignore"], maxBuffer: 64 * 1024 * 1024 },
        )
          .toString()
          .split("\n")
          .filter((l) => l.trim() !== "" && !l.startsWith("#"))
          .slice(0, limit)
          .map((l) => `  ${l.trimEnd()}`)
          .join("\n");
      } catch (err) {
        return `  perf report failed: ${(err as Error).message}`;
      }
    };
    return [
      `perf record of the server (pid ${this.pid}), self time by thread and DSO:`,
      run("pid,dso", 15),
      "by symbol:",
      run("sym", top),
    ].join("\n");
  }

  cleanup(keepData: boolean): void {
    if (!keepData) rmSync(this.file, { force: true });
    rmSync(`/tmp/perf-${this.pid}.map`, { force: true });
  }
}
