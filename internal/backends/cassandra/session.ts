/**
 * The thin layer every Cassandra store goes through: one `cassandra-driver` Client, fully qualified
 * table names, prepared statements, the configured consistency levels, an `isIdempotent` flag on every
 * call, and one error mapping (driver errors become SwitchboardErrors that name the statement).
 */

import type { Client, QueryOptions, types } from "cassandra-driver";
import cassandra from "cassandra-driver";
import { Code, errors, invariantViolated, SwitchboardError } from "../../lib/errors.js";
import { Limiter } from "../../lib/limiter.js";
import { context, inSpan, SpanKind, trace, tracing } from "../../lib/tracing.js";
import { ReplicaCache } from "./replica-cache.js";
import { TurnWrites } from "./turn-writes.js";

export type ConsistencyName = "ONE" | "LOCAL_ONE" | "QUORUM" | "LOCAL_QUORUM" | "EACH_QUORUM" | "ALL";
export type SerialConsistencyName = "SERIAL" | "LOCAL_SERIAL";

const { consistencies, responseErrorCodes } = cassandra.types;

const CONSISTENCY: Record<ConsistencyName, number> = {
  ONE: consistencies.one,
  LOCAL_ONE: consistencies.localOne,
  QUORUM: consistencies.quorum,
  LOCAL_QUORUM: consistencies.localQuorum,
  EACH_QUORUM: consistencies.eachQuorum,
  ALL: consistencies.all,
};
const SERIAL_CONSISTENCY: Record<SerialConsistencyName, number> = {
  SERIAL: consistencies.serial,
  LOCAL_SERIAL: consistencies.localSerial,
};

export interface ConsistencyOptions {
  /** Reads and writes (including the commit phase of LWTs). Default LOCAL_QUORUM. */
  level?: ConsistencyName;
  /** The Paxos phase of lightweight transactions. Default LOCAL_SERIAL. */
  serial?: SerialConsistencyName;
}

export type Row = types.Row;
export type Params = readonly unknown[];
export interface Statement {
  query: string;
  params: Params;
}

/** What a call needs beyond the statement: whether the driver may retry or speculatively re-run it. */
export interface CallOptions {
  idempotent: boolean;
  fetchSize?: number;
  pageState?: string;
}

/** Requests this session sent, by kind: what the benchmarks divide by messages. */
export interface RequestCounts {
  reads: number;
  writes: number;
  /** Batches (logged or not) without conditions: one request each, however many statements. */
  batches: number;
  /** Requests with a condition (IF ...): each is a Paxos round. */
  lwts: number;
  /** Requests waiting now for a place to be sent (REQUESTS_IN_FLIGHT_MAX in flight). */
  readonly waiting: number;
}

export type RequestKind = "read" | "write" | "batch" | "lwt";
/** Told of every request when it completes: its kind, its time in seconds, and whether it failed. */
export type RequestTimer = (kind: RequestKind, seconds: number, failed: boolean) => void;

const CONDITIONAL = /\bIF\s+(NOT\s+EXISTS|EXISTS|[a-z_]+\s*(=|<|>|!=))/i;

/** Server errors after which the node or replica set is (perhaps briefly) not serving: retry later. */
const UNAVAILABLE_CODES = new Set<number>([
  responseErrorCodes.serverError,
  responseErrorCodes.unavailableException,
  responseErrorCodes.overloaded,
  responseErrorCodes.isBootstrapping,
  responseErrorCodes.truncateError,
  responseErrorCodes.writeTimeout,
  responseErrorCodes.readTimeout,
  responseErrorCodes.readFailure,
  responseErrorCodes.writeFailure,
  0x1700, // CAS_WRITE_UNKNOWN (protocol v5)
]);

function driverMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/**
 * Maps anything a driver call threw to a SwitchboardError naming `what` (table and operation):
 * UNAVAILABLE / STORAGE_UNAVAILABLE when the node, a replica or the connection is not serving (the
 * caller may retry), INTERNAL / STORAGE_ERROR for anything else (a bad statement, a schema mismatch).
 */
export function storageError(what: string, err: unknown): SwitchboardError {
  if (err instanceof SwitchboardError) return err;
  const e = cassandra.errors;
  // The driver's text (hosts, addresses, inner errors with their stacks) is for this process's
  // logs; a client is told what failed and how.
  const message = `${what}: ${driverMessage(err)}`;
  if (
    err instanceof e.NoHostAvailableError ||
    err instanceof e.OperationTimedOutError ||
    err instanceof e.BusyConnectionError ||
    (err instanceof e.ResponseError && UNAVAILABLE_CODES.has(err.code))
  ) {
    return new SwitchboardError(Code.UNAVAILABLE, "STORAGE_UNAVAILABLE", message, {
      cause: err,
      retryAfterMs: 1_000,
      publicMessage: `${what}: Cassandra did not answer; retry`,
    });
  }
  return new SwitchboardError(Code.INTERNAL, "STORAGE_ERROR", message, {
    cause: err,
    publicMessage: `${what}: the store failed`,
  });
}

/** True for errors after which a conditional write may or may not have been applied. */
export function isUnavailable(err: unknown): boolean {
  return err instanceof SwitchboardError && err.reason === "STORAGE_UNAVAILABLE";
}

const KEYSPACE_NAME = /^[a-z][a-z0-9_]{0,47}$/;

export function checkKeyspaceName(keyspace: string): void {
  if (!KEYSPACE_NAME.test(keyspace))
    throw errors.invalid(
      "INVALID_KEYSPACE",
      `keyspace ${JSON.stringify(keyspace)} must match ${KEYSPACE_NAME}`,
    );
}

/**
 * Requests of one client in flight at once; beyond it they queue here. The driver refuses a request
 * outright (BusyConnectionError) once a connection has 2,048 in flight, and with one connection per
 * node a burst from many callers together (each bounded on its own) could reach that: a group's
 * message to many offline members once made push read their settings with 3,800 requests at once,
 * and a member being added in that second failed with STORAGE_UNAVAILABLE.
 */
export const REQUESTS_IN_FLIGHT_MAX = 1_024;
/** Requests of merged turn writes in flight at once (beyond it they queue). */
const TURN_WRITES_IN_FLIGHT_MAX = 32;
/** Partitions whose replicas are remembered, and for how long (a few MB at most). */
const REPLICA_CACHE_LIMITS = { maxKeys: 100_000, maxAgeMs: 60_000 };
/** Batches of several partitions stay below Cassandra's default warn threshold (5 KiB). */
const TURN_WRITES_LIMITS = { statementsMax: 200, bytesMax: 4 * 1024 };

export class Session {
  private readonly consistency: number;
  private readonly serialConsistency: number;
  private closed = false;
  /** Requests sent, by kind (counted when sent, whether they succeed or not), and those waiting. */
  readonly requests: RequestCounts;
  private readonly timers: RequestTimer[] = [];
  private readonly turnWriteLimiter = new Limiter(TURN_WRITES_IN_FLIGHT_MAX);
  /** Every request takes a place here before it is sent (REQUESTS_IN_FLIGHT_MAX). */
  private readonly requestSlots: Limiter;
  /** Where the partitions of merged turn writes live, hashed once per partition (replica-cache.ts). */
  private readonly replicas = new ReplicaCache(REPLICA_CACHE_LIMITS);
  /**
   * Unlogged, idempotent writes of the same turn merged into few requests (turn-writes.ts): the path
   * of every message goes through it. Statements carry their own write timestamps.
   */
  readonly turnWrites = new TurnWrites(
    (what, statements) =>
      this.turnWriteLimiter.run(() =>
        statements.length === 1
          ? this.execute(what, statements[0]!.query, statements[0]!.params, { idempotent: true })
          : this.batch(what, statements, { idempotent: true, logged: false }),
      ),
    TURN_WRITES_LIMITS,
    (key) => this.placementOf(key),
  );

  constructor(
    readonly client: Client,
    readonly keyspace: string,
    consistency: ConsistencyOptions = {},
  ) {
    checkKeyspaceName(keyspace);
    const slots = new Limiter(REQUESTS_IN_FLIGHT_MAX);
    this.requestSlots = slots;
    this.requests = {
      reads: 0,
      writes: 0,
      batches: 0,
      lwts: 0,
      get waiting() {
        return slots.waiting;
      },
    };
    this.replicas.attach(client);
    this.consistency = CONSISTENCY[consistency.level ?? "LOCAL_QUORUM"];
    this.serialConsistency = SERIAL_CONSISTENCY[consistency.serial ?? "LOCAL_SERIAL"];
  }

  /**
   * The replicas of a partition, as the driver's token map has them. Before the map is known (or
   * if the driver cannot place the key) every partition counts as placed alike: batches then only
   * lose the routing refinement, never a write.
   */
  private placementOf(routingKey: Buffer): string {
    let hosts: Array<{ address: string }> | null;
    try {
      hosts = this.replicas.replicas(this.keyspace, routingKey);
    } catch {
      return "";
    }
    if (!hosts || hosts.length === 0) return "";
    if (hosts.length === 1) return hosts[0]!.address;
    return hosts
      .map((h) => h.address)
      .sort()
      .join(",");
  }

  /** `keyspace.name`: statements never depend on a session's current keyspace. */
  table(name: string): string {
    return `${this.keyspace}.${name}`;
  }

  private options(call: CallOptions): QueryOptions {
    const options: QueryOptions = {
      prepare: true,
      consistency: this.consistency,
      serialConsistency: this.serialConsistency,
      isIdempotent: call.idempotent,
    };
    if (call.fetchSize !== undefined) options.fetchSize = call.fetchSize;
    if (call.pageState !== undefined) options.pageState = call.pageState;
    return options;
  }

  private checkOpen(what: string): void {
    if (this.closed)
      throw errors.unavailable("STORAGE_UNAVAILABLE", `${what}: the Cassandra store is closed`);
  }

  /** Calls `timer` when each request completes (metrics). */
  timeRequests(timer: RequestTimer): void {
    this.timers.push(timer);
  }

  private async timed<T>(kind: RequestKind, what: string, send: () => Promise<T>): Promise<T> {
    // A request made for a traced batch or request is a span of it (none for background work).
    if (tracing.on && trace.getSpan(context.active()))
      return inSpan(
        what,
        {
          kind: SpanKind.CLIENT,
          attributes: {
            "db.system.name": "cassandra",
            "db.namespace": this.keyspace,
            "db.operation.name": kind,
          },
        },
        () => this.measured(kind, what, send),
      );
    return this.measured(kind, what, send);
  }

  /** Sends once a place is free; the time measured is the request's own, not its wait. */
  private measured<T>(kind: RequestKind, what: string, send: () => Promise<T>): Promise<T> {
    return this.requestSlots.run(() => this.sent(kind, what, send));
  }

  private async sent<T>(kind: RequestKind, what: string, send: () => Promise<T>): Promise<T> {
    if (this.timers.length === 0) {
      try {
        return await send();
      } catch (err) {
        throw storageError(what, err);
      }
    }
    const started = performance.now();
    let failed = true;
    try {
      const result = await send();
      failed = false;
      return result;
    } catch (err) {
      throw storageError(what, err);
    } finally {
      const seconds = (performance.now() - started) / 1000;
      for (const timer of this.timers) timer(kind, seconds, failed);
    }
  }

  async execute(what: string, query: string, params: Params, call: CallOptions): Promise<types.ResultSet> {
    this.checkOpen(what);
    const kind: RequestKind = CONDITIONAL.test(query)
      ? "lwt"
      : /^\s*SELECT\b/i.test(query)
        ? "read"
        : "write";
    this.count(kind);
    return this.timed(kind, what, () => this.client.execute(query, params as unknown[], this.options(call)));
  }

  private count(kind: RequestKind): void {
    if (kind === "lwt") this.requests.lwts++;
    else if (kind === "read") this.requests.reads++;
    else if (kind === "write") this.requests.writes++;
    else this.requests.batches++;
  }

  /** Every row of a query, following the driver's paging (fetchSize rows per round trip). */
  async all(what: string, query: string, params: Params, fetchSize = 1000): Promise<Row[]> {
    const rows: Row[] = [];
    let pageState: string | undefined;
    for (;;) {
      const call: CallOptions = { idempotent: true, fetchSize };
      if (pageState !== undefined) call.pageState = pageState;
      const result = await this.execute(what, query, params, call);
      rows.push(...result.rows);
      pageState = result.pageState ?? undefined;
      if (!pageState) return rows;
    }
  }

  /**
   * A batch: `logged: false` (unlogged) for rows of one partition, which Cassandra applies atomically
   * and in isolation on each replica anyway; a batch with conditions is one Paxos round on its partition.
   */
  async batch(
    what: string,
    statements: readonly Statement[],
    call: CallOptions & { logged: boolean },
  ): Promise<types.ResultSet> {
    this.checkOpen(what);
    const options = this.options(call);
    options.logged = call.logged;
    const kind: RequestKind = statements.some((s) => CONDITIONAL.test(s.query)) ? "lwt" : "batch";
    this.count(kind);
    return this.timed(kind, what, () =>
      this.client.batch(
        statements.map((s) => ({ query: s.query, params: s.params as unknown[] })),
        options,
      ),
    );
  }

  /** Marks the session closed; the owner shuts the client down. */
  markClosed(): void {
    this.closed = true;
  }
}

// ---------------------------------------------------------------------------------------------
// Row decoding: bigint columns arrive as Long, timestamps as Date. (Parameters may be plain numbers:
// with prepared statements the driver knows the column types and encodes a number as a bigint.)

export function toNumber(value: unknown, what: string): number {
  if (typeof value === "number") return value;
  if (typeof value === "bigint") return Number(value);
  if (value instanceof cassandra.types.Long) return value.toNumber();
  if (value instanceof Date) return value.getTime();
  throw invariantViolated(`${what} is ${String(value)}, not a number`);
}

/** A bigint as the driver's Long (bigint columns, write timestamps). */
export function toLong(value: bigint): types.Long {
  return cassandra.types.Long.fromString(value.toString());
}

export function optionalNumber(value: unknown, what: string): number | undefined {
  return value === null || value === undefined ? undefined : toNumber(value, what);
}

export function toText(value: unknown, what: string): string {
  if (typeof value === "string") return value;
  throw invariantViolated(`${what} is ${String(value)}, not text`);
}

// ---------------------------------------------------------------------------------------------
// Helpers of the stores.

/** Groups items by key, keeping first-seen key order and item order within a group. */
export function groupBy<T>(items: Iterable<T>, key: (item: T) => string): Map<string, T[]> {
  const groups = new Map<string, T[]>();
  for (const item of items) {
    const k = key(item);
    const group = groups.get(k);
    if (group) group.push(item);
    else groups.set(k, [item]);
  }
  return groups;
}

export function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

export { KeyedMutex } from "../../lib/keyed-mutex.js";
export { Limiter } from "../../lib/limiter.js";

/** Jittered pause between attempts of a CAS loop that lost a race (contention management, not sync). */
export function backoff(attempt: number): Promise<void> {
  const ms = Math.min(200, 2 ** Math.min(attempt, 7)) * (0.5 + Math.random());
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** What a CAS loop throws when it kept losing races: retryable, like any unavailability. */
export function contended(what: string, attempts: number, last: unknown): SwitchboardError {
  // An attempt whose outcome was unknown (Cassandra unavailable or timing out) also ends in another
  // attempt: when any did, the log names its error, not only a conflict (an outage read as contention).
  const why =
    last === undefined
      ? "still conflicting"
      : `not applied (Cassandra unavailable or conflicting; last error: ${last instanceof Error ? last.message : String(last)})`;
  // The driver's text (node addresses) stays in the logs; a client is told what failed and to retry.
  return new SwitchboardError(
    Code.UNAVAILABLE,
    "STORAGE_UNAVAILABLE",
    `${what}: conditional write ${why} after ${attempts} attempts`,
    {
      cause: last,
      retryAfterMs: 1_000,
      publicMessage: `${what}: conditional write not applied after ${attempts} attempts; retry`,
    },
  );
}
