/**
 * Unlogged writes asked for in the same turn of the event loop, sent as few requests as possible.
 *
 * The owners of the distributed path (sequencer, inbox owner) handle every partition of a Kafka fetch
 * at once, and each partition's batch is small (1-2 messages at 1,000 msgs/s over 12 partitions), so
 * written one request per partition batch and step, the node spent its CPU on requests rather than
 * rows (about three writes per 1:1 message). Writes asked for in one turn are gathered and sent at
 * its end (setImmediate) as unlogged batches of many partitions.
 *
 * A write is a list of *units*: the statements of one partition, which stay in one batch and so remain
 * one mutation, applied atomically per replica. Write timestamps are the statements' own (`USING
 * TIMESTAMP ?`), never the request's, so writes fenced by different epochs can share a request.
 *
 * Only units whose partitions live on the same replicas share a batch (the unit names its partition
 * key; the driver's token map says where it lives): the token-aware driver sends the batch to one of
 * those replicas, which applies every mutation locally and forwards each to the same peers it would
 * have forwarded a single write to, so a batch never makes a coordinator fan out to nodes that a single
 * write would have spared. On one node, or with as many nodes as replicas, that is every unit.
 *
 * Limits: a batch of several units holds at most `statementsMax` statements and about `bytesMax`
 * bytes (Cassandra warns above `batch_size_warn_threshold`, 5 KiB by default, and refuses a
 * multi-partition batch above `batch_size_fail_threshold`, 50 KiB); a unit larger than that is sent
 * alone (a single-partition batch is exempt from both). A write resolves once every request holding
 * one of its units succeeded and rejects with the first that failed; a failed request fails only the
 * writes that had a unit in it. Every statement must be idempotent: the driver may retry the request.
 */
import { groupBy, type Statement } from "./session.js";

export interface TurnWritesLimits {
  /** Statements in a batch of several units. */
  statementsMax: number;
  /** Approximate bytes (parameters plus a fixed cost per statement) in a batch of several units. */
  bytesMax: number;
}

/** Sends one request: a single statement, or an unlogged batch. */
export type SendWrite = (what: string, statements: Statement[]) => Promise<unknown>;
/** The replicas of a partition (by its routing key) as one string: units with equal ones may share. */
export type PlacementOf = (routingKey: Buffer) => string;

/** The statements of one partition, and that partition's routing key (`routingKey(...)`). */
export interface Unit {
  key: Buffer;
  statements: Statement[];
}

interface Pending {
  units: Unit[];
  /** The write each unit belongs to. */
  owners: number[];
  whats: string[];
  settle: Array<{ resolve: () => void; reject: (err: unknown) => void }>;
}

/**
 * Per statement beyond its parameters (row and cell headers, timestamps): a batch of 80 statements
 * estimated at 4 KiB with 16 here weighed 5.25 KiB on the node.
 */
const STATEMENT_OVERHEAD_BYTES = 40;

export class TurnWrites {
  private pending: Pending | undefined;
  /** Requests sent and writes asked for, for tests and diagnostics. */
  readonly counts = { writes: 0, requests: 0 };

  constructor(
    private readonly send: SendWrite,
    private readonly limits: TurnWritesLimits,
    private readonly placementOf: PlacementOf = () => "",
  ) {}

  write(what: string, units: Unit[]): Promise<void> {
    const nonEmpty = units.filter((u) => u.statements.length > 0);
    if (nonEmpty.length === 0) return Promise.resolve();
    this.counts.writes++;
    if (!this.pending) {
      this.pending = { units: [], owners: [], whats: [], settle: [] };
      setImmediate(() => this.flush());
    }
    const p = this.pending;
    const owner = p.settle.length;
    const done = new Promise<void>((resolve, reject) => p.settle.push({ resolve, reject }));
    p.whats.push(what);
    for (const unit of nonEmpty) {
      p.units.push(unit);
      p.owners.push(owner);
    }
    return done;
  }

  private flush(): void {
    const p = this.pending;
    this.pending = undefined;
    if (!p) return;
    const byPlacement = groupBy(p.units.keys(), (i) => this.placementOf(p.units[i]!.key));
    const requestsOf: Array<Array<Promise<unknown>>> = p.settle.map(() => []);
    for (const group of byPlacement.values()) {
      for (const cut of cutUnits(
        group.map((i) => p.units[i]!.statements),
        this.limits,
      )) {
        const indexes = cut.map((j) => group[j]!);
        const owners = [...new Set(indexes.map((i) => p.owners[i]!))];
        const what = [...new Set(owners.map((o) => p.whats[o]!))].join(" + ");
        this.counts.requests++;
        const request = this.send(
          what,
          indexes.flatMap((i) => p.units[i]!.statements),
        );
        for (const o of owners) requestsOf[o]!.push(request);
      }
    }
    for (const [o, settle] of p.settle.entries())
      Promise.all(requestsOf[o]!).then(() => settle.resolve(), settle.reject);
  }
}

/**
 * Units cut into batches (indexes into `units`, in order): a unit never split, a batch of several
 * units within both limits, a unit above either limit alone.
 */
export function cutUnits(units: readonly Statement[][], limits: TurnWritesLimits): number[][] {
  const out: number[][] = [];
  let batch: number[] = [];
  let statements = 0;
  let bytes = 0;
  for (const [i, unit] of units.entries()) {
    const size = unitBytes(unit);
    if (
      batch.length > 0 &&
      (statements + unit.length > limits.statementsMax || bytes + size > limits.bytesMax)
    ) {
      out.push(batch);
      batch = [];
      statements = 0;
      bytes = 0;
    }
    batch.push(i);
    statements += unit.length;
    bytes += size;
  }
  if (batch.length > 0) out.push(batch);
  return out;
}

/** About what a unit weighs in a mutation: its parameters' bytes and a fixed cost per statement. */
export function unitBytes(unit: readonly Statement[]): number {
  let bytes = 0;
  for (const s of unit) {
    bytes += STATEMENT_OVERHEAD_BYTES;
    for (const p of s.params) bytes += paramBytes(p);
  }
  return bytes;
}

function paramBytes(p: unknown): number {
  if (typeof p === "string") return p.length <= 64 ? p.length : Buffer.byteLength(p);
  if (p instanceof Uint8Array) return p.byteLength;
  return 8;
}

/**
 * A partition key as Cassandra's routing key: one column as its bytes; several as each column's
 * length (2 bytes), bytes and a zero byte. Text is UTF-8; numbers are `bigint` columns (8 bytes).
 */
export function routingKey(...columns: Array<string | number | bigint>): Buffer {
  const parts = columns.map((c) => {
    if (typeof c === "string") return Buffer.from(c, "utf8");
    const b = Buffer.alloc(8);
    b.writeBigInt64BE(BigInt(c));
    return b;
  });
  if (parts.length === 1) return parts[0]!;
  const out = Buffer.alloc(parts.reduce((n, p) => n + p.length + 3, 0));
  let at = 0;
  for (const p of parts) {
    at = out.writeUInt16BE(p.length, at);
    at += p.copy(out, at);
    at = out.writeUInt8(0, at);
  }
  return out;
}
