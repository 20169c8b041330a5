/**
 * One process per data dir. The embedded backend assigns seqs, log positions and inbox cursors from
 * memory (ADR 0002): a second process on the same LMDB file would assign the same ones and overwrite
 * acknowledged messages. LMDB itself lets any number of processes open a file, so the backend takes
 * the data dir for the life of the process: `DATA_DIR/switchboard.process.lock` names its holder
 * (pid, host, since when), and a process that finds a live holder there refuses to start, naming the
 * dir and the holder.
 *
 * The check and the write happen under LMDB's own write lock (a mutex shared by every process that
 * has the file open, released by the kernel when its holder dies), so two processes starting at once
 * cannot both take the dir. No file lock of the operating system is needed (Node has none without a
 * native addon).
 *
 * A holder killed with -9 leaves its lock file behind; the next process takes it over when the
 * holder is provably gone:
 * - same host, boot and pid namespace: its pid is not running (or is a zombie), or runs a process
 *   started at another time (pid reuse; Linux /proc), or is this process's own pid (a container
 *   restarted: pid 1 again);
 * - otherwise (another host or container sharing the volume, which cannot see its pid): its holder
 *   stopped touching the file (every HEARTBEAT_MS) more than STALE_MS ago;
 * - the lock file names another directory (by device and inode): it was copied here with the data
 *   (a restored backup, or a copy taken while a process was running), and says nothing about this one.
 * A clean stop removes the file, so "stop, copy, start" copies none. An operator who knows that a
 * holder is gone may delete the file.
 */
import { randomUUID } from "node:crypto";
import {
  closeSync,
  fsyncSync,
  openSync,
  readFileSync,
  readlinkSync,
  renameSync,
  statSync,
  unlinkSync,
  utimesSync,
  writeSync,
} from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { errors } from "../../lib/errors.js";

export const LOCK_FILE = "switchboard.process.lock";
/** How often the holder touches its lock file. */
export const HEARTBEAT_MS = 2_000;
/** A holder that cannot be checked by pid is gone once its lock file is this old. */
export const STALE_MS = 10_000;

/** Who holds a data dir: what the lock file says. */
export interface Holder {
  token: string;
  pid: number;
  host: string;
  /** Linux: /proc/sys/kernel/random/boot_id. */
  bootId?: string;
  /** Linux: the pid namespace (/proc/self/ns/pid), so a pid is only compared within one. */
  pidNamespace?: string;
  /** Linux: the process's start time in clock ticks since boot (/proc/<pid>/stat), against pid reuse. */
  startTicks?: string;
  /** `dev:ino` of the data dir the holder locked. */
  dir: string;
  sinceMs: number;
}

/** Tokens of the locks this process holds (a second open of a dir in one process is refused too). */
const heldHere = new Set<string>();

const readOr = <T>(read: () => T): T | undefined => {
  try {
    return read();
  } catch {
    return undefined;
  }
};

/** Linux: a process's state and start time (fields 3 and 22 of /proc/<pid>/stat). */
function statOf(pid: number | "self"): { state: string; startTicks: string } | undefined {
  const stat = readOr(() => readFileSync(`/proc/${pid}/stat`, "utf8"));
  if (stat === undefined) return undefined;
  // The command name (field 2) is in parentheses and may hold spaces.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const [state, startTicks] = [fields[0], fields[19]];
  return state !== undefined && startTicks !== undefined ? { state, startTicks } : undefined;
}

function pidRuns(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

function dirIdentity(dataDir: string): string {
  const st = statSync(dataDir);
  return `${st.dev}:${st.ino}`;
}

function self(dataDir: string): Holder {
  const bootId = readOr(() => readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim());
  const pidNamespace = readOr(() => readlinkSync("/proc/self/ns/pid"));
  const startTicks = statOf("self")?.startTicks;
  return {
    token: randomUUID(),
    pid: process.pid,
    host: hostname(),
    ...(bootId ? { bootId } : {}),
    ...(pidNamespace ? { pidNamespace } : {}),
    ...(startTicks ? { startTicks } : {}),
    dir: dirIdentity(dataDir),
    sinceMs: Date.now(),
  };
}

/** Why `holder` (found in the lock file, last touched at `touchedMs`) still holds the dir, or undefined. */
export function stillHeld(holder: Holder, touchedMs: number, me: Holder, nowMs: number): string | undefined {
  if (heldHere.has(holder.token)) return "this process has it open";
  if (holder.dir !== me.dir) return undefined; // a copy of another dir's lock file
  const sameView =
    holder.host === me.host && holder.bootId === me.bootId && holder.pidNamespace === me.pidNamespace;
  if (sameView) {
    if (holder.pid === me.pid) return undefined; // an earlier process with this pid (not this one)
    if (!pidRuns(holder.pid)) return undefined;
    const stat = statOf(holder.pid);
    if (stat?.state === "Z") return undefined; // exited, not yet reaped by its parent
    if (stat && holder.startTicks !== undefined && stat.startTicks !== holder.startTicks) return undefined;
    return "its process is running";
  }
  const age = nowMs - touchedMs;
  if (age >= STALE_MS) return undefined;
  return `it touched the lock ${Math.round(age / 1000)} s ago (it is taken over ${STALE_MS / 1000} s after the last touch)`;
}

function describe(h: Holder): string {
  return `pid ${h.pid} on host ${h.host}, since ${new Date(h.sinceMs).toISOString()}`;
}

/** The data dir held by this process; release() on close. */
export class DataDirLock {
  private readonly heartbeat: NodeJS.Timeout;
  private released = false;

  private constructor(
    readonly path: string,
    readonly holder: Holder,
    onLost: (err: Error) => void,
  ) {
    heldHere.add(holder.token);
    this.heartbeat = setInterval(() => {
      // Taken over (this process stalled past STALE_MS where only the touch vouches for it): another
      // process assigns seqs from its own memory now, so this one must stop writing at once.
      const current = readOr(() => JSON.parse(readFileSync(this.path, "utf8")) as Holder);
      if (current?.token !== this.holder.token) {
        clearInterval(this.heartbeat);
        onLost(
          errors.precondition(
            "DATA_DIR_IN_USE",
            `the lock on ${this.path} is no longer this process's${current ? ` (now ${describe(current)})` : " (removed)"}: stopping`,
          ),
        );
        return;
      }
      const now = new Date();
      readOr(() => utimesSync(this.path, now, now));
    }, HEARTBEAT_MS);
    this.heartbeat.unref();
  }

  /**
   * Takes `dataDir` for this process or throws (FAILED_PRECONDITION, DATA_DIR_IN_USE) naming the dir
   * and its holder. `exclusively` runs its callback under a lock every contender takes (LMDB's write
   * lock on the data dir's file).
   */
  static acquire(
    dataDir: string,
    exclusively: (check: () => void) => void,
    onLost: (err: Error) => void = () => undefined,
  ): DataDirLock {
    const path = join(dataDir, LOCK_FILE);
    const me = self(dataDir);
    exclusively(() => {
      const found = readOr(() => ({
        holder: JSON.parse(readFileSync(path, "utf8")) as Holder,
        touchedMs: statSync(path).mtimeMs,
      }));
      // An unreadable lock file cannot be from a holder: it is written whole, then renamed in place.
      if (found?.holder && typeof found.holder.token === "string") {
        const why = stillHeld(found.holder, found.touchedMs, me, Date.now());
        if (why !== undefined)
          throw errors.precondition(
            "DATA_DIR_IN_USE",
            `data dir ${dataDir} is in use by another Switchboard process (${describe(found.holder)}; ${why}); ` +
              `stop it first, or use another --data-dir (lock file ${path})`,
          );
      }
      const temporary = `${path}.${me.token}`;
      try {
        const fd = openSync(temporary, "w", 0o644);
        try {
          writeSync(fd, `${JSON.stringify(me)}\n`);
          fsyncSync(fd);
        } finally {
          closeSync(fd);
        }
        renameSync(temporary, path);
      } catch (err) {
        // Nothing left behind: a process restarted again and again on a full disk would leave one
        // file per start.
        readOr(() => unlinkSync(temporary));
        const code = (err as NodeJS.ErrnoException).code;
        throw errors.unavailable(
          "DATA_DIR_UNWRITABLE",
          `cannot write the lock file ${path}: ${(err as Error).message}` +
            (code === "ENOSPC" ? " (the data dir's disk is full: free space on it, then start again)" : ""),
          err,
        );
      }
    });
    return new DataDirLock(path, me, onLost);
  }

  /** Removes the lock file if it is still this process's (call while the database is still open). */
  release(): void {
    if (this.released) return;
    this.released = true;
    clearInterval(this.heartbeat);
    heldHere.delete(this.holder.token);
    const current = readOr(() => JSON.parse(readFileSync(this.path, "utf8")) as Holder);
    if (current?.token === this.holder.token) readOr(() => unlinkSync(this.path));
  }
}
