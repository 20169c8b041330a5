/**
 * Process supervision: one container = one local process tree. This file starts it, signals it,
 * waits for it, caps its log, and finds the ones a previous agent run left behind.
 *
 * How a container process is started:
 *   unshare --mount --uts --propagation private -- /bin/sh -c SCRIPT sh ARGV...
 * In its own mount namespace (private propagation, so nothing leaks back to the host) a small shell
 * sets the hostname, bind-mounts every volume onto its mountPath (read-only where asked), binds the
 * Pod's resolv.conf and hosts files over /etc/resolv.conf and /etc/hosts, then execs the command:
 * the pid we spawned becomes the container's main process. `detached` puts it in a new session, so
 * it leads its own process group and stopping the container signals the whole group (what a PID
 * namespace teardown does in a real runtime).
 *
 * stdout and stderr go straight to the log file (opened O_APPEND, so restarts append), not through
 * the agent: a busy container cannot back-pressure the agent, and the process survives an agent
 * crash (the next agent kills it through its pid file, see killLeftovers).
 */
import { spawn } from "node:child_process";
import {
  closeSync,
  existsSync,
  fstatSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { constants } from "node:os";
import { dirname, join } from "node:path";
import type { Logger } from "../../../internal/lib/log.js";

/** Environment variable naming the agent's state dir in every container it starts: how we recognise ours. */
export const STATE_DIR_ENV = "SWITCHBOARD_NODE_AGENT_STATE_DIR";

export interface Mount {
  /** A file or directory on the host. */
  source: string;
  /** Absolute path where the container sees it. */
  target: string;
  readOnly: boolean;
}

export interface ProcessSpec {
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  hostname: string;
  mounts: Mount[];
  /** Host paths that stay visible at the same path even when a mount covers an ancestor (the image). */
  keepVisible: readonly string[];
  logPath: string;
  /** Holds the pid while the process runs (removed when it exits). */
  pidPath: string;
  /** The log is truncated when it grows past this (checked every few seconds). */
  logBytesMax: number;
  /** The agent's state dir, put into the environment as STATE_DIR_ENV. */
  stateDir: string;
}

export interface ProcessExit {
  /** Exit code, or 128 + signal number when killed by a signal (as container runtimes report it). */
  exitCode: number;
  signal?: number;
  finishedAt: Date;
}

const LOG_CHECK_MS = 5_000;

/** Quotes one word for /bin/sh. */
export function shellQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

/**
 * Where a container's volume sources are staged inside its mount namespace: a tmpfs at a path no
 * Pod mounts over, created on the host (empty) by ensureMountPoints.
 */
export const MOUNT_STAGE = "/run/switchboard-node-agent-stage";

/**
 * The shell run inside the new mount and UTS namespaces before exec. Every source is first bound
 * into a private staging tmpfs and only then onto its target: a target can hide a later source
 * otherwise (an emptyDir mounted on /tmp hides volume sources kept under /tmp). Mount points that do
 * not exist are created on the host before (see ensureMountPoints): a real image would have them.
 */
export function namespaceScript(
  hostname: string,
  volumeMounts: readonly Mount[],
  keepVisible: readonly string[] = [],
): string {
  const lines = ["set -e", `printf %s ${shellQuote(hostname)} > /proc/sys/kernel/hostname`];
  // A kept path that a volume covers (itself or an ancestor) is bound back onto its own path last.
  const covered = (path: string) =>
    volumeMounts.some((m) => path === m.target || path.startsWith(`${m.target.replace(/\/$/, "")}/`));
  const restore = keepVisible
    .filter(covered)
    .map((path) => ({ source: path, target: path, readOnly: false, restore: true }));
  const mounts = [...volumeMounts.map((m) => ({ ...m, restore: false })), ...restore];
  if (mounts.length > 0) {
    const stage = (i: number) => shellQuote(`${MOUNT_STAGE}/${i}`);
    lines.push(`mount -t tmpfs -o size=64k,mode=0700 node-agent-stage ${shellQuote(MOUNT_STAGE)}`);
    mounts.forEach((m, i) => {
      lines.push(`if [ -d ${shellQuote(m.source)} ]; then mkdir ${stage(i)}; else : > ${stage(i)}; fi`);
      lines.push(`mount --bind ${shellQuote(m.source)} ${stage(i)}`);
    });
    mounts.forEach((m, i) => {
      // The covering volume has no such path: make the mount point inside it.
      if (m.restore) lines.push(`mkdir -p ${shellQuote(m.target)}`);
      lines.push(`mount --bind ${stage(i)} ${shellQuote(m.target)}`);
      if (m.readOnly) lines.push(`mount -o remount,bind,ro ${shellQuote(m.target)}`);
    });
    lines.push(`umount -R -l ${shellQuote(MOUNT_STAGE)}`);
  }
  lines.push('exec "$@"');
  return lines.join("\n");
}

/**
 * Creates missing mount points on the host (an empty directory, or an empty file when the source is
 * a file): bind mounts need an existing target. This writes to the host's file system, where an
 * image would already have the path: documented in README.
 */
function ensureMountPoints(mounts: readonly Mount[]): void {
  if (mounts.length > 0) mkdirSync(MOUNT_STAGE, { recursive: true });
  for (const m of mounts) {
    if (existsSync(m.target)) continue;
    let isDir = true;
    try {
      isDir = fstatIsDir(m.source);
    } catch {
      // a missing source fails in the mount itself, with its message in the container log
    }
    if (isDir) mkdirSync(m.target, { recursive: true });
    else {
      mkdirSync(dirname(m.target), { recursive: true });
      writeFileSync(m.target, "", { flag: "a" });
    }
  }
}

function fstatIsDir(path: string): boolean {
  const fd = openSync(path, "r");
  try {
    return fstatSync(fd).isDirectory();
  } finally {
    closeSync(fd);
  }
}

export class ContainerProcess {
  readonly pid: number;
  readonly startedAt = new Date();
  readonly exited: Promise<ProcessExit>;
  private readonly logFd: number;
  private readonly logTimer: NodeJS.Timeout;
  private killTimer: NodeJS.Timeout | undefined;
  private killAt = Number.POSITIVE_INFINITY;
  private done = false;

  /** Starts the process; throws when it cannot be spawned (no unshare, bad cwd). */
  constructor(
    private readonly spec: ProcessSpec,
    private readonly log: Logger,
  ) {
    mkdirSync(dirname(spec.logPath), { recursive: true });
    mkdirSync(dirname(spec.pidPath), { recursive: true });
    mkdirSync(spec.cwd, { recursive: true });
    ensureMountPoints(spec.mounts);
    this.logFd = openSync(spec.logPath, "a");
    const child = spawn(
      "unshare",
      [
        "--mount",
        "--uts",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        namespaceScript(spec.hostname, spec.mounts, spec.keepVisible),
        "sh",
        ...spec.argv,
      ],
      {
        cwd: spec.cwd,
        env: { ...spec.env, [STATE_DIR_ENV]: spec.stateDir },
        detached: true,
        stdio: ["ignore", this.logFd, this.logFd],
      },
    );
    if (child.pid === undefined) {
      closeSync(this.logFd);
      // spawn reports ENOENT and the like asynchronously; the pid tells us synchronously.
      child.on("error", () => undefined);
      throw new Error(`could not start ${spec.argv[0]} (unshare missing?)`);
    }
    this.pid = child.pid;
    writeFileSync(spec.pidPath, `${this.pid}\n`);
    this.logTimer = setInterval(() => this.capLog(), LOG_CHECK_MS);
    this.exited = new Promise<ProcessExit>((resolve) => {
      child.on("exit", (code, signal) => {
        this.done = true;
        const signo = signal ? constants.signals[signal] : undefined;
        // The main process is gone: whatever it left in its group goes too, as in a PID namespace.
        this.signalGroup("SIGKILL");
        clearInterval(this.logTimer);
        clearTimeout(this.killTimer);
        closeSync(this.logFd);
        rmSync(spec.pidPath, { force: true });
        const exit: ProcessExit = { exitCode: code ?? 128 + (signo ?? 0), finishedAt: new Date() };
        if (signo !== undefined) exit.signal = signo;
        resolve(exit);
      });
    });
  }

  get running(): boolean {
    return !this.done;
  }

  /** Signals the process group; ESRCH (already gone) is not an error. */
  signalGroup(signal: NodeJS.Signals): void {
    try {
      process.kill(-this.pid, signal);
    } catch {
      // gone already
    }
  }

  /**
   * SIGTERM to the group, SIGKILL after `graceMs` (0: at once). Calling it again with a shorter grace
   * brings the kill forward, as a second `kubectl delete --grace-period` does.
   */
  stop(graceMs: number): Promise<ProcessExit> {
    if (this.done) return this.exited;
    const at = Date.now() + Math.max(0, graceMs);
    if (this.killAt === Number.POSITIVE_INFINITY) this.signalGroup(graceMs > 0 ? "SIGTERM" : "SIGKILL");
    if (at < this.killAt) {
      this.killAt = at;
      clearTimeout(this.killTimer);
      this.killTimer = setTimeout(() => this.signalGroup("SIGKILL"), Math.max(0, graceMs));
    }
    return this.exited;
  }

  /** Truncates the log past its cap, leaving a line that says so (the writer appends after it). */
  private capLog(): void {
    try {
      if (fstatSync(this.logFd).size <= this.spec.logBytesMax) return;
      ftruncateSync(this.logFd, 0);
      writeSync(
        this.logFd,
        `[node-agent] ${new Date().toISOString()} log exceeded ${this.spec.logBytesMax} bytes; truncated\n`,
      );
    } catch (err) {
      this.log.warn("could not cap a container log", { path: this.spec.logPath, err });
    }
  }
}

/**
 * Kills the process groups a previous agent run left behind: every pid file in `pidDir` whose process
 * still carries our state dir in its environment (a recycled pid naming someone else's process is
 * left alone). Returns how many were killed.
 */
export function killLeftovers(pidDir: string, stateDir: string, log: Logger): number {
  let killed = 0;
  let files: string[] = [];
  try {
    files = readdirSync(pidDir).filter((f) => f.endsWith(".pid"));
  } catch {
    return 0;
  }
  const marker = `${STATE_DIR_ENV}=${stateDir}`;
  for (const file of files) {
    const path = join(pidDir, file);
    const pid = Number.parseInt(readFileSync(path, "utf8").trim(), 10);
    if (Number.isInteger(pid) && pid > 1) {
      let ours = false;
      try {
        ours = readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").includes(marker);
      } catch {
        // no such process
      }
      if (ours) {
        for (const target of [-pid, pid]) {
          try {
            process.kill(target, "SIGKILL");
          } catch {
            // not a group leader, or gone meanwhile
          }
        }
        killed++;
        log.info("killed a container process left by a previous agent run", { pid, file });
      }
    }
    rmSync(path, { force: true });
  }
  return killed;
}
