/**
 * Calls nobody waits for (a push notification, an event relayed to members' devices), asked again
 * after fixed waits while they fail in a way a later attempt may get past: a peer restarting is a
 * pause, not a loss. Bounded: a peer down for long holds at most `waitingMax` retries, and every
 * call given up is reported once, with why.
 *
 * A call may name a key: a newer call with the same key replaces the retries of an older one (a
 * group's newer state, a higher receipt watermark), so a late retry never tells devices something
 * older than what a newer call told them.
 */
import { Code, SwitchboardError } from "./errors.js";

/** Why a call was given up: failed (not retryable, or out of attempts), retries_full, closed. */
export type DropReason = "failed" | "retries_full" | "closed";

export interface RetryLaterOptions {
  /** The wait before each retry; after the last, a failure is final. */
  delaysMs: readonly number[];
  /** Retries waiting at most; past it a failure is final ("retries_full"). */
  waitingMax: number;
  /** Failures worth another attempt (default: RETRYABLE_CODES). */
  retryable?: (err: unknown) => boolean;
  /** Told each time a failed call is put to wait for another attempt (for a metric). */
  retrying?: (err: unknown) => void;
}

/** Told once when a call is given up (not when a newer call of its key replaced it). */
export type Dropped = (reason: DropReason, err: unknown, attempts: number) => void;

/** Failures a repeated call may get past; the others (INVALID_ARGUMENT, PERMISSION_DENIED, ...) would fail again. */
export const RETRYABLE_CODES: ReadonlySet<Code> = new Set([
  Code.UNAVAILABLE,
  Code.DEADLINE_EXCEEDED,
  Code.RESOURCE_EXHAUSTED,
  Code.ABORTED,
  Code.INTERNAL, // also what a store's own error is before it is named
  Code.UNKNOWN,
]);

/**
 * An event relayed to members' devices (a receipt, a group change) that no router took: again after
 * these waits, about 30 s, past a router's restart (ready in seconds) and its consumer group's
 * session timeout; at most 10,000 waiting.
 */
export const EVENT_RELAY_RETRIES: RetryLaterOptions = {
  delaysMs: [1_000, 2_000, 4_000, 8_000, 16_000],
  waitingMax: 10_000,
};

const retryableCode = (err: unknown) => RETRYABLE_CODES.has(SwitchboardError.from(err).code);

interface Call {
  run: () => Promise<unknown>;
  dropped: Dropped;
  key: string | undefined;
}

export class RetryLater {
  private readonly waiting = new Map<NodeJS.Timeout, Call>();
  private readonly waitingByKey = new Map<string, NodeJS.Timeout>();
  /** The newest call of each key not yet settled (succeeded or given up). */
  private readonly newest = new Map<string, Call>();
  private closed = false;

  constructor(private readonly options: RetryLaterOptions) {}

  /** Retries waiting now. */
  get size(): number {
    return this.waiting.size;
  }

  /**
   * Calls `run` now, and again after each wait while it fails retryably; `dropped` is told if it is
   * given up. A call with a `key` replaces the waiting retry of an older call with that key.
   */
  run(run: () => Promise<unknown>, dropped: Dropped, key?: string): void {
    const call: Call = { run, dropped, key };
    if (key !== undefined) {
      const older = this.waitingByKey.get(key);
      if (older) this.forget(older);
      this.newest.set(key, call);
    }
    this.attempt(call, 0);
  }

  private attempt(call: Call, retries: number): void {
    const { key } = call;
    call.run().then(
      () => this.settle(call),
      (err: unknown) => {
        // A newer call of this key ran since: it stands for this one, whatever becomes of it.
        if (key !== undefined && this.newest.get(key) !== call) return;
        const drop = (reason: DropReason) => {
          this.settle(call);
          call.dropped(reason, err, retries + 1);
        };
        const delayMs = this.options.delaysMs[retries];
        if (delayMs === undefined || !(this.options.retryable ?? retryableCode)(err)) return drop("failed");
        if (this.closed) return drop("closed");
        if (this.waiting.size >= this.options.waitingMax) return drop("retries_full");
        const timer = setTimeout(() => {
          this.forget(timer);
          this.attempt(call, retries + 1);
        }, delayMs);
        this.waiting.set(timer, call);
        if (key !== undefined) this.waitingByKey.set(key, timer);
        this.options.retrying?.(err);
      },
    );
  }

  private settle(call: Call): void {
    if (call.key !== undefined && this.newest.get(call.key) === call) this.newest.delete(call.key);
  }

  private forget(timer: NodeJS.Timeout): void {
    clearTimeout(timer);
    const key = this.waiting.get(timer)?.key;
    this.waiting.delete(timer);
    if (key !== undefined && this.waitingByKey.get(key) === timer) this.waitingByKey.delete(key);
  }

  /** Gives up every waiting retry (each told "closed"), and retries none after this. */
  close(): void {
    this.closed = true;
    for (const [timer, call] of [...this.waiting]) {
      this.forget(timer);
      this.settle(call);
      call.dropped("closed", undefined, 0);
    }
  }
}
