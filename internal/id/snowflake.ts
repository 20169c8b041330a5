/**
 * Snowflake ids: 41 bits of milliseconds since EPOCH_MS, 10 bits of worker id, 12 bits of sequence.
 * Ids from one generator strictly increase. When the clock goes backwards the generator keeps
 * minting from its own last timestamp while the gap is small (the sequence space of one
 * millisecond, then it borrows the next millisecond), and fails loudly when the gap exceeds
 * `maxBackwardsMs`: it never hands out an id lower than one it already gave.
 *
 * Across restarts that needs the time ids were issued up to, which memory does not keep: given
 * `floorMs` (a persisted high-water mark, high-water.ts), the generator mints no id below that
 * millisecond, and runs on its own clock from there if the wall clock is behind it.
 */
import { assert } from "../lib/errors.js";

export const EPOCH_MS = 1_704_067_200_000; // 2024-01-01T00:00:00Z
export const WORKER_BITS = 10n;
export const SEQUENCE_BITS = 12n;
export const WORKER_MAX = (1 << Number(WORKER_BITS)) - 1;
const SEQUENCE_MASK = (1 << Number(SEQUENCE_BITS)) - 1;

export class ClockMovedBackwardsError extends Error {
  override readonly name = "ClockMovedBackwardsError";
}

export interface SnowflakeOptions {
  workerId: number;
  /** Source of milliseconds since the Unix epoch (injectable for tests). */
  now?: () => number;
  /** Largest backwards clock jump absorbed by running ahead of the wall clock. */
  maxBackwardsMs?: number;
  /** No id is minted in a millisecond below this one (ids of an earlier run may reach up to it). */
  floorMs?: number;
}

export class Snowflake {
  readonly workerId: number;
  private readonly now: () => number;
  private readonly maxBackwardsMs: number;
  private lastMs = -1;
  private sequence = 0;
  private lastId = -1n;

  constructor(options: SnowflakeOptions) {
    if (!Number.isInteger(options.workerId) || options.workerId < 0 || options.workerId > WORKER_MAX) {
      throw new RangeError(`worker id must be an integer in [0, ${WORKER_MAX}], got ${options.workerId}`);
    }
    this.workerId = options.workerId;
    this.now = options.now ?? Date.now;
    this.maxBackwardsMs = options.maxBackwardsMs ?? 5_000;
    if (options.floorMs !== undefined && options.floorMs > EPOCH_MS) {
      // As if the last id had been the floor's millisecond's last one: the next is the floor's first.
      this.lastMs = options.floorMs - 1;
      this.sequence = SEQUENCE_MASK;
    }
  }

  /** The millisecond of the last id minted (-1 before the first). */
  get lastMillisecond(): number {
    return this.lastMs;
  }

  /** The next id as a bigint. */
  nextBigInt(): bigint {
    let ms = this.now();
    if (ms < this.lastMs) {
      if (this.lastMs - ms > this.maxBackwardsMs) {
        throw new ClockMovedBackwardsError(
          `clock moved backwards by ${this.lastMs - ms} ms (limit ${this.maxBackwardsMs} ms); refusing to mint ids`,
        );
      }
      ms = this.lastMs; // run on our own clock until the wall clock catches up
    }
    if (ms === this.lastMs) {
      this.sequence = (this.sequence + 1) & SEQUENCE_MASK;
      if (this.sequence === 0) ms = this.lastMs + 1; // sequence exhausted: borrow the next millisecond
    } else {
      this.sequence = 0;
    }
    this.lastMs = ms;
    const elapsed = BigInt(ms - EPOCH_MS);
    assert(elapsed >= 0n && elapsed < 1n << 41n, "snowflake timestamp out of range");
    const id =
      (elapsed << (WORKER_BITS + SEQUENCE_BITS)) |
      (BigInt(this.workerId) << SEQUENCE_BITS) |
      BigInt(this.sequence);
    assert(id > this.lastId, "snowflake ids must strictly increase");
    this.lastId = id;
    return id;
  }

  /**
   * Mints only ids above `id` from now on: an id of this worker that an earlier run gave out (its
   * callers remember it), so a run whose clock is behind that id's millisecond does not mint it
   * again. It runs on its own clock from there while the wall clock is behind by at most
   * maxBackwardsMs, and refuses to mint (ClockMovedBackwardsError) while it is behind by more.
   */
  mintAbove(id: bigint): void {
    const { ms, workerId, sequence } = decodeSnowflake(id);
    assert(workerId === this.workerId, "mintAbove: an id of another worker");
    // Compared with (lastMs, sequence), not lastId: a generator started at a floor has minted nothing
    // yet, and its floor is in those.
    if (ms < this.lastMs || (ms === this.lastMs && sequence <= this.sequence)) return;
    this.lastMs = ms;
    this.sequence = sequence;
    this.lastId = id;
  }

  /** The next id as a decimal string (the form used on the wire). */
  next(): string {
    return this.nextBigInt().toString();
  }

  /** `count` strictly increasing ids. */
  batch(count: number): string[] {
    const out = new Array<string>(count);
    for (let i = 0; i < count; i++) out[i] = this.next();
    return out;
  }
}

/** Splits an id into its parts (for tests and debugging). */
export function decodeSnowflake(id: string | bigint): { ms: number; workerId: number; sequence: number } {
  const v = BigInt(id);
  return {
    ms: Number(v >> (WORKER_BITS + SEQUENCE_BITS)) + EPOCH_MS,
    workerId: Number((v >> SEQUENCE_BITS) & BigInt(WORKER_MAX)),
    sequence: Number(v & BigInt(SEQUENCE_MASK)),
  };
}
