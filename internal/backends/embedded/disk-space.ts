/**
 * The free space of the file system that holds the data dir, watched so that new messages are refused
 * before the disk fills rather than after. A commit that fails for lack of space poisons the backend
 * and stops the process (index.ts: after it the in-memory counters could be ahead of the disk), and a
 * process restarted on a full disk stopped again at its first send, disconnecting everyone each time.
 *
 * Below the reserve, appends of new messages are refused (`STORAGE_FULL`, retryable) while everything
 * else goes on — sync, history, listings, receipts, presence, group changes, retention — on the
 * reserve; once the space is back (the reserve plus a tenth, so the state does not flap), messages
 * are taken again, with no restart. Checked every second, and near the reserve (less than twice it
 * free) also as new messages come, at most every 10 ms: checked outside found writes of 6.6 MB/s
 * filling a 2 MB reserve between two checks a second apart, the commit then failing for lack of space.
 */
import { statfsSync } from "node:fs";

export const DISK_CHECK_INTERVAL_MS = 1_000;
/** Near the reserve, how often a new message may measure the free space again. */
export const DISK_CHECK_NEAR_MS = 10;
/** Near the reserve: fewer than this many reserves free. */
const NEAR_RESERVES = 2;

/** Messages are taken again once the reserve and this part of it more are free (1/10). */
const RESUME_MARGIN_DIVISOR = 10;

/** Bytes an unprivileged process may still write on the file system that holds `path`. */
export type AvailableBytes = (path: string) => number;

export const statfsAvailableBytes: AvailableBytes = (path) => {
  const s = statfsSync(path);
  return s.bavail * s.bsize;
};

export interface DiskSpaceOptions {
  /** A path on the watched file system (the data dir). */
  path: string;
  /** Below this many free bytes new messages are refused; 0 turns the watch off. */
  reserveBytes: number;
  /** How free bytes are measured (statfs unless given: tests). */
  availableBytes?: AvailableBytes;
  intervalMs?: number;
  /** Called when messages start being refused (full) and when they are taken again. */
  onChange?: (full: boolean, availableBytes: number) => void;
  /** Called when the free space could not be measured (the last state is kept). */
  onError?: (err: unknown) => void;
  /** The clock the checks near the reserve are paced by (tests). */
  now?: () => number;
}

export class DiskSpace {
  private isFull = false;
  private available: number | undefined;
  private failed = false;
  private checkedAt = Number.NEGATIVE_INFINITY;
  private readonly timer: NodeJS.Timeout | undefined;
  private readonly now: () => number;

  constructor(private readonly o: DiskSpaceOptions) {
    this.now = o.now ?? Date.now;
    if (o.reserveBytes <= 0) return;
    this.check(); // before the first write: a process started on a full disk refuses from the start
    this.timer = setInterval(() => this.check(), o.intervalMs ?? DISK_CHECK_INTERVAL_MS);
    this.timer.unref();
  }

  /** Whether new messages are refused now (near the reserve, measured again if not within 10 ms). */
  get full(): boolean {
    const near = this.available !== undefined && this.available < NEAR_RESERVES * this.o.reserveBytes;
    if (near && this.now() - this.checkedAt >= DISK_CHECK_NEAR_MS) this.check();
    return this.isFull;
  }

  /** Free bytes at the last check (undefined: not watched, or never measured). */
  get availableBytes(): number | undefined {
    return this.available;
  }

  get reserveBytes(): number {
    return this.o.reserveBytes;
  }

  /** Measures the free space now and updates the state (also run every interval). */
  check(): void {
    if (this.o.reserveBytes <= 0) return;
    this.checkedAt = this.now();
    let available: number;
    try {
      available = (this.o.availableBytes ?? statfsAvailableBytes)(this.o.path);
    } catch (err) {
      // Reported once per run of failures; the state stays as it was (the disk is not known full).
      if (!this.failed) this.o.onError?.(err);
      this.failed = true;
      return;
    }
    this.failed = false;
    this.available = available;
    const reserve = this.o.reserveBytes;
    const full = available < (this.isFull ? reserve + Math.floor(reserve / RESUME_MARGIN_DIVISOR) : reserve);
    if (full === this.isFull) return;
    this.isFull = full;
    this.o.onChange?.(full, available);
  }

  close(): void {
    clearInterval(this.timer);
  }
}
