/**
 * The message path's writes (an append, its inbox entries, a consumer's offset), committed together
 * once per event-loop turn: group commit, one transaction and one fsync per turn.
 *
 * A small turn commits synchronously, on the event loop. lmdb-js's asynchronous writes hand each
 * write to LMDB's writer thread through a linked list of resolution records; a record still in the
 * list when two scavenges pass is promoted, and once dead it keeps the next record alive through
 * later scavenges, which promotes that one too, and so on. Measured outside the server: 6 % of all
 * allocation promoted with asynchronous writes against 0.7 % with synchronous transactions, all of it
 * garbage for the next major GC, whose pauses were the server's tail at 2,000 msgs/s. A synchronous
 * commit also spares the hand-off to another thread and back.
 *
 * A large turn (or any turn while an asynchronous one is still in flight, so that turns commit in
 * order) goes to LMDB's writer thread instead: a synchronous commit holds the event loop for its page
 * writes and fsync (0.7 ms for a small one here, about 2 ms for a turn of 15 messages), and at high
 * rates that wait, not the CPU, is what the loop cannot afford.
 */
import type { Database, Key, RootDatabase } from "lmdb";
import { errors } from "../../lib/errors.js";

/** How a queued write puts its values: synchronously inside the turn's transaction, or queued for it. */
export interface TurnWriter {
  put<K extends Key, V>(db: Database<V, K>, key: K, value: V): void;
}

const settle = () => undefined;

/**
 * A rejected promise that never counts as unhandled. A write's caller hands its promise to the
 * backend's guard (store.ts), which does not await it once another commit failed: the process is
 * already stopping for that failure, and this one must not stop it again as an unhandled rejection.
 * Whoever awaits it still sees the rejection.
 */
function refused(err: unknown): Promise<never> {
  const promise = Promise.reject(err);
  promise.catch(settle);
  return promise;
}

/**
 * Writes of a turn committed synchronously at most (a message costs about three, so about sixteen
 * messages). Measured at 5,000 msgs/s, server CPU per message and p99: limit 8, 159–163 µs and 15–26
 * ms; 24, 152–169 µs and 17–40 ms; 48, 144–164 µs (median 149) and 15–37 ms; 96, 144–150 µs but one
 * p99 of 64 ms in two runs; every turn, 130 µs, with p50 at 7,500/s at 32 ms (the loop waits on
 * fsyncs). Interleaved runs of 24 and 48 (bench:ab, five each): 2,000/s and 7,500/s alike.
 */
export const SYNC_WRITES_MAX = 48;

const SYNC: TurnWriter = {
  put: (db, key, value) => {
    db.putSync(key, value);
  },
};
const QUEUED: TurnWriter = {
  put: (db, key, value) => {
    void db.put(key, value); // the batch's promise reports the outcome
  },
};

export class TurnCommits {
  private writes: Array<(w: TurnWriter) => void> = [];
  private turn: { promise: Promise<void>; resolve: () => void; reject: (err: unknown) => void } | undefined;
  /** Asynchronous commits not yet resolved: until they are, later turns queue behind them. */
  private inFlight = 0;
  /**
   * Settles (rejecting if it or any turn before it failed) once the last turn handed to LMDB's writer
   * thread has: each asynchronous turn resolves only after the one before it resolved, so a turn that
   * LMDB committed after a failed one is never acknowledged (its seqs lie above the failed turn's).
   */
  private tail: Promise<void> = Promise.resolve();
  private closed = false;
  /**
   * The first failed commit. Later turns are refused: the message path assigns seqs and inbox
   * cursors in memory before its turn commits, so a turn committed after a failed one would leave a
   * gap below its seqs for good.
   */
  private failure: unknown;
  /** Turns committed each way (for tests and diagnostics). */
  readonly stats = { sync: 0, queued: 0 };

  constructor(private readonly root: RootDatabase) {}

  /**
   * Queues `apply` for this turn's transaction, after everything queued before it. Resolves once the
   * transaction is committed and on disk; rejects, like every write of that turn, if it fails.
   */
  write(apply: (w: TurnWriter) => void): Promise<void> {
    if (this.closed) return refused(errors.unavailable("STORAGE_CLOSED", "the database is closed"));
    if (this.failure !== undefined) return refused(this.failedEarlier());
    this.writes.push(apply);
    if (!this.turn) {
      let resolve!: () => void;
      let reject!: (err: unknown) => void;
      const promise = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      promise.catch(settle); // see refused()
      this.turn = { promise, resolve, reject };
      setImmediate(() => this.commit());
    }
    return this.turn.promise;
  }

  /** Commits what is queued (at the end of the turn, or now when closing). */
  commit(): void {
    const { writes, turn } = this;
    if (!turn) return;
    this.writes = [];
    this.turn = undefined;
    if (this.failure !== undefined) {
      turn.reject(this.failedEarlier());
      return;
    }
    if (this.inFlight === 0 && writes.length <= SYNC_WRITES_MAX) {
      try {
        this.root.transactionSync(() => {
          for (const apply of writes) apply(SYNC);
        });
        this.stats.sync++;
        turn.resolve();
      } catch (err) {
        this.failure ??= err;
        turn.reject(err);
      }
      return;
    }
    this.inFlight++;
    this.stats.queued++;
    let committed: Promise<unknown>;
    try {
      committed = this.root.batch(() => {
        for (const apply of writes) apply(QUEUED);
      });
    } catch (err) {
      committed = Promise.reject(err);
    }
    committed.then(
      () => {
        this.inFlight--;
      },
      (err: unknown) => {
        this.inFlight--;
        this.failure ??= err;
      },
    );
    // A turn queued behind one that fails may already be in LMDB's queue, and LMDB may commit it: it
    // still fails, because it resolves only after every turn before it has (those not yet queued are
    // refused, above). One promise per turn, not per write.
    const ordered = this.tail.then(
      () => committed,
      () => Promise.reject(this.failedEarlier()),
    );
    this.tail = ordered.then(settle);
    this.tail.catch(settle); // the turn's own promise reports it
    ordered.then(turn.resolve, (err: unknown) => {
      this.failure ??= err;
      turn.reject(err);
    });
  }

  /**
   * Settles once every write queued so far has settled, committed or failed (never rejects): what
   * the message path assigned in memory before then is on disk afterwards, or nothing is acked again.
   */
  settled(): Promise<void> {
    return (this.turn?.promise ?? this.tail).then(settle, settle);
  }

  /**
   * Refuses every later write: a commit failed elsewhere in the backend, and nothing is written after
   * one (what was queued for this turn is refused when it commits).
   */
  fail(err: unknown): void {
    this.failure ??= err;
  }

  private failedEarlier() {
    return errors.unavailable("STORAGE_FAILED", "an earlier commit failed", this.failure);
  }

  /** Commits what is queued and refuses more. */
  close(): void {
    this.commit();
    this.closed = true;
  }
}
