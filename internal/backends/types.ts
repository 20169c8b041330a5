/**
 * The storage and messaging interfaces every service is written against. Two implementations:
 * `embedded` (one process, one LMDB file, in-process log) and `distributed` (Kafka + Cassandra).
 * One contract test suite (test/contract) runs against both; shapes follow docs/design.md §4 and §6:
 * a keyed, partitioned log with consumer groups, and a store queried by partition and clustering range.
 */
import { createHash } from "node:crypto";
import type { TraceCarrier } from "../lib/tracing.js";

/** A message as stored: immutable once appended. */
export interface StoredMessage {
  conversationId: string;
  /** Gap-free position in the conversation, from 1. */
  seq: number;
  /** Snowflake id, decimal string. */
  messageId: string;
  sender: string;
  clientMsgId: string;
  body: string;
  createdAtMs: number;
}

/** What a sender hands to the log; `seq` is assigned by the conversation's owner. */
export type MessageDraft = Omit<StoredMessage, "seq">;

export interface AppendResult {
  message: StoredMessage;
  /** True when (conversationId, sender, clientMsgId) was appended before; `message` is the original. */
  duplicate: boolean;
}

/**
 * A sequenced message as a consumer gets it. `recipients`, when the log knows them, are the
 * conversation's members at the message's position in the log (membership changes are ordered with
 * the messages); without them the consumer reads the members itself.
 */
export interface LoggedMessage extends StoredMessage {
  recipients?: readonly string[];
  /**
   * Set, for a consumer that asked (ConsumeOptions.markMayRepeat), when it may have handled the
   * message before this process started (it was in the log then; embedded log only): its effects may
   * already be stored, and must be repeated as they were, not made again from today's state (the
   * router keeps the recipients it first gave it).
   */
  mayRepeat?: true;
  /** The message's trace context, when it was sent in a recorded trace (tracing.ts). */
  trace?: TraceCarrier;
  /**
   * Set when the log handed the message over before its commit (ConsumeOptions.beforeCommit):
   * resolves once it is durable. Until then nothing outside the store may see it.
   */
  committed?: Promise<void>;
}

export interface ConsumeOptions {
  /**
   * Where a group with no position starts: the oldest retained message (the default) or the end of
   * the log (what is appended after it joined). A group with a position resumes there either way.
   */
  startAt?: "earliest" | "latest";
  /**
   * A consumer waiting at the end of the log may get the next message as soon as it is appended,
   * before its commit, with `committed` set (embedded log only; others ignore it). The writes the
   * handler makes to the same store before it next waits on I/O join the append's transaction —
   * one commit (one fsync) for the message and its consequences instead of two. The handler must
   * await `committed` before anything outside the store sees the message.
   */
  beforeCommit?: boolean;
  /** Mark the messages a consumer may have handled before this process started (`mayRepeat`; embedded log only). */
  markMayRepeat?: boolean;
  /**
   * This consumer addresses each message to the conversation's members when it handles it (the
   * router): a membership change waits until it has handled what was appended before the change
   * (embedded log only; ADR 0012).
   */
  addressesMembers?: boolean;
}

/** Hands out ordered batches to one consumer; resolves when the batch's effects are durable. */
export type BatchHandler = (messages: LoggedMessage[]) => Promise<void>;

export interface Closeable {
  close(): Promise<void>;
}

/**
 * The message log (Kafka topic switchboard.messages keyed by conversation / the embedded log).
 * `append` resolves only once the message is durable and carries its seq: an ack means durable.
 */
/** A message as the router delivers it: the recipients' inbox cursors are assigned and durable. */
export interface InboxDelivery {
  message: StoredMessage;
  recipients: Array<{ userId: string; cursor: number }>;
  /**
   * A message of a pull conversation (ADR 0010): it has no inbox entries and `recipients` is empty;
   * the router sends it to the conversation's members who are online.
   */
  pull?: boolean;
  /** The message's trace context, when it was sent in a recorded trace (tracing.ts). */
  trace?: TraceCarrier;
}

/** What log.deliveries hands on, in log order. */
export interface DeliveryHandler {
  /** Messages whose recipients' inbox entries are durable (a pull message has none). */
  deliver(batch: InboxDelivery[]): Promise<void>;
  /**
   * A conversation's members changed: called after the conversation's messages sequenced before the
   * change were delivered and before those after it (what keeps cached member lists true).
   */
  membershipChanged(conversationId: string): void;
  /**
   * The partitions this process reads were reassigned: changes another process read meanwhile were
   * not seen here, so cached member lists may be stale (called before the next batch is delivered).
   */
  partitionsChanged?(): void;
  /**
   * Users whose entries in a batch were found applied by a former owner (a head read from storage
   * said so): it may have stopped before handing them on. Their live sessions look at their inboxes
   * once, and get what they are missing.
   */
  recheckInboxes?(userIds: readonly string[]): void;
}

/** What the sender's side knows about a draft that lets the log do less. */
export interface AppendHints {
  /**
   * Set when the client called this send its first attempt (client protocol `Send.first_attempt`):
   * no other send with its key can have been received before this time (Unix ms, the gateway's
   * clock): when the gateway received the frame, less the longest the frame may have trailed a
   * resend (two ping intervals). The log may then skip looking for an earlier message with the
   * same key (ADR 0002, "Dedupe lookups").
   */
  firstAttemptResendsAfterMs?: number;
}

export interface MessageLog extends Closeable {
  append(draft: MessageDraft, hints?: AppendHints): Promise<AppendResult>;
  /**
   * The message `append` would answer a draft with this key with as a duplicate, looked up without
   * appending anything: what (conversationId, sender, clientMsgId) was appended as within the dedupe
   * window (one still in flight once it is durable), or undefined if nothing was. A send acknowledged
   * is always found here; one whose append is still on its way may not be yet. For a send refused
   * for want of permission that repeats one stored before (docs/protocol.md §3, "Idempotency").
   */
  appended(conversationId: string, sender: string, clientMsgId: string): Promise<StoredMessage | undefined>;
  /**
   * The answer that a draft with this key, appended through this process, still waits for, or
   * undefined (nothing of this process waits for one; the embedded log answers every append in its
   * own commit). Distributed: a draft can sit in the log unsequenced past its sender's deadline
   * (SEQUENCE_TIMEOUT), and its resend, refused for want of permission, would find nothing stored
   * though the draft is then stored: the resend's answer is the draft's (ADR 0001).
   */
  awaiting?(conversationId: string, sender: string, clientMsgId: string): Promise<AppendResult> | undefined;
  /**
   * Resolves once every draft of the conversation appended before the call, through any process, was
   * sequenced (then `appended` finds the one stored under a key, if any); rejects with
   * SEQUENCE_TIMEOUT (retryable) past the append timeout. Absent where an append is sequenced within
   * its own call (embedded). Distributed: a resend refused for want of permission whose first
   * transmission went through another process waits for this before it is looked up (ADR 0001).
   */
  sequencedUpToNow?(conversationId: string): Promise<void>;
  /**
   * Consumes as member of `group`: batches arrive in per-conversation seq order, at least once;
   * the group's position advances only after `handler` resolved, so effects must be idempotent.
   * Distributed: only when the sequenced topic is published (kafka.publishSequenced).
   */
  consume(group: string, handler: BatchHandler, options?: ConsumeOptions): Promise<Closeable>;
  /**
   * The log's own fan-out, where it has one (distributed: the owner of a user's inbox partition assigns
   * its cursors, ADR 0002): batches of messages whose recipients' inbox entries are durable, at least
   * once. Without it the router consumes the log and appends to the inboxes itself.
   */
  deliveries?(handler: DeliveryHandler): Promise<Closeable>;
}

export interface HistoryQuery {
  /** Only seq < beforeSeq (0: no upper bound). */
  beforeSeq?: number;
  /** Only seq > afterSeq (0: no lower bound). */
  afterSeq?: number;
  limit: number;
}

export interface HistoryPage {
  /** Oldest first. */
  messages: StoredMessage[];
  hasMore: boolean;
}

/** Durable message storage by (conversation, bucket) partition and seq clustering. */
export interface MessageStore extends Closeable {
  /**
   * Idempotent upsert of immutable rows (re-writing the same message is harmless). `fence`: the
   * writer's ownership epoch; a row written under a higher fence wins over one written under a lower
   * one, whatever the order (the distributed sequencer's zombie fence; the embedded store has one
   * writer and ignores it).
   */
  write(messages: StoredMessage[], options?: { fence?: bigint }): Promise<void>;
  /** With only beforeSeq: the newest `limit` below it; with afterSeq: the oldest `limit` above it. */
  history(conversationId: string, query: HistoryQuery): Promise<HistoryPage>;
  lastSeq(conversationId: string): Promise<number>;
  /** The messages at these positions, in the given order; missing ones are left out. */
  getMany(keys: Array<{ conversationId: string; seq: number }>): Promise<StoredMessage[]>;
}

export type ConversationKindName = "direct" | "group";

/** A member's standing in a group: the owner (at most one), admins, and everyone else. */
export type MemberRole = "owner" | "admin" | "member";

/** Who may do something in a group: any member, or only its admins and owner. */
export type GroupPolicy = "everyone" | "admins";

export interface ConversationRecord {
  id: string;
  kind: ConversationKindName;
  name: string;
  /** The group's owner; "" for direct conversations and for a group whose owner was removed. */
  owner: string;
  open: boolean;
  createdAtMs: number;
  memberCount: number;
  /** Who may post ("admins": an announcement channel). Always "everyone" in direct conversations. */
  postPolicy: GroupPolicy;
  /** Who may add members. */
  addPolicy: GroupPolicy;
  /**
   * How messages reach the members (ADR 0010): "push" writes an inbox entry per member; "pull"
   * stores the message once and members follow the conversation by seq. Never goes back to push.
   */
  delivery: DeliveryModel;
  /**
   * Changes stored so far: 1 at creation, one more with every stored change of the record, its
   * members or their roles, each made only on the state it read (so two changes never share one).
   * Of two states of one conversation, the one with the larger version is the newer, whichever
   * process made or relayed it. 0: a record stored before versions were kept, not changed since.
   */
  version: number;
}

export type DeliveryModel = "push" | "pull";

/** A conversation to create: its policies default to "everyone", its delivery to "push". */
export type NewConversation = Omit<
  ConversationRecord,
  "memberCount" | "postPolicy" | "addPolicy" | "delivery" | "version"
> &
  Partial<Pick<ConversationRecord, "postPolicy" | "addPolicy" | "delivery">>;

/** A new conversation as stored: what the creator left unsaid is "everyone may" and push delivery. */
export function newConversationRecord(record: NewConversation, memberCount: number): ConversationRecord {
  return {
    postPolicy: "everyone",
    addPolicy: "everyone",
    delivery: "push",
    ...record,
    memberCount,
    version: 1,
  };
}

/** What updateGroup changes. */
export interface GroupChange {
  name?: string;
  open?: boolean;
  postPolicy?: GroupPolicy;
  addPolicy?: GroupPolicy;
}

/** One member of a conversation and its role. */
export interface MemberEntry {
  userId: string;
  role: MemberRole;
}

/** Conversations and their members (tables conversations, members_by_conversation, conversations_by_user). */
export interface MembershipStore extends Closeable {
  /** Creates the conversation with its members unless it exists; returns the stored record either way. */
  createConversation(
    record: NewConversation,
    members: string[],
  ): Promise<{ record: ConversationRecord; created: boolean }>;
  getConversation(id: string): Promise<ConversationRecord | undefined>;
  /**
   * Adds members, refusing (GROUP_FULL) to exceed `membersMax`; already-present users are ignored.
   * A group that ends up with more than `pullAbove` members is switched to pull in the same change.
   */
  addMembers(
    id: string,
    users: string[],
    membersMax: number,
    pullAbove?: number,
  ): Promise<ConversationRecord>;
  /**
   * Tells whoever caches member lists to read this conversation's again, without changing it: for a
   * retried removal whose first attempt stored the change but failed to announce it (distributed
   * backend). Absent where nothing needs telling.
   */
  reannounce?(id: string): Promise<void>;
  /** Removes a member with its role; removing the owner leaves the group without one (owner ""). */
  removeMember(id: string, user: string): Promise<ConversationRecord>;
  /**
   * Sets a member's role. "owner" transfers ownership: `user` becomes the owner and the former owner,
   * if still a member, an admin, in one atomic change. Giving the owner another role leaves the group
   * without one. NOT_FOUND (USER_NOT_MEMBER) unless `user` is a member.
   */
  setRole(id: string, user: string, role: MemberRole): Promise<ConversationRecord>;
  /** The conversation and the user's role in it, in one read; undefined unless the user is a member. */
  memberOf(id: string, user: string): Promise<{ record: ConversationRecord; role: MemberRole } | undefined>;
  /**
   * Renames a group and/or opens or closes it (what `change` names; members are untouched); returns
   * the record after the change. NOT_FOUND (GROUP_NOT_FOUND) unless `id` is an existing group.
   */
  updateGroup(id: string, change: GroupChange): Promise<ConversationRecord>;
  isMember(id: string, user: string): Promise<boolean>;
  /**
   * Those of `users` who are members of conversation `id` (none if it does not exist), in one read
   * per at most 100 users however large the conversation: who of many shares it with someone.
   */
  membersAmong(id: string, users: readonly string[]): Promise<Set<string>>;
  members(id: string): Promise<string[]>;
  /**
   * A page of the members with their roles, sorted by user id: those after `page.after` (all when
   * absent), at most `page.limit`; `more` when others sort after the last one. Reads only the page
   * (a group may have 100,000 members).
   */
  roster(id: string, page: { after?: string; limit: number }): Promise<RosterPage>;
  conversationsOf(user: string, limit: number): Promise<ConversationRecord[]>;
  /**
   * Calls `listener` after every change of a conversation's members is stored, in this process
   * (embedded: what keeps the router's member sets true; the distributed router learns of changes
   * from the log instead). Returns the function that stops it.
   */
  watch?(listener: (conversationId: string) => void): () => void;
}

/**
 * Where a membership change stands in its conversation's seqs (ADR 0012): the head when the sequencer
 * met the change's announcement, undefined while it has not. `changedAtMs`: when the change was stored.
 */
export interface ChangeBound {
  seq: number | undefined;
  changedAtMs: number;
}

/** A member: counts for the seqs after `joined`. */
export interface MemberBound {
  user: string;
  joined: ChangeBound;
}

/** A membership that ended (kept a week): counted for the seqs after `joined` up to `left`. */
export interface DepartureBound {
  user: string;
  joined: ChangeBound;
  left: ChangeBound;
}

/** A conversation's members and recently ended memberships, with their bounds (ADR 0012). */
export interface MembershipAsOfSeqs {
  members: MemberBound[];
  departed: DepartureBound[];
}

/**
 * What the distributed sequencer needs to address each message to the members as of its seq.
 * `departedSinceMs`: only memberships that ended at or after it are read and bound (default: every
 * one kept). A departure matters only to messages before its announcement in the partition, and the
 * sequencer knows how old the oldest draft it handles is; older departures would be read for nothing.
 */
export interface MembershipSeqStore {
  membershipSeqs(id: string, departedSinceMs?: number): Promise<MembershipAsOfSeqs>;
  /**
   * Gives every change of conversation `id` stored at or before `atMs` that has no bound yet the bound
   * `head` (what the sequencer does when it meets their announcement, made at `atMs`); a change with a
   * bound keeps it. Returns the conversation's bounds after that.
   */
  boundChanges(id: string, atMs: number, head: number, departedSinceMs?: number): Promise<MembershipAsOfSeqs>;
}

/** One entry of a user's inbox: the user's personal, ordered stream of messages addressed to them. */
export interface RosterPage {
  members: MemberEntry[];
  more: boolean;
}

export interface InboxEntry {
  userId: string;
  /** Per-user position, gap-free from 1; a device's sync cursor points here. */
  cursor: number;
  conversationId: string;
  seq: number;
  messageId: string;
}

export interface InboxStore extends Closeable {
  /**
   * Appends entries, assigning cursors in order. Idempotent per (user, conversation, seq): an entry
   * appended before keeps its cursor and is returned again.
   */
  append(entries: Array<Omit<InboxEntry, "cursor">>): Promise<InboxEntry[]>;
  /** Entries with cursor > after, oldest first, at most `limit`. */
  read(userId: string, after: number, limit: number): Promise<InboxEntry[]>;
  head(userId: string): Promise<number>;
  /**
   * The users whose entries for this message are stored (none: it was never routed). A message handled
   * again after a restart (LoggedMessage.mayRepeat) goes to these users, not to the members of today,
   * who may include a user added after it was sent. Stores whose log addresses each message omit it.
   */
  appendedFor?(conversationId: string, seq: number): Promise<string[]>;
}

export type ReceiptKindName = "delivered" | "read";

export interface ReceiptStore extends Closeable {
  /** Raises the watermark; returns false if it was already at or above `seq`. */
  raise(conversationId: string, userId: string, kind: ReceiptKindName, seq: number): Promise<boolean>;
  get(conversationId: string, userId: string, kind: ReceiptKindName): Promise<number>;
}

/** A device connection's whereabouts (the compacted routing topic). */
export interface SessionEvent {
  kind: "up" | "down" | "gateway-gone";
  userId: string;
  sessionId: string;
  gatewayId: string;
  gatewayEpoch: number;
  /** host:port routers dial for the gateway's Deliver stream (up events of gateways in other processes). */
  gatewayAddress?: string;
  /**
   * How long after its publication a live event reached the subscriber, when the table is a log
   * (distributed backend); absent in a replay and in-process.
   */
  lateByMs?: number;
}

export interface RoutingEvents extends Closeable {
  publish(event: SessionEvent): Promise<void>;
  /** Replays the current table (as "up" events), then follows changes. */
  subscribe(handler: (event: SessionEvent) => void): Promise<Closeable>;
}

export interface PresenceStore extends Closeable {
  setLastActive(userId: string, atMs: number): Promise<void>;
  lastActive(userIds: string[]): Promise<Map<string, number>>;
}

export interface DeviceRecord {
  userId: string;
  deviceId: string;
  provider: "webpush" | "apns" | "fcm" | "webhook";
  token: string;
  registeredAtMs: number;
}

/**
 * Whether a provider's tokens name one device: a device token (APNs, FCM, Web Push) belongs to one
 * registration, so a phone handed to another user stops getting the first user's notifications. A
 * webhook URL is the app's own endpoint and may serve many users.
 */
export const tokenNamesOneDevice = (provider: DeviceRecord["provider"]): boolean => provider !== "webhook";

/** The key a device token is looked up by (tokens are up to 4,096 characters). */
export const deviceTokenKey = (provider: DeviceRecord["provider"], token: string): string =>
  createHash("sha256").update(`${provider}\u0000${token}`).digest("hex");

export interface DeviceStore extends Closeable {
  /**
   * Stores the device's registration, replacing its earlier one. A device token (tokenNamesOneDevice)
   * registered before by another user or another device id is taken from there: that registration
   * is removed.
   */
  put(device: DeviceRecord): Promise<void>;
  remove(userId: string, deviceId: string): Promise<void>;
  /**
   * Removes the registration only if its token is still `token`, as one step: pruning a token the
   * provider called dead must not remove a fresh one the device registered meanwhile (a read, then a
   * remove, would). True: it was removed.
   */
  removeIfToken(userId: string, deviceId: string, token: string): Promise<boolean>;
  list(userId: string): Promise<DeviceRecord[]>;
}

/**
 * A daily do-not-disturb window: from `startMinute` to `endMinute` after midnight in `timeZone` (an
 * IANA name, e.g. "Europe/Berlin"); a window whose end is before its start runs past midnight.
 */
export interface DoNotDisturb {
  startMinute: number;
  endMinute: number;
  timeZone: string;
}

export interface MutedConversation {
  conversationId: string;
  /** When the mute ends, Unix ms; 0: until unmuted. */
  untilMs: number;
}

/** A user's notification settings: what push reads before it notifies the user. */
export interface NotificationSettingsStore extends Closeable {
  /** Mutes a conversation (again: the new end replaces the old one). */
  mute(userId: string, mute: MutedConversation): Promise<void>;
  unmute(userId: string, conversationId: string): Promise<void>;
  /** The user's mutes still in force at `nowMs`, by conversation id. */
  muted(userId: string, nowMs: number): Promise<MutedConversation[]>;
  /** Whether the conversation is muted for the user at `nowMs` (one read). */
  isMuted(userId: string, conversationId: string, nowMs: number): Promise<boolean>;
  /** Sets the window, or clears it with undefined. */
  setDoNotDisturb(userId: string, dnd: DoNotDisturb | undefined): Promise<void>;
  doNotDisturb(userId: string): Promise<DoNotDisturb | undefined>;
}

/** A push delivery (one notification to one device) not finished yet, kept so a crash does not lose it. */
export interface PushJob {
  /** Sorts by creation: a zero-padded creation time, then unique parts. */
  id: string;
  /**
   * Two jobs with the same key are one notification for one device, asked for twice (a router
   * handling messages again after a crash): the stores deliver only the first. Absent: the job is
   * its own (a dead letter replayed, or a job stored before keys existed).
   */
  key?: string;
  provider: DeviceRecord["provider"];
  token: string;
  /** The registration it was read from (null: the generic push.webhookUrl). */
  device: DeviceRecord | null;
  /** Already privacy-filtered: what the provider will see. */
  notification: {
    id: string;
    userId: string;
    conversationId: string;
    title: string;
    body: string;
    ttlSeconds: number;
    messageCount: number;
    /** Unread messages in the conversation when queued (providers/types.ts); absent in older jobs. */
    unreadCount?: number;
  };
  /** Attempts made so far. */
  attempts: number;
  /** The next attempt is not due before (a backoff or Retry-After a restart must still honour). */
  notBeforeMs: number;
  createdAtMs: number;
  /**
   * The W3C trace context of the message it notifies of, when traced: the process that delivers it
   * (another one, through a durable queue) makes its send a span of that trace.
   */
  trace?: Record<string, string>;
}

export interface PushDeadLetter {
  /** `<deadAtMs, 15 digits>:<job id>`: sorts by when it failed, and names it for replay. */
  id: string;
  job: PushJob;
  /** The last error, e.g. "apns answered 400 PayloadEmpty" or "gave up after 5 attempts". */
  error: string;
  deadAtMs: number;
}

/** The id a dead letter is listed and replayed by. */
export const deadLetterId = (deadAtMs: number, jobId: string): string =>
  `${String(deadAtMs).padStart(15, "0")}:${jobId}`;

/** The parts of a dead letter's id, or undefined when it is not one. */
export function parseDeadLetterId(id: string): { deadAtMs: number; jobId: string } | undefined {
  const m = /^(\d{15}):(.{1,200})$/.exec(id);
  return m ? { deadAtMs: Number(m[1]), jobId: m[2]! } : undefined;
}

/**
 * Push jobs that failed for good, with their last error, kept for a bounded time or count so an
 * operator can see what failed and send it again once the cause is mended (both backends).
 */
export interface PushDeadLetterStore extends Closeable {
  /** Records a failed job (the distributed queue; the embedded job store moves its own in one transaction). */
  add(job: PushJob, error: string): Promise<PushDeadLetter>;
  /** Newest first; with `beforeId`, only those older than that one (the next page). */
  list(limit: number, beforeId?: string): Promise<PushDeadLetter[]>;
  /**
   * Removes these dead letters and returns the ones that were there, each to exactly one caller
   * (two concurrent replays of one id send it once).
   */
  take(ids: string[]): Promise<PushDeadLetter[]>;
}

/** The push jobs of a process (embedded backend; internal/push). */
export interface PushJobStore extends Closeable {
  /**
   * Stores a new job, unless a job with the same key was added within the last
   * PUSH_JOB_KEYS_KEPT_MS (an hour; the newest PUSH_JOB_KEYS_MAX keys): false then, and nothing is
   * stored. A router re-handling messages after a crash asks again within seconds.
   */
  add(job: PushJob): Promise<boolean>;
  /** Stores a job as it stands now (its attempt count and next due time), or a dead letter replayed. */
  put(job: PushJob): Promise<void>;
  remove(id: string): Promise<void>;
  /** Pending jobs, oldest first. */
  list(limit: number): Promise<PushJob[]>;
  /** Removes the job and records it as dead, in one transaction; the oldest beyond the bound go. */
  deadLetter(job: PushJob, error: string): Promise<void>;
}

/**
 * Durable push jobs shared by several push processes (distributed backend): whoever owns a job's
 * partition delivers it, and a job a process left (a crash, a rebalance) goes to the next owner.
 */
export interface PushJobQueue extends Closeable {
  /**
   * Stores a new job, or a job's new attempt count and next due time. A new job with the key of one
   * that ended (PushJob.key) is not delivered: its partition's owner ends it at once.
   */
  put(job: PushJob): Promise<void>;
  /** The job ended (delivered, or its token pruned): nobody delivers it again. */
  finish(job: PushJob): Promise<void>;
  /** The job failed for good: recorded with its last error among the dead letters, and ended. */
  deadLetter(job: PushJob, error: string): Promise<void>;
  /**
   * Hands this process the jobs of the partitions it owns: the ones left from before, then each new
   * one. `deliver` resolves when this process is done with the job (ended, or abandoned on close).
   */
  consume(deliver: (job: PushJob) => Promise<void>): Promise<void>;
}

/** Everything a platform needs, from one backend. */
export interface Backends extends Closeable {
  readonly name: "embedded" | "distributed";
  /**
   * Names the data these stores hold (`welcome.data_set`): it changes when they are replaced, by a
   * restored backup (embedded: `backup` names its copy anew) or a new keyspace or topic prefix
   * (distributed), after which seqs and inbox positions a device knows may be handed out again.
   */
  readonly dataSet: string;
  log: MessageLog;
  messages: MessageStore;
  membership: MembershipStore;
  inbox: InboxStore;
  receipts: ReceiptStore;
  routing: RoutingEvents;
  presence: PresenceStore;
  devices: DeviceStore;
  settings: NotificationSettingsStore;
  /** Durable push jobs of this process (embedded). */
  pushJobs?: PushJobStore;
  /** Durable push jobs shared by the push processes (distributed). */
  pushQueue?: PushJobQueue;
  /** Push jobs that failed for good (both). */
  pushDeadLetters: PushDeadLetterStore;
}

/** A message already given a seq, found by its dedupe key. */
export interface SequencedRef {
  seq: number;
  messageId: string;
}

/** One conversation's share of a sequenced batch: the new head and the new dedupe rows. */
export interface SequencerRecord {
  conversationId: string;
  /** The conversation's last assigned seq after this batch. */
  head: number;
  /** Dedupe rows of the messages this batch assigned (`${sender}\u0000${clientMsgId}` -> ref). */
  assigned: Array<{ dedupeKey: string; seq: number; messageId: string }>;
}

/**
 * The per-conversation seq state of the distributed backend (ADR 0002): the last assigned seq and
 * the dedupe rows, written without conditions by the single owner of the conversation's partition.
 * Every write carries the owner's epoch as its write timestamp, so whatever a former owner writes
 * late loses to its successor's; the fence itself is the partition's epoch (OwnershipStore).
 */
export interface SequencerStore extends Closeable {
  /** Last assigned seq per conversation (0 when none); one request for many conversations. */
  heads(conversationIds: string[]): Promise<Map<string, number>>;
  /** Dedupe rows found for these keys, by conversation then key; one request per few conversations. */
  lookup(keys: Map<string, string[]>): Promise<Map<string, Map<string, SequencedRef>>>;
  /**
   * Writes the heads and dedupe rows at write timestamp `epoch`; dedupe rows expire after
   * `dedupeWindowSeconds` (a resend after that is a new message).
   */
  record(records: SequencerRecord[], epoch: bigint, dedupeWindowSeconds: number): Promise<void>;
}

/**
 * Who owns a partition of a stream (the sequencer's drafts partitions): one conditional write per
 * claim, never per message. A claim gets an epoch above every earlier one; an owner checks with
 * `current` (a plain read) that its epoch is still the newest before it acknowledges anything.
 */
export interface OwnershipStore extends Closeable {
  claim(stream: string, partition: number, owner: string): Promise<bigint>;
  current(stream: string, partition: number): Promise<bigint | undefined>;
}

// The message path builds these objects as literals, field by field. An object spread followed by a
// property (`{ ...draft, seq }`) made Node 20's V8 promote far more to the old generation: measured
// in isolation, 5-14x the bytes per scavenge of the same objects built as literals, all of it garbage
// for the next major GC, whose pauses were the server's latency tail (bench/README, "Old-generation
// garbage").

/** The stored form of a draft given its seq. */
export function sequenced(d: MessageDraft, seq: number): StoredMessage {
  return {
    conversationId: d.conversationId,
    seq,
    messageId: d.messageId,
    sender: d.sender,
    clientMsgId: d.clientMsgId,
    body: d.body,
    createdAtMs: d.createdAtMs,
  };
}

/** An inbox entry at `cursor`. */
export function inboxEntry(
  e: Omit<InboxEntry, "cursor">,
  cursor: number,
  messageId: string = e.messageId,
): InboxEntry {
  return { userId: e.userId, cursor, conversationId: e.conversationId, seq: e.seq, messageId };
}
