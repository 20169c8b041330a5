/**
 * OwnershipStore over `partition_owners` (partition (stream, partition); epoch, owner, claimed_at): the
 * fence of ADR 0002. A claim is the only conditional write: read the epoch, then
 * `UPDATE ... SET epoch = e' IF epoch = e` (or `INSERT ... IF NOT EXISTS` for the first claim), with
 * e' = max(e + 1, now in µs) so that epochs keep rising across claims and can be used as write
 * timestamps. A lost race (another claimant) or an unknown outcome (timeout) re-reads and tries again.
 *
 * `current` is a plain LOCAL_QUORUM read: a claim's Paxos commit is written at that level too, so
 * a check that starts after a claim completed sees it. An owner checks after its writes and before it
 * acknowledges them: if a successor claimed in between, the successor's reads of the owner's rows
 * happened after them, or the owner sees the successor's epoch and acknowledges nothing.
 *
 * Checks share reads: every partition of a fetch finishes its writes at about the same time, so the
 * checks of one stream asked while no read of it is in flight go out together as one read (on the next
 * turn of the event loop), and those asked during a read wait for the next one. Either way the read
 * that answers a check is sent after the check was asked, that is after its owner's writes completed,
 * which is all the fence needs.
 */
import { hostname } from "node:os";
import type { OwnershipStore } from "../types.js";
import { backoff, contended, isUnavailable, type Session, toLong } from "./session.js";

const CLAIM_ATTEMPTS_MAX = 16;
/** Partitions one shared epoch read asks for at most (IN on the last partition key column). */
const CHECK_PARTITIONS_MAX = 100;

interface WaitingCheck {
  partition: number;
  resolve: (epoch: bigint | undefined) => void;
  reject: (err: unknown) => void;
}

export class CassandraOwnershipStore implements OwnershipStore {
  private readonly q: ReturnType<typeof statements>;
  /** Checks waiting for the next shared read of their stream, and the streams with a read in flight. */
  private readonly waiting = new Map<string, WaitingCheck[]>();
  private readonly reading = new Set<string>();
  /** Claims made (each one Paxos round, plus retries). */
  readonly stats = { claims: 0, conflicts: 0 };

  constructor(private readonly s: Session) {
    this.q = statements(s);
  }

  current(stream: string, partition: number): Promise<bigint | undefined> {
    return new Promise((resolve, reject) => {
      let list = this.waiting.get(stream);
      if (!list) {
        list = [];
        this.waiting.set(stream, list);
      }
      list.push({ partition, resolve, reject });
      if (list.length === 1 && !this.reading.has(stream)) setImmediate(() => void this.readShared(stream));
    });
  }

  /** Answers every check of `stream` waiting now with one read (per CHECK_PARTITIONS_MAX partitions). */
  private async readShared(stream: string): Promise<void> {
    const list = this.waiting.get(stream);
    if (!list || this.reading.has(stream)) return;
    this.waiting.delete(stream);
    this.reading.add(stream);
    try {
      const partitions = [...new Set(list.map((w) => w.partition))];
      const epochs = new Map<number, bigint>();
      for (let i = 0; i < partitions.length; i += CHECK_PARTITIONS_MAX) {
        const result = await this.s.execute(
          "partition_owners: read epochs",
          this.q.readMany,
          [stream, partitions.slice(i, i + CHECK_PARTITIONS_MAX)],
          { idempotent: true },
        );
        for (const row of result.rows) {
          const value = row.get("epoch");
          if (value !== null && value !== undefined)
            epochs.set(Number(row.get("partition")), BigInt(String(value)));
        }
      }
      for (const w of list) w.resolve(epochs.get(w.partition));
    } catch (err) {
      for (const w of list) w.reject(err);
    } finally {
      this.reading.delete(stream);
      // Checks asked during the read: the next read, sent now (after every one of them was asked).
      if (this.waiting.has(stream)) void this.readShared(stream);
    }
  }

  async claim(stream: string, partition: number, owner = defaultOwner()): Promise<bigint> {
    let lastError: unknown;
    for (let attempt = 1; attempt <= CLAIM_ATTEMPTS_MAX; attempt++) {
      try {
        const seen = await this.current(stream, partition);
        const now = BigInt(Date.now()) * 1000n;
        const next = seen === undefined || now > seen ? now : seen + 1n;
        const result =
          seen === undefined
            ? await this.s.execute(
                "partition_owners: first claim (LWT)",
                this.q.insert,
                [stream, partition, toLong(next), owner, new Date()],
                { idempotent: false },
              )
            : await this.s.execute(
                "partition_owners: claim (LWT)",
                this.q.update,
                [toLong(next), owner, new Date(), stream, partition, toLong(seen)],
                { idempotent: false },
              );
        this.stats.claims++;
        if (result.wasApplied()) return next;
        this.stats.conflicts++;
      } catch (err) {
        if (!isUnavailable(err)) throw err;
        lastError = err; // outcome unknown: the next read shows whether it applied (then we re-claim)
      }
      await backoff(attempt);
    }
    throw contended(`partition_owners: claim ${stream}/${partition}`, CLAIM_ATTEMPTS_MAX, lastError);
  }

  async close(): Promise<void> {}
}

function defaultOwner(): string {
  return `${hostname()}/${process.pid}`;
}

function statements(s: Session) {
  const t = s.table("partition_owners");
  return {
    readMany: `SELECT partition, epoch FROM ${t} WHERE stream = ? AND partition IN ?`,
    insert: `INSERT INTO ${t} (stream, partition, epoch, owner, claimed_at) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS`,
    update:
      `UPDATE ${t} SET epoch = ?, owner = ?, claimed_at = ? WHERE stream = ? AND partition = ? ` +
      "IF epoch = ?",
  };
}
