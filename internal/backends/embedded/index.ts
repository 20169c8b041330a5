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
 * commit is fatal (`onFatal`): after it the counters could be ahead of the disk.
 */
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { type Database, open, type RootDatabase } from "lmdb";
import { assert, errors } from "../../lib/errors.js";
import { KeyedMutex } from "../../lib/keyed-mutex.js";
import { activeCarrier, type TraceCarrier, tracing } from "../../lib/tracing.js";
import type {
  AppendResult,
  Backends,
  BatchHandler,
  Closeable,
  ConsumeOptions,
  ConversationRecord,
  DeviceRecord,
  DeviceStore,
  DoNotDisturb,
  GroupChange,
  HistoryPage,
  HistoryQuery,
  InboxEntry,
  InboxStore,
  LoggedMessage,
  MemberEntry,
  MemberRole,
  MembershipStore,
  MessageDraft,
  MessageLog,
  MessageStore,
  MutedConversation,
  NewConversation,
  NotificationSettingsStore,
  PresenceStore,
  PushDeadLetter,
  PushDeadLetterStore,
  PushJob,
  PushJobStore,
  ReceiptKindName,
  ReceiptStore,
  RoutingEvents,
  SessionEvent,
  StoredMessage,
} from "../types.js";
import {
  deadLetterId,
  deviceTokenKey,
  inboxEntry,
  parseDeadLetterId,
  sequenced,
  tokenNamesOneDevice,
} from "../types.js";
import { MemberLists } from "./member-lists.js";
import { PendingWrites } from "./pending-writes.js";
import { TurnCommits } from "./turn-commits.js";

type Key = string | number | Array<string | number>;
const SEQ_MAX = Number.MAX_SAFE_INTEGER;
/** Sorts after every string second element (keys are UTF-8; U+10FFFF is the largest code point). */
const KEY_END = "\u{10FFFF}\u{10FFFF}";
/** Where each database keeps the shapes of its values (msgpackr records); never in a key range. */
const SHARED_STRUCTURES_KEY = Symbol.for("structures");
/** Members the member-list cache holds in all (a few MB of user ids). */
const MEMBER_LISTS_MEMBERS_MAX = 100_000;
const CONSUME_BATCH_MAX = 512;
/**
 * A consumer stores its position at most this long after handling a batch, or sooner with the next
 * message handed to it before its commit (then in that message's transaction): a position need not
 * cost a commit of its own. A crash re-handles what was handled since (at-least-once, idempotent).
 */
const OFFSET_STORE_DELAY_MS = 100;
/** Trace contexts kept for the router at most (embedded log, tracing on). */
const TRACES_KEPT_MAX = 10_000;

export interface EmbeddedOptions {
  dataDir: string;
  /** Called once when a commit fails; the owner should stop the process. */
  onFatal?: (err: unknown) => void;
  /** Called when a consumer's handler fails; the batch is retried. */
  onConsumerError?: (group: string, err: unknown) => void;
  /** Keys of added push jobs kept at most (PushJobStore.add); PUSH_JOB_KEYS_MAX unless given. */
  pushJobKeysMax?: number;
}

export class EmbeddedBackends implements Backends {
  readonly name = "embedded" as const;
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

  private readonly root: RootDatabase;
  /** The message path's writes, one transaction per event-loop turn (turn-commits.ts). */
  private readonly turns: TurnCommits;
  private closed = false;
  private fatal: unknown;
  private readonly onFatal: (err: unknown) => void;

  constructor(options: EmbeddedOptions) {
    mkdirSync(options.dataDir, { recursive: true });
    this.onFatal = options.onFatal ?? (() => undefined);
    this.root = open({
      path: join(options.dataDir, "switchboard.mdb"),
      noSubdir: true,
      overlappingSync: false, // a write resolves after fsync: acks mean durable
      maxDbs: 24,
      mapSize: 2 * 1024 ** 3,
    });
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
    const guard = <T>(p: Promise<T>) => this.guard(p);
    this.turns = new TurnCommits(this.root);
    this.log = new EmbeddedLog(
      db("messages"),
      db("dedupe"),
      db("log"),
      db("offsets"),
      this.turns,
      guard,
      () => this.closed,
      (group, err) => (options.onConsumerError ?? (() => undefined))(group, err),
    );
    this.messages = new EmbeddedMessageStore(db("messages"), guard);
    this.membership = new EmbeddedMembership(
      db("conversations"),
      db("members"),
      db("member_roles"),
      db("user_conversations"),
      guard,
    );
    this.inbox = new EmbeddedInbox(db("inbox"), db("inbox_index"), this.turns, guard);
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
  }

  /** Every write goes through here: the first failed commit poisons the backend. */
  private async guard<T>(write: Promise<T>): Promise<T> {
    if (this.fatal !== undefined)
      throw errors.unavailable("STORAGE_FAILED", "storage failed earlier", this.fatal);
    try {
      return await write;
    } catch (err) {
      if (this.fatal === undefined) {
        this.fatal = err;
        this.onFatal(err);
      }
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
    await this.log.close();
    await this.routing.close();
    this.turns.close();
    await this.root.close();
  }
}

type Guard = <T>(p: Promise<T>) => Promise<T>;

/** Log entries point at (conversation, seq); the messages table holds the rows. */
class EmbeddedLog implements MessageLog {
  private readonly lastSeq = new Map<string, number>();
  private readonly pending = new PendingWrites<Promise<AppendResult>>();
  /** Trace contexts of appended messages, by message id, until the router reads them (keepTrace). */
  private readonly traces = new Map<string, TraceCarrier>();
  private head: number;
  private readonly wakers = new Set<() => void>();
  /** Consumers idle at the end of the log that take a message before its commit (beforeCommit). */
  private readonly takers = new Set<(position: number, message: LoggedMessage) => void>();
  private readonly consumers = new Set<Closeable>();

  constructor(
    private readonly messages: Database<StoredMessage, Key>,
    private readonly dedupe: Database<number, Key>,
    private readonly entries: Database<[string, number], Key>,
    private readonly offsets: Database<number, Key>,
    private readonly turns: TurnCommits,
    private readonly guard: Guard,
    private readonly isClosed: () => boolean,
    private readonly onHandlerError: (group: string, err: unknown) => void,
  ) {
    let head = 0;
    for (const key of entries.getKeys({ reverse: true, limit: 1 })) head = key as number;
    this.head = head;
  }

  private seqOf(conversationId: string): number {
    let seq = this.lastSeq.get(conversationId);
    if (seq === undefined) {
      seq = 0;
      for (const key of this.messages.getKeys({
        start: [conversationId, SEQ_MAX],
        end: [conversationId, 0],
        reverse: true,
        limit: 1,
      })) {
        seq = (key as [string, number])[1];
      }
      this.lastSeq.set(conversationId, seq);
    }
    return seq;
  }

  append(draft: MessageDraft): Promise<AppendResult> {
    const dedupeKey: Key = [draft.conversationId, draft.sender, draft.clientMsgId];
    const pendingKey = JSON.stringify(dedupeKey);
    const inFlight = this.pending.get(pendingKey);
    if (inFlight) return inFlight.then((r) => ({ message: r.message, duplicate: true }));
    const existingSeq = this.dedupe.get(dedupeKey);
    if (existingSeq !== undefined) {
      const original = this.messages.get([draft.conversationId, existingSeq]);
      assert(original, `dedupe entry without message ${draft.conversationId}/${existingSeq}`);
      return Promise.resolve({ message: original, duplicate: true });
    }
    if (tracing.on) this.keepTrace(draft.messageId);
    const seq = this.seqOf(draft.conversationId) + 1;
    this.lastSeq.set(draft.conversationId, seq);
    const position = ++this.head;
    const message = sequenced(draft, seq);
    const commit = this.turns.write((w) => {
      w.put(this.messages, [draft.conversationId, seq], message);
      w.put(this.dedupe, dedupeKey, seq);
      w.put(this.entries, position, [draft.conversationId, seq]);
    });
    const write = this.guard(commit).then((): AppendResult => {
      for (const wake of this.wakers) wake();
      return { message, duplicate: false };
    });
    this.pending.set(commit, pendingKey, write);
    if (this.takers.size > 0) {
      const trace = this.traces.get(message.messageId);
      const committed = write.then(() => undefined);
      committed.catch(() => undefined); // the append's own promise reports a failed commit
      const handed = logged(message, trace, committed);
      for (const take of this.takers) take(position, handed);
    }
    return write;
  }

  /**
   * Keeps the sender's trace context for the router (in memory only, bounded: a trace is worth
   * nothing after a restart, and a message the router never reads must not pin its entry).
   */
  private keepTrace(messageId: string): void {
    const carrier = activeCarrier();
    if (!carrier) return;
    this.traces.set(messageId, carrier);
    if (this.traces.size > TRACES_KEPT_MAX) this.traces.delete(this.traces.keys().next().value as string);
  }

  async consume(group: string, handler: BatchHandler, options: ConsumeOptions = {}): Promise<Closeable> {
    if (options.startAt === "latest" && this.offsets.get(group) === undefined) {
      // Fixed now, durably: a reopened consumer of the new group starts here too, not at a later end.
      let end = 0;
      for (const key of this.entries.getKeys({ reverse: true, limit: 1 })) end = key as number;
      await this.guard(this.offsets.put(group, end));
    }
    let stopped = false;
    let wake: (() => void) | undefined;
    const waker = () => wake?.();
    this.wakers.add(waker);
    let offset = this.offsets.get(group) ?? 0;
    let stored = offset;
    let storeTimer: NodeJS.Timeout | undefined;
    const storeOffset = (): Promise<unknown> | undefined => {
      clearTimeout(storeTimer);
      storeTimer = undefined;
      if (offset === stored) return undefined;
      const at = offset;
      stored = at;
      // In the transaction of the messages it covers or a later one; a crash before this lands only
      // means re-handling (idempotent).
      const write = this.guard(this.turns.write((w) => w.put(this.offsets, group, at)));
      write.catch(() => undefined);
      return write;
    };
    /** Messages handed over before their commit (beforeCommit), next in the log after `offset`. */
    let handed: LoggedMessage[] = [];
    /** The last position in a batch being handled or in `handed`. */
    let taken = offset;
    const take = (position: number, message: LoggedMessage) => {
      if (position !== taken + 1 || handed.length >= CONSUME_BATCH_MAX) return; // read from the log later
      handed.push(message);
      taken = position;
      storeOffset(); // in the transaction of this message (or the next one)
      wake?.();
    };
    if (options.beforeCommit) this.takers.add(take);
    const loop = (async () => {
      while (!stopped && !this.isClosed()) {
        let batch: LoggedMessage[] = [];
        let last = offset;
        if (handed.length > 0) {
          batch = handed;
          handed = [];
          last = offset + batch.length;
        } else {
          for (const { key, value } of this.entries.getRange({
            start: offset + 1,
            limit: CONSUME_BATCH_MAX,
          })) {
            const message = this.messages.get(value);
            assert(message, `log entry ${String(key)} points at a missing message`);
            const trace = this.traces.get(message.messageId);
            batch.push(trace ? logged(message, trace) : message);
            last = key as number;
          }
          taken = last;
        }
        if (batch.length === 0) {
          // Appends wake us after their commit (or, for beforeCommit, as they are queued); re-check
          // first so a wake-up between read and wait is not lost.
          await new Promise<void>((resolve) => {
            wake = resolve;
            if (stopped || handed.length > 0 || this.entries.doesExist(offset + 1)) resolve();
          });
          wake = undefined;
          continue;
        }
        try {
          await handler(batch);
        } catch (err) {
          // What was handed over meanwhile is read from the log again, after this batch.
          handed = [];
          taken = offset;
          // A consumer being closed fails its batch in flight on purpose: stop, offset unmoved.
          if (stopped) break;
          // At-least-once: keep the offset and retry the same batch after a pause.
          this.onHandlerError(group, err);
          await new Promise((r) => setTimeout(r, 500));
          continue;
        }
        offset = last;
        storeTimer ??= setTimeout(storeOffset, OFFSET_STORE_DELAY_MS);
      }
    })();
    const consumer: Closeable = {
      close: async () => {
        stopped = true;
        wake?.();
        this.wakers.delete(waker);
        this.takers.delete(take);
        this.consumers.delete(consumer);
        await loop;
        // A failed write has already poisoned the backend (guard, onFatal): closing still completes.
        await storeOffset()?.catch(() => undefined);
      },
    };
    this.consumers.add(consumer);
    loop.catch(() => this.consumers.delete(consumer));
    return consumer;
  }

  async close(): Promise<void> {
    await Promise.all([...this.consumers].map((c) => c.close()));
    await this.pending.settled();
  }
}

class EmbeddedMessageStore implements MessageStore {
  constructor(
    private readonly messages: Database<StoredMessage, Key>,
    private readonly guard: Guard,
  ) {}

  async write(messages: StoredMessage[]): Promise<void> {
    await this.guard(
      this.messages.batch(() => {
        for (const m of messages) {
          const existing = this.messages.get([m.conversationId, m.seq]);
          if (existing)
            assert(existing.messageId === m.messageId, `seq ${m.conversationId}/${m.seq} reassigned`);
          else this.messages.put([m.conversationId, m.seq], m);
        }
      }),
    );
  }

  async history(conversationId: string, query: HistoryQuery): Promise<HistoryPage> {
    const after = query.afterSeq ?? 0;
    const before = query.beforeSeq && query.beforeSeq > 0 ? query.beforeSeq : SEQ_MAX;
    const messages: StoredMessage[] = [];
    if (query.afterSeq) {
      for (const { value } of this.messages.getRange({
        start: [conversationId, after + 1],
        end: [conversationId, before],
        limit: query.limit + 1,
      })) {
        messages.push(value);
      }
      const hasMore = messages.length > query.limit;
      return { messages: messages.slice(0, query.limit), hasMore };
    }
    for (const { value } of this.messages.getRange({
      start: [conversationId, before - 1],
      end: [conversationId, after],
      reverse: true,
      limit: query.limit + 1,
    })) {
      messages.push(value);
    }
    const hasMore = messages.length > query.limit;
    return { messages: messages.slice(0, query.limit).reverse(), hasMore };
  }

  async lastSeq(conversationId: string): Promise<number> {
    for (const key of this.messages.getKeys({
      start: [conversationId, SEQ_MAX],
      end: [conversationId, 0],
      reverse: true,
      limit: 1,
    })) {
      return (key as [string, number])[1];
    }
    return 0;
  }

  async getMany(keys: Array<{ conversationId: string; seq: number }>): Promise<StoredMessage[]> {
    const out: StoredMessage[] = [];
    for (const k of keys) {
      const m = this.messages.get([k.conversationId, k.seq]);
      if (m) out.push(m);
    }
    return out;
  }

  async close(): Promise<void> {}
}

/** A record stored before group policies and delivery models existed reads as "everyone may", push. */
function withDefaults(record: ConversationRecord | undefined): ConversationRecord | undefined {
  if (!record || (record.postPolicy && record.addPolicy && record.delivery)) return record;
  return {
    ...record,
    postPolicy: record.postPolicy ?? "everyone",
    addPolicy: record.addPolicy ?? "everyone",
    delivery: record.delivery ?? "push",
  };
}

/**
 * Conversations (`conversations`), members with their join time (`members`), the roles other than
 * "member" (`member_roles`: admins; the owner is the record's) and each user's conversations.
 */
class EmbeddedMembership implements MembershipStore {
  private readonly mutex = new KeyedMutex();
  private readonly listeners = new Set<(conversationId: string) => void>();
  private readonly memberLists = new MemberLists(MEMBER_LISTS_MEMBERS_MAX);

  constructor(
    private readonly conversations: Database<ConversationRecord, Key>,
    private readonly membersDb: Database<number, Key>,
    private readonly roles: Database<"admin", Key>,
    private readonly byUser: Database<number, Key>,
    private readonly guard: Guard,
  ) {}

  createConversation(record: NewConversation, members: string[]) {
    return this.mutex.run(record.id, async () => {
      const existing = this.record(record.id);
      if (existing) return { record: existing, created: false };
      const unique = [...new Set(members)];
      const stored: ConversationRecord = {
        postPolicy: "everyone",
        addPolicy: "everyone",
        delivery: "push",
        ...record,
        memberCount: unique.length,
      };
      await this.guard(
        this.conversations.batch(() => {
          this.conversations.put(record.id, stored);
          for (const user of unique) {
            this.membersDb.put([record.id, user], record.createdAtMs);
            this.byUser.put([user, record.id], record.createdAtMs);
          }
        }),
      );
      this.changed(record.id);
      return { record: stored, created: true };
    });
  }

  async getConversation(id: string) {
    return this.record(id);
  }

  addMembers(id: string, users: string[], membersMax: number, pullAbove = Number.POSITIVE_INFINITY) {
    return this.mutex.run(id, async () => {
      const record = this.existing(id);
      const fresh = [...new Set(users)].filter((u) => !this.membersDb.doesExist([id, u]));
      if (record.memberCount + fresh.length > membersMax) {
        throw errors.exhausted(
          "GROUP_FULL",
          `group ${id} would have ${record.memberCount + fresh.length} members; the limit is ${membersMax}`,
        );
      }
      if (fresh.length === 0) return record;
      const memberCount = record.memberCount + fresh.length;
      const delivery = memberCount > pullAbove ? "pull" : record.delivery;
      const updated = { ...record, memberCount, delivery };
      const now = Date.now();
      await this.guard(
        this.conversations.batch(() => {
          this.conversations.put(id, updated);
          for (const user of fresh) {
            this.membersDb.put([id, user], now);
            this.byUser.put([user, id], record.createdAtMs);
          }
        }),
      );
      this.changed(id);
      return updated;
    });
  }

  removeMember(id: string, user: string) {
    return this.mutex.run(id, async () => {
      const record = this.existing(id);
      if (!this.membersDb.doesExist([id, user]))
        throw errors.denied("NOT_MEMBER", `${user} is not a member of ${id}`);
      const updated = {
        ...record,
        memberCount: record.memberCount - 1,
        owner: record.owner === user ? "" : record.owner,
      };
      await this.guard(
        this.conversations.batch(() => {
          this.conversations.put(id, updated);
          this.membersDb.remove([id, user]);
          this.roles.remove([id, user]);
          this.byUser.remove([user, id]);
        }),
      );
      this.changed(id);
      return updated;
    });
  }

  setRole(id: string, user: string, role: MemberRole) {
    return this.mutex.run(id, async () => {
      const record = this.existing(id);
      if (!this.membersDb.doesExist([id, user]))
        throw errors.notFound("USER_NOT_MEMBER", `${user} is not a member of ${id}`);
      const former = record.owner;
      const owner = role === "owner" ? user : former === user ? "" : former;
      const updated = owner === former ? record : { ...record, owner };
      await this.guard(
        this.conversations.batch(() => {
          if (updated !== record) this.conversations.put(id, updated);
          if (role === "admin") this.roles.put([id, user], "admin");
          else this.roles.remove([id, user]);
          // The owner handing over stays on as an admin.
          if (role === "owner" && former !== "" && former !== user && this.membersDb.doesExist([id, former]))
            this.roles.put([id, former], "admin");
        }),
      );
      return updated;
    });
  }

  async memberOf(id: string, user: string) {
    const record = this.record(id);
    if (!record || !this.membersDb.doesExist([id, user])) return undefined;
    return { record, role: this.roleOf(record, user) };
  }

  updateGroup(id: string, change: GroupChange) {
    return this.mutex.run(id, async () => {
      const record = this.record(id);
      if (record?.kind !== "group") throw errors.notFound("GROUP_NOT_FOUND", `group ${id} does not exist`);
      const updated = { ...record, ...change };
      await this.guard(this.conversations.put(id, updated));
      return updated;
    });
  }

  async isMember(id: string, user: string) {
    return this.membersDb.doesExist([id, user]);
  }

  async members(id: string) {
    const cached = this.memberLists.get(id);
    if (cached) return cached;
    const out: string[] = [];
    for (const key of this.membersDb.getKeys({ start: [id, ""], end: [id, KEY_END] }))
      out.push((key as [string, string])[1]);
    this.memberLists.set(id, out);
    return out;
  }

  async roster(id: string): Promise<MemberEntry[]> {
    const record = this.record(id);
    if (!record) return [];
    return (await this.members(id)).sort().map((userId) => ({ userId, role: this.roleOf(record, userId) }));
  }

  async conversationsOf(user: string, limit: number) {
    const out: ConversationRecord[] = [];
    for (const key of this.byUser.getKeys({ start: [user, ""], end: [user, KEY_END] })) {
      const record = this.record((key as [string, string])[1]);
      if (record) out.push(record);
    }
    out.sort((a, b) => b.createdAtMs - a.createdAtMs || (a.id < b.id ? -1 : 1));
    return out.slice(0, limit);
  }

  watch(listener: (conversationId: string) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async close(): Promise<void> {}

  /** After a change of the members is committed: the cached list goes first, then the listeners hear. */
  private changed(conversationId: string): void {
    this.memberLists.forget(conversationId);
    for (const listener of this.listeners) listener(conversationId);
  }

  private record(id: string): ConversationRecord | undefined {
    return withDefaults(this.conversations.get(id));
  }

  private existing(id: string): ConversationRecord {
    const record = this.record(id);
    if (!record) throw errors.notFound("CONVERSATION_NOT_FOUND", `conversation ${id} does not exist`);
    return record;
  }

  private roleOf(record: ConversationRecord, user: string): MemberRole {
    if (record.owner !== "" && record.owner === user) return "owner";
    return this.roles.get([record.id, user]) ?? "member";
  }
}

class EmbeddedInbox implements InboxStore {
  private readonly heads = new Map<string, number>();
  private readonly pending = new PendingWrites<{ cursor: number; written: Promise<unknown> }>();

  constructor(
    private readonly entries: Database<Omit<InboxEntry, "userId" | "cursor">, Key>,
    private readonly index: Database<number, Key>,
    private readonly turns: TurnCommits,
    private readonly guard: Guard,
  ) {}

  private headOf(userId: string): number {
    let head = this.heads.get(userId);
    if (head === undefined) {
      head = 0;
      for (const key of this.entries.getKeys({
        start: [userId, SEQ_MAX],
        end: [userId, 0],
        reverse: true,
        limit: 1,
      })) {
        head = (key as [string, number])[1];
      }
      this.heads.set(userId, head);
    }
    return head;
  }

  async append(entries: Array<Omit<InboxEntry, "cursor">>): Promise<InboxEntry[]> {
    const out: InboxEntry[] = [];
    const fresh: InboxEntry[] = [];
    /** The idKey of each fresh entry, for the entries in flight. */
    const freshKeys: string[] = [];
    const waitFor = new Set<Promise<unknown>>();
    const inThisCall = new Map<string, number>();
    for (const e of entries) {
      const idKey = `${e.userId}\u0000${e.conversationId}\u0000${e.seq}`;
      const repeated = inThisCall.get(idKey);
      if (repeated !== undefined) {
        out.push(inboxEntry(e, repeated));
        continue;
      }
      const inFlight = this.pending.get(idKey);
      if (inFlight) {
        // Another append is writing this entry: resolve only once it is durable too.
        waitFor.add(inFlight.written);
        out.push(inboxEntry(e, inFlight.cursor));
        continue;
      }
      const existing = this.index.get([e.userId, e.conversationId, e.seq]);
      if (existing !== undefined) {
        out.push(inboxEntry(e, existing));
        continue;
      }
      const cursor = this.headOf(e.userId) + 1;
      this.heads.set(e.userId, cursor);
      const entry = inboxEntry(e, cursor);
      inThisCall.set(idKey, cursor);
      fresh.push(entry);
      freshKeys.push(idKey);
      out.push(entry);
    }
    if (fresh.length > 0) {
      const commit = this.turns.write((w) => {
        for (const e of fresh) {
          w.put(this.entries, [e.userId, e.cursor], {
            conversationId: e.conversationId,
            seq: e.seq,
            messageId: e.messageId,
          });
          w.put(this.index, [e.userId, e.conversationId, e.seq], e.cursor);
        }
      });
      const written = this.guard(commit);
      for (let i = 0; i < fresh.length; i++) {
        this.pending.set(commit, freshKeys[i]!, { cursor: fresh[i]!.cursor, written });
      }
      waitFor.add(written);
    }
    await Promise.all(waitFor);
    return out;
  }

  async read(userId: string, after: number, limit: number): Promise<InboxEntry[]> {
    const out: InboxEntry[] = [];
    for (const { key, value } of this.entries.getRange({
      start: [userId, after + 1],
      end: [userId, SEQ_MAX],
      limit,
    })) {
      out.push({ userId, cursor: (key as [string, number])[1], ...value });
    }
    return out;
  }

  async head(userId: string): Promise<number> {
    // Only committed entries count: the in-memory head may be ahead while a batch is in flight.
    for (const key of this.entries.getKeys({
      start: [userId, SEQ_MAX],
      end: [userId, 0],
      reverse: true,
      limit: 1,
    })) {
      return (key as [string, number])[1];
    }
    return 0;
  }

  async close(): Promise<void> {}
}

class EmbeddedReceipts implements ReceiptStore {
  private readonly mutex = new KeyedMutex();
  constructor(
    private readonly db: Database<number, Key>,
    private readonly guard: Guard,
  ) {}

  raise(conversationId: string, userId: string, kind: ReceiptKindName, seq: number) {
    const key: Key = [conversationId, userId, kind];
    return this.mutex.run(JSON.stringify(key), async () => {
      if ((this.db.get(key) ?? 0) >= seq) return false;
      await this.guard(this.db.put(key, seq));
      return true;
    });
  }

  async get(conversationId: string, userId: string, kind: ReceiptKindName) {
    return this.db.get([conversationId, userId, kind]) ?? 0;
  }

  async close(): Promise<void> {}
}

/**
 * Sessions live and die with this process in embedded mode, so the routing table needs no disk:
 * a restart starts with no sessions, which is the truth.
 */
export class InMemoryRouting implements RoutingEvents {
  private readonly sessions = new Map<string, SessionEvent>();
  private readonly handlers = new Set<(e: SessionEvent) => void>();

  async publish(event: SessionEvent): Promise<void> {
    if (event.kind === "up") this.sessions.set(event.sessionId, event);
    else if (event.kind === "down") this.sessions.delete(event.sessionId);
    else {
      for (const [id, s] of this.sessions) {
        if (s.gatewayId === event.gatewayId && s.gatewayEpoch <= event.gatewayEpoch) this.sessions.delete(id);
      }
    }
    for (const h of this.handlers) h(event);
  }

  async subscribe(handler: (e: SessionEvent) => void): Promise<Closeable> {
    for (const s of this.sessions.values()) handler(s);
    this.handlers.add(handler);
    return { close: async () => void this.handlers.delete(handler) };
  }

  async close(): Promise<void> {
    this.handlers.clear();
  }
}

class EmbeddedPresence implements PresenceStore {
  constructor(
    private readonly db: Database<number, Key>,
    private readonly guard: Guard,
  ) {}
  async setLastActive(userId: string, atMs: number) {
    await this.guard(this.db.put(userId, atMs));
  }
  async lastActive(userIds: string[]) {
    const out = new Map<string, number>();
    for (const u of userIds) {
      const v = this.db.get(u);
      if (v !== undefined) out.set(u, v);
    }
    return out;
  }
  async close(): Promise<void> {}
}

/** Devices by (user, device id); device tokens' owners by deviceTokenKey, changed in the same transaction. */
class EmbeddedDevices implements DeviceStore {
  constructor(
    private readonly root: RootDatabase,
    private readonly db: Database<DeviceRecord, Key>,
    private readonly owners: Database<[string, string], Key>,
    private readonly guard: Guard,
  ) {}
  async put(device: DeviceRecord) {
    await this.guard(
      this.root.transaction(() => {
        this.forget([device.userId, device.deviceId]);
        if (tokenNamesOneDevice(device.provider)) {
          const key = deviceTokenKey(device.provider, device.token);
          const owner = this.owners.get(key);
          if (owner) this.forget(owner);
          this.owners.put(key, [device.userId, device.deviceId]);
        }
        this.db.put([device.userId, device.deviceId], device);
      }),
    );
  }
  async remove(userId: string, deviceId: string) {
    await this.guard(this.root.transaction(() => this.forget([userId, deviceId])));
  }
  /** Removes a registration and its token's owner entry (inside a transaction). */
  private forget(at: [string, string]): void {
    const existing = this.db.get(at);
    if (!existing) return;
    this.db.remove(at);
    if (!tokenNamesOneDevice(existing.provider)) return;
    const key = deviceTokenKey(existing.provider, existing.token);
    const owner = this.owners.get(key);
    if (owner && owner[0] === at[0] && owner[1] === at[1]) this.owners.remove(key);
  }
  async list(userId: string) {
    const out: DeviceRecord[] = [];
    for (const { value } of this.db.getRange({ start: [userId, ""], end: [userId, KEY_END] }))
      out.push(value);
    return out;
  }
  async close(): Promise<void> {}
}

/** Mutes by (user, conversation) → end (0: until unmuted); do-not-disturb windows by user. */
class EmbeddedSettings implements NotificationSettingsStore {
  constructor(
    private readonly mutes: Database<number, Key>,
    private readonly windows: Database<DoNotDisturb, Key>,
    private readonly guard: Guard,
  ) {}
  async mute(userId: string, mute: MutedConversation) {
    await this.guard(this.mutes.put([userId, mute.conversationId], mute.untilMs));
  }
  async unmute(userId: string, conversationId: string) {
    await this.guard(this.mutes.remove([userId, conversationId]));
  }
  async muted(userId: string, nowMs: number) {
    const out: MutedConversation[] = [];
    for (const { key, value } of this.mutes.getRange({ start: [userId, ""], end: [userId, KEY_END] }))
      if (value === 0 || value > nowMs)
        out.push({ conversationId: (key as [string, string])[1], untilMs: value });
    return out;
  }
  async isMuted(userId: string, conversationId: string, nowMs: number) {
    const until = this.mutes.get([userId, conversationId]);
    return until !== undefined && (until === 0 || until > nowMs);
  }
  async setDoNotDisturb(userId: string, dnd: DoNotDisturb | undefined) {
    await this.guard(dnd ? this.windows.put(userId, dnd) : this.windows.remove(userId));
  }
  async doNotDisturb(userId: string) {
    return this.windows.get(userId);
  }
  async close(): Promise<void> {}
}

/** Dead letters kept at most; the oldest go first. */
const PUSH_DEAD_LETTERS_MAX = 10_000;

/** Stored by [deadAtMs, job id], so they sort by when they failed. */
type StoredDeadLetter = Omit<PushDeadLetter, "id">;

/** Records a dead letter and drops the oldest beyond the bound; inside the caller's transaction. */
function recordDeadLetter(
  dead: Database<StoredDeadLetter, Key>,
  job: PushJob,
  error: string,
  deadAtMs: number,
): PushDeadLetter {
  dead.put([deadAtMs, job.id], { job, error, deadAtMs });
  const excess = dead.getCount() - PUSH_DEAD_LETTERS_MAX;
  if (excess > 0) for (const key of dead.getKeys({ limit: excess })) dead.remove(key);
  return { id: deadLetterId(deadAtMs, job.id), job, error, deadAtMs };
}

/** How long, and how many at most, the keys of added push jobs are kept to refuse the same job again. */
export const PUSH_JOB_KEYS_KEPT_MS = 3_600_000;
export const PUSH_JOB_KEYS_MAX = 100_000;

class EmbeddedPushJobs implements PushJobStore {
  constructor(
    private readonly root: RootDatabase,
    private readonly jobs: Database<PushJob, Key>,
    /** key -> when it was added */
    private readonly keys: Database<number, Key>,
    /** [when it was added, key]: the keys oldest first, to let them go */
    private readonly keysByTime: Database<true, Key>,
    private readonly dead: Database<StoredDeadLetter, Key>,
    private readonly guard: Guard,
    private readonly keysMax: number,
  ) {}
  /** Keys kept, counted once and then kept true here (this process alone writes them). */
  private keyCount: number | undefined;
  async add(job: PushJob, key: string) {
    const now = Date.now();
    return this.guard(
      this.root.transaction(() => {
        const added = this.keys.get(key);
        if (added !== undefined && added > now - PUSH_JOB_KEYS_KEPT_MS) return false;
        let count = this.keyCount ?? this.keysByTime.getCount();
        if (added !== undefined) {
          this.keysByTime.remove([added, key]);
          count--;
        }
        // The expired and the oldest beyond the bound go, a few per job so no add pays for many.
        let excess = count + 1 - this.keysMax;
        for (const old of this.keysByTime.getKeys({ limit: Math.max(excess, 8) })) {
          const [at, oldKey] = old as [number, string];
          if (excess <= 0 && at > now - PUSH_JOB_KEYS_KEPT_MS) break;
          this.keysByTime.remove(old);
          this.keys.remove(oldKey);
          count--;
          excess--;
        }
        this.keys.put(key, now);
        this.keysByTime.put([now, key], true);
        this.jobs.put(job.id, job);
        this.keyCount = count + 1;
        return true;
      }),
    );
  }
  async put(job: PushJob) {
    await this.guard(this.jobs.put(job.id, job));
  }
  async remove(id: string) {
    await this.guard(this.jobs.remove(id));
  }
  async list(limit: number) {
    const out: PushJob[] = [];
    for (const { value } of this.jobs.getRange({ limit })) out.push(value);
    return out;
  }
  async deadLetter(job: PushJob, error: string) {
    await this.guard(
      this.root.transaction(() => {
        this.jobs.remove(job.id);
        recordDeadLetter(this.dead, job, error, Date.now());
      }),
    );
  }
  async close(): Promise<void> {}
}

class EmbeddedPushDeadLetters implements PushDeadLetterStore {
  constructor(
    private readonly root: RootDatabase,
    private readonly dead: Database<StoredDeadLetter, Key>,
    private readonly guard: Guard,
  ) {}
  async add(job: PushJob, error: string) {
    return this.guard(this.root.transaction(() => recordDeadLetter(this.dead, job, error, Date.now())));
  }
  async list(limit: number, beforeId?: string) {
    const before = beforeId === undefined ? undefined : parseDeadLetterId(beforeId);
    if (beforeId !== undefined && !before) return [];
    const out: PushDeadLetter[] = [];
    const range = this.dead.getRange({
      reverse: true,
      limit,
      ...(before ? { start: [before.deadAtMs, before.jobId], exclusiveStart: true } : {}),
    });
    for (const { value } of range) out.push({ ...value, id: deadLetterId(value.deadAtMs, value.job.id) });
    return out;
  }
  async take(ids: string[]) {
    const keys = ids.map(parseDeadLetterId).filter((k) => k !== undefined);
    // One transaction reads and removes: a dead letter goes to exactly one of two concurrent takers.
    return this.guard(
      this.root.transaction(() => {
        const taken: PushDeadLetter[] = [];
        for (const k of keys) {
          const value = this.dead.get([k.deadAtMs, k.jobId]);
          if (!value) continue;
          this.dead.remove([k.deadAtMs, k.jobId]);
          taken.push({ ...value, id: deadLetterId(value.deadAtMs, value.job.id) });
        }
        return taken;
      }),
    );
  }
  async close(): Promise<void> {}
}

/** A message as the log hands it to a consumer, built as a literal (see `sequenced`). */
function logged(m: StoredMessage, trace: TraceCarrier | undefined, committed?: Promise<void>): LoggedMessage {
  const out: LoggedMessage = sequenced(m, m.seq);
  if (trace) out.trace = trace;
  if (committed) out.committed = committed;
  return out;
}
