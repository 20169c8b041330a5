/**
 * The embedded backend: one LMDB environment (one database file plus its lock file) holding the
 * message log, the messages, membership, inboxes, receipts, presence and device tokens.
 *
 * Durability: a write's promise resolves only after LMDB committed *and* fsynced its transaction. The
 * message path (appends, their inbox entries, consumer offsets) commits once per event-loop turn
 * (turn-commits.ts: group commit, one fsync per turn, not per message), synchronously when the turn is
 * small. Other writes use lmdb-js's asynchronous writes (overlappingSync off), committed on LMDB's
 * writer thread. The router takes each message as it is appended (ConsumeOptions.beforeCommit), so
 * the inbox entries it writes join the message's own transaction instead of costing a second one.
 *
 * Ordering: this process is the only writer, so seq and inbox cursors are assigned from in-memory
 * counters (loaded lazily from the database) synchronously, before the write is queued; LMDB commits
 * queued transactions in order, so a crash can only cut off a suffix, never leave a gap. A failed
 * commit is fatal (`onFatal`): after it the counters could be ahead of the disk. So is a second process
 * on the same file: the backend takes the data dir for the life of the process (data-dir-lock.ts).
 *
 * Growth: the messages, the inboxes (each user's durable history), membership and the other stores
 * are kept; the dedupe keys, the log entries and the inbox index are removed in the background once
 * past the dedupe window and every consumer (retention.ts). The file grows with the messages and
 * inbox entries (about one message row, one log entry, one dedupe key and two keys per recipient
 * while in the window; afterwards the row and one inbox entry per recipient): size the disk for the
 * history kept, and copy all of it when backing up (stop, copy the data dir, start). LMDB reuses freed
 * pages but never shrinks the file (the map starts at `mapSize` and lmdb-js grows it as needed). Below
 * `diskReserveBytes` free on its file system, new messages are refused (disk-space.ts) instead of
 * failing a commit, which would stop the process.
 */
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { type Database, open, type RootDatabase } from "lmdb";
import { errors } from "../../lib/errors.js";
import type {
  Backends,
  DeviceStore,
  InboxStore,
  MembershipStore,
  MessageLog,
  MessageStore,
  NotificationSettingsStore,
  PresenceStore,
  PushDeadLetterStore,
  PushJobStore,
  ReceiptStore,
  RoutingEvents,
} from "../types.js";
import { DATABASE_FILE, DATABASES_MAX, META_DATABASE, SHARED_STRUCTURES_KEY } from "./backup.js";
import { DataDirLock } from "./data-dir-lock.js";
import { DATA_SET_KEY, newDataSetName } from "./data-set.js";
import { EmbeddedDevices } from "./devices.js";
import { type AvailableBytes, DiskSpace, statfsAvailableBytes } from "./disk-space.js";
import { EmbeddedInbox } from "./inbox.js";
import { EmbeddedLog } from "./log.js";
import { buildNewestFirstIndex, EmbeddedMembership } from "./membership.js";
import { EmbeddedMessageStore } from "./messages.js";
import { EmbeddedPresence } from "./presence.js";
import {
  EmbeddedPushDeadLetters,
  EmbeddedPushJobs,
  PUSH_JOB_KEYS_MAX,
  type StoredDeadLetter,
} from "./push.js";
import { EmbeddedReceipts } from "./receipts.js";
import { Retention, type RetentionOptions } from "./retention.js";
import { InMemoryRouting } from "./routing.js";
import { EmbeddedSettings } from "./settings.js";
import type { Guard, Key } from "./store.js";
import { TurnCommits } from "./turn-commits.js";

/**
 * The layout of what this build writes in a data dir, recorded in it: a build refuses a data dir of a
 * newer format (written by a newer build) instead of failing at its first read or misreading it.
 * Raise it with every change an older build cannot read or would not keep true. 1: msgpack shared
 * structures and the inbox index by message (2026-12-05). 2: each user's conversations indexed by
 * creation time too (2026-12-07; built from the index by id when an older data dir is opened, and
 * not kept by older builds, which would leave it stale).
 */
export const DATA_FORMAT = 2;
const DATA_FORMAT_KEY = "data-format";

export interface EmbeddedOptions {
  dataDir: string;
  /** Called once when a commit fails; the owner should stop the process. */
  onFatal?: (err: unknown) => void;
  /** Called when a consumer's handler fails; the batch is retried. */
  onConsumerError?: (group: string, err: unknown) => void;
  /**
   * Called when a membership change stopped waiting for the router (ROUTER_WAIT_BEFORE_MEMBERSHIP_
   * CHANGE_MS) and was made before the router had routed every message sent before it.
   */
  onRouterLagged?: (conversationId: string, waitedMs: number) => void;
  /** Keys of added push jobs kept at most (PushJobStore.add); PUSH_JOB_KEYS_MAX unless given. */
  pushJobKeysMax?: number;
  /**
   * A resend with the same client_msg_id within this window returns the original; after it, it is a
   * new message (its dedupe key is removed: retention.ts). DEDUPE_WINDOW_MS (168 hours) unless given:
   * the distributed backend's default (`kafka.dedupeWindowHours`).
   */
  dedupeWindowMs?: number;
  /** Retention's pace and bounds (tests). */
  retention?: Omit<RetentionOptions, "dedupeWindowMs">;
  /** Conversations' last seqs and users' inbox heads kept in memory at most (tests). */
  countersKeptMax?: number;
  /**
   * Below this many bytes free on the data dir's file system, new messages are refused
   * (`STORAGE_FULL`) and everything else goes on (disk-space.ts); 0 (the default) turns it off.
   */
  diskReserveBytes?: number;
  /** How free bytes are measured (statfs unless given: tests). */
  availableBytes?: AvailableBytes;
  /** Called when new messages start being refused for lack of disk space (full) and when that ends. */
  onDiskFull?: (full: boolean, availableBytes: number, reserveBytes: number) => void;
  /** Called when the free space of the data dir's file system could not be measured. */
  onDiskSpaceError?: (err: unknown) => void;
}

/** Free bytes under which a failed commit is put down to a full disk (disk-space.ts keeps far more). */
const NEARLY_FULL_BYTES = 16 * 1024 * 1024;
/**
 * Free bytes the data dir's disk must have for the backend to open (or the reserve, when smaller; a
 * reserve of 0 turns the check off). LMDB maps its lock file and writes through that map: on a disk
 * with no room for the pages it touches, a fresh data dir stops the process with SIGBUS, and an
 * existing one fails at its first write. A clear refusal instead, until space is freed.
 */
const FREE_BYTES_TO_OPEN = 1024 * 1024;

/**
 * A failed commit's error, saying so when the data dir's disk is (nearly) full: LMDB reports a write
 * that found no space as an I/O error, which alone sends an operator looking for a broken disk.
 */
export function commitFailure(err: unknown, dataDir: string, availableBytes: AvailableBytes): unknown {
  let free: number;
  try {
    free = availableBytes(dataDir);
  } catch {
    return err;
  }
  if (free >= NEARLY_FULL_BYTES) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new Error(`${message} (the data dir's disk is full: ${free} bytes free)`, { cause: err });
}
/** How long a client waits before sending again a message refused for lack of disk space. */
const STORAGE_FULL_RETRY_AFTER_MS = 5_000;
const storageFull = () =>
  errors.exhausted(
    "STORAGE_FULL",
    "the server's disk is nearly full: new messages are refused until space is freed",
    STORAGE_FULL_RETRY_AFTER_MS,
  );

/** Where the id service's high-water mark is kept (internal/id/high-water.ts). */
const ID_HIGH_WATER_KEY = "snowflake-high-water";
/**
 * How long a membership change waits at most for the router to route what was sent before it
 * (EmbeddedMembership): past that (a router that keeps failing) the change is made all the same.
 */
const ROUTER_WAIT_BEFORE_MEMBERSHIP_CHANGE_MS = 2_000;

export class EmbeddedBackends implements Backends {
  readonly name = "embedded" as const;
  readonly dataSet: string;
  readonly log: MessageLog;
  readonly messages: MessageStore;
  readonly membership: MembershipStore;
  readonly settings: NotificationSettingsStore;
  readonly inbox: InboxStore;
  readonly receipts: ReceiptStore;
  readonly routing: RoutingEvents;
  readonly presence: PresenceStore;
  readonly devices: DeviceStore;
  readonly pushJobs: PushJobStore;
  readonly pushDeadLetters: PushDeadLetterStore;

  /**
   * The time the id service issued ids up to, kept here so that a restart never issues one again
   * (internal/id/high-water.ts; role all passes it to createIdService).
   */
  readonly idHighWater: { load(): number | undefined; store(untilMs: number): Promise<void> };

  private readonly root: RootDatabase;
  private readonly lock: DataDirLock;
  private readonly retention: Retention;
  /** The data dir's free space: new messages are refused below the reserve. */
  readonly diskSpace: DiskSpace;
  /** The message path's writes, one transaction per event-loop turn (turn-commits.ts). */
  private readonly turns: TurnCommits;
  private closed = false;
  private fatal: unknown;
  private readonly onFatal: (err: unknown) => void;
  private readonly dataDir: string;
  private readonly availableBytes: AvailableBytes;

  constructor(options: EmbeddedOptions) {
    mkdirSync(options.dataDir, { recursive: true });
    this.onFatal = options.onFatal ?? (() => undefined);
    this.dataDir = options.dataDir;
    this.availableBytes = options.availableBytes ?? statfsAvailableBytes;
    const needed = Math.min(FREE_BYTES_TO_OPEN, options.diskReserveBytes ?? 0);
    const free = needed > 0 ? this.availableBytes(options.dataDir) : Number.POSITIVE_INFINITY;
    if (free < needed)
      throw errors.unavailable(
        "DATA_DIR_FULL",
        `the disk of data dir ${options.dataDir} is full (${free} bytes free; opening the database needs ${needed}): free space on it, then start again`,
      );
    this.root = open({
      path: join(options.dataDir, DATABASE_FILE),
      noSubdir: true,
      overlappingSync: false, // a write resolves after fsync: acks mean durable
      maxDbs: DATABASES_MAX,
      mapSize: 2 * 1024 ** 3,
    });
    // Before anything is read or written: the seqs and positions assigned from memory are this
    // process's alone. The check runs under LMDB's write lock, which every contender takes.
    try {
      this.lock = DataDirLock.acquire(
        options.dataDir,
        (check) => this.root.transactionSync(check),
        (err) => this.poison(err),
      );
    } catch (err) {
      this.root.close().catch(() => undefined); // the refusal is what the caller needs to hear
      throw err;
    }
    // From here on, a failure must give back what was taken: the data dir and the environment.
    let diskSpace: DiskSpace | undefined;
    try {
      // One handle per database, each with msgpackr's shared structures: an object value then carries a
      // one-byte id of its shape instead of its key names (a stored message: 97 -> 33 bytes), and packing
      // it allocates no inline record definition. Values written before (keys inline) still decode.
      const handles = new Map<string, Database<unknown, Key>>();
      const db = <V>(name: string): Database<V, Key> => {
        let handle = handles.get(name);
        if (!handle) {
          handle = this.root.openDB<unknown, Key>({ name, sharedStructuresKey: SHARED_STRUCTURES_KEY });
          handles.set(name, handle);
        }
        return handle as Database<V, Key>;
      };
      const meta = db<number | string>(META_DATABASE);
      const format = meta.get(DATA_FORMAT_KEY);
      if (typeof format === "number" && format > DATA_FORMAT)
        throw errors.precondition(
          "DATA_FORMAT_NEWER",
          `data dir ${options.dataDir} was written by a newer Switchboard (data format ${format}; this build reads up to ${DATA_FORMAT}): run that version or a later one, or restore the backup taken before the upgrade`,
        );
      if (format !== DATA_FORMAT) {
        // Before the format is marked: a build cut short is made again at the next open.
        buildNewestFirstIndex(db("user_conversations"), db("user_conversations_by_time"));
        meta.putSync(DATA_FORMAT_KEY, DATA_FORMAT);
      }
      const named = meta.get(DATA_SET_KEY);
      this.dataSet = typeof named === "string" ? named : newDataSetName();
      if (named !== this.dataSet) meta.putSync(DATA_SET_KEY, this.dataSet);
      const guard: Guard = (write) => this.guard(write);
      const reserveBytes = options.diskReserveBytes ?? 0;
      this.diskSpace = diskSpace = new DiskSpace({
        path: options.dataDir,
        reserveBytes,
        availableBytes: this.availableBytes,
        onChange: (full, available) => options.onDiskFull?.(full, available, reserveBytes),
        onError: (err) => options.onDiskSpaceError?.(err),
      });
      this.turns = new TurnCommits(this.root);
      const log = new EmbeddedLog(
        db("messages"),
        db("dedupe"),
        db("log"),
        db("offsets"),
        this.turns,
        guard,
        () => this.closed,
        (group, err) => (options.onConsumerError ?? (() => undefined))(group, err),
        {
          ...(options.countersKeptMax === undefined ? {} : { lastSeqsKeptMax: options.countersKeptMax }),
          refusal: () => (this.diskSpace.full ? storageFull() : undefined),
        },
      );
      this.log = log;
      this.messages = new EmbeddedMessageStore(db("messages"), guard);
      this.membership = new EmbeddedMembership(
        db("conversations"),
        db("members"),
        db("member_roles"),
        db("user_conversations"),
        db("user_conversations_by_time"),
        guard,
        async (conversationId) => {
          if (!(await log.untilAddressed(ROUTER_WAIT_BEFORE_MEMBERSHIP_CHANGE_MS)))
            options.onRouterLagged?.(conversationId, ROUTER_WAIT_BEFORE_MEMBERSHIP_CHANGE_MS);
        },
      );
      const inbox = new EmbeddedInbox(
        db("inbox"),
        db("inbox_by_message"),
        this.turns,
        guard,
        options.countersKeptMax,
      );
      this.inbox = inbox;
      // The index of versions before 2026-12-05 (keyed by user): read until the consumers have passed
      // what the log held now, then dropped (inbox.ts).
      let legacyIndexUntil = 0;
      const legacyIndex = db<number>("inbox_index");
      for (const _ of legacyIndex.getKeys({ limit: 1 })) {
        inbox.useLegacyIndex(legacyIndex);
        legacyIndexUntil = log.lastCommitted();
      }
      this.receipts = new EmbeddedReceipts(db("receipts"), guard);
      this.routing = new InMemoryRouting();
      this.presence = new EmbeddedPresence(db("presence"), guard);
      this.devices = new EmbeddedDevices(this.root, db("devices"), db("device_token_owners"), guard);
      this.settings = new EmbeddedSettings(db("muted_conversations"), db("do_not_disturb"), guard);
      const deadLetters = db<StoredDeadLetter>("push_dead_letters");
      this.pushJobs = new EmbeddedPushJobs(
        this.root,
        db("push_jobs"),
        db("push_job_keys"),
        db("push_job_keys_by_time"),
        deadLetters,
        guard,
        options.pushJobKeysMax ?? PUSH_JOB_KEYS_MAX,
      );
      this.pushDeadLetters = new EmbeddedPushDeadLetters(this.root, deadLetters, guard);
      this.idHighWater = {
        load: () => {
          const untilMs = meta.get(ID_HIGH_WATER_KEY);
          return typeof untilMs === "number" ? untilMs : undefined;
        },
        store: (untilMs) => guard(() => meta.put(ID_HIGH_WATER_KEY, untilMs)).then(() => undefined),
      };
      this.retention = new Retention(
        this.root,
        {
          messages: db("messages"),
          dedupe: db("dedupe"),
          entries: db("log"),
          inboxIndex: db("inbox_by_message"),
        },
        log,
        inbox,
        guard,
        {
          onError: (err) => (options.onConsumerError ?? (() => undefined))("retention", err),
          ...options.retention,
          ...(options.dedupeWindowMs === undefined ? {} : { dedupeWindowMs: options.dedupeWindowMs }),
        },
        legacyIndexUntil,
      );
      this.retention.start();
    } catch (err) {
      diskSpace?.close();
      this.lock.release();
      this.root.close().catch(() => undefined); // the constructor's error is what the caller needs
      throw err;
    }
  }

  /** One retention pass now (tests and diagnostics; passes also run in the background). */
  retainNow() {
    return this.retention.pass();
  }

  /** Nothing more is written or acked: the process is told to stop (onFatal). */
  private poison(err: unknown): void {
    if (this.fatal !== undefined) return;
    this.fatal = err;
    this.turns?.fail(err);
    this.onFatal(err);
  }

  /** Every write goes through here: the first failed commit poisons the backend (store.ts, Guard). */
  private async guard<T>(write: () => Promise<T>): Promise<T> {
    if (this.fatal !== undefined)
      throw errors.unavailable("STORAGE_FAILED", "storage failed earlier", this.fatal);
    try {
      return await write();
    } catch (err) {
      if (this.fatal === undefined) this.poison(commitFailure(err, this.dataDir, this.availableBytes));
      throw errors.unavailable("STORAGE_FAILED", "storage write failed", err);
    }
  }

  /** Transactions committed in this environment so far (each one fsync): for tests and diagnostics. */
  get commits(): number {
    return (this.root.getStats() as { lastTxnId: number }).lastTxnId;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.diskSpace.close();
    await this.retention.stop();
    await this.log.close();
    await this.routing.close();
    this.turns.close();
    await this.turns.settled();
    await this.root.close();
    this.lock.release();
  }
}
