/**
 * Conversation rules shared by the gateway (client requests) and the router's gRPC API (backends):
 * who may send where, direct-conversation ids, group lifecycle, and the durable append of a send.
 *
 * Groups have roles (docs/protocol.md, "Roles"): one owner, admins, members. Members post unless the
 * group's postPolicy is "admins" and add others unless its addPolicy is; only admins and the owner
 * remove others, change the group and see it through; only the owner names admins or hands over.
 * A caller of `undefined` is a trusted backend (the gRPC server API), which no rule restrains.
 */

import { createHash } from "node:crypto";
import type {
  AppendResult,
  ConversationRecord,
  GroupChange,
  GroupPolicy,
  MemberRole,
  MembershipStore,
  MessageLog,
  RosterPage,
  StoredMessage,
} from "../backends/types.js";
import { isValidUserId, requireUserId } from "../lib/auth.js";
import { errors, SwitchboardError } from "../lib/errors.js";
import type { IdPool } from "./id-pool.js";

export const SYSTEM_SENDER = "system";
export const CLIENT_MSG_ID_CHARS_MAX = 64;
const CLIENT_MSG_ID_PATTERN = /^[\x21-\x7e]{1,64}$/;
const GROUP_ID_PATTERN = /^g:[0-9]{1,20}$/;

/** Who may post to a group and who may add members (unset: everyone). */
type GroupPolicies = { postPolicy?: GroupPolicy; addPolicy?: GroupPolicy };

/**
 * The id of the group a caller creates with an idempotency key: the same for every retry, in every
 * process, so that the store's create-if-absent makes a retry find the first attempt's group. Minted
 * ids are snowflakes below 2^63 (19 digits at most); these have 20 digits and begin with 1
 * (10^19 plus the first 64 bits of SHA-256 of caller and key, reduced below 10^19), so the two
 * never meet.
 */
export function keyedGroupId(caller: string, key: string): string {
  const digest = createHash("sha256")
    .update(JSON.stringify([caller, key]))
    .digest();
  return `g:1${(digest.readBigUInt64BE(0) % 10n ** 19n).toString().padStart(19, "0")}`;
}
const DIRECT_SEPARATOR = "~"; // not allowed in user ids, so "dm:a~b" is unambiguous

export function directConversationId(a: string, b: string): string {
  return a <= b ? `dm:${a}${DIRECT_SEPARATOR}${b}` : `dm:${b}${DIRECT_SEPARATOR}${a}`;
}

/** The two members of a direct conversation id, or undefined if it is not one. */
export function directMembers(id: string): [string, string] | undefined {
  if (!id.startsWith("dm:")) return undefined;
  const parts = id.slice(3).split(DIRECT_SEPARATOR);
  // Only the canonical (sorted) form names the conversation; "dm:bob~alice" is not an alias.
  if (parts.length !== 2 || !parts.every(isValidUserId) || parts[0]! > parts[1]!) return undefined;
  return [parts[0]!, parts[1]!];
}

export function isValidConversationId(id: string): boolean {
  return GROUP_ID_PATTERN.test(id) || directMembers(id) !== undefined;
}

/** `id` if it is a well-formed conversation id; INVALID_CONVERSATION_ID otherwise (ids become storage keys). */
export function requireConversationId(id: string): string {
  if (!isValidConversationId(id))
    throw errors.invalid("INVALID_CONVERSATION_ID", "conversation_id is malformed");
  return id;
}

/** `id` if it is a group's id (`g:<digits>`); NOT_A_GROUP otherwise, a malformed id too (docs/protocol.md §2.1). */
export function requireGroupId(id: string): string {
  if (!GROUP_ID_PATTERN.test(id))
    throw errors.invalid("NOT_A_GROUP", `${JSON.stringify(id.slice(0, 130))} is not a group id`);
  return id;
}

/** Counts Unicode code points, stopping early once past `max` (bodies can be megabytes). */
export function exceedsChars(text: string, max: number): boolean {
  if (text.length <= max) return false;
  let count = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) i++;
    if (++count > max) return true;
  }
  return false;
}

export interface ConversationLimits {
  bodyCharsMax: number;
  membersMax: number;
  /** Groups with more members are on the pull model (ADR 0010). */
  pullThreshold: number;
  nameCharsMax: number;
}

export interface SendInput {
  sender: string;
  conversationId?: string;
  toUser?: string;
  clientMsgId: string;
  body: string;
  /** The client's `first_attempt` flag, as AppendHints.firstAttemptResendsAfterMs. */
  firstAttemptResendsAfterMs?: number;
  /**
   * Called right before the message takes its place in the log (after the awaits of the checks and
   * the id); a throw refuses the send there. The gateway's order check (gateway/send-gaps.ts).
   */
  beforeAppend?: () => void;
}

/** The refusals of a send for want of permission (see Conversations.storedBefore). */
const PERMISSION_REFUSALS: ReadonlySet<string> = new Set(["NOT_MEMBER", "POSTING_RESTRICTED"]);

const refusesPermission = (err: unknown): boolean =>
  err instanceof SwitchboardError && PERMISSION_REFUSALS.has(err.reason);

/** Direct conversations a process remembers as existing (see directId). */
const KNOWN_DIRECT_MAX = 200_000;

/**
 * Told of a group after each stored change to it (see Conversations.onGroupChange), and whom to tell:
 * all its members, or only these users.
 */
export type GroupChangeListener = (
  group: ConversationRecord,
  audience: "members" | readonly string[],
) => void;

/** Members in a page of a roster when the request names no number, and the most it may name. */
export const ROSTER_PAGE_DEFAULT = 1_000;
export const ROSTER_PAGE_MAX = 5_000;

/** The page size a roster request asked for (0: the default), within the bound. */
export function rosterPageLimit(requested: number): number {
  return Math.min(requested || ROSTER_PAGE_DEFAULT, ROSTER_PAGE_MAX);
}

export class Conversations {
  private readonly knownDirect = new Set<string>();
  private readonly groupListeners: GroupChangeListener[] = [];

  constructor(
    private readonly membership: MembershipStore,
    private readonly log: MessageLog,
    private readonly ids: IdPool,
    private readonly limits: ConversationLimits,
  ) {}

  /**
   * Calls `listener` after every stored change to a group — created, renamed, opened or closed, a
   * policy, a role, a member added, removed or gone — with the group as it is after the change. The
   * platform relays it to the members' devices (the client protocol's `conversation` event).
   *
   * Whom: all members, except for the comings and goings of a pull-model group (up to
   * groups.membersMax members, where telling everyone of every join would cost a read and a relay of
   * the whole member list per join): there only the users added hear of it.
   */
  onGroupChange(listener: GroupChangeListener): void {
    this.groupListeners.push(listener);
  }

  private changed(group: ConversationRecord, audience: "members" | readonly string[] = "members") {
    if (audience === "members" || audience.length > 0)
      for (const listener of this.groupListeners) listener(group, audience);
    return group;
  }

  /**
   * The audience of a change of membership: everyone, or in a pull-model group those who came. The
   * change that switches a group to pull is told to everyone once: the members it had follow its
   * messages by seq from then on (docs/protocol.md, "Delivery models"), so they must know.
   */
  private static comings(
    group: ConversationRecord,
    added: readonly string[],
    before: ConversationRecord["delivery"] = group.delivery,
  ): "members" | readonly string[] {
    return group.delivery === "pull" && before === "pull" ? added : "members";
  }

  /** Validates, authorises and durably appends a message. Resolves once durable. */
  async send(input: SendInput): Promise<AppendResult> {
    return (await this.issue(input)).appended;
  }

  /**
   * Validates and authorises, then issues the append and returns without waiting for durability.
   * Callers that chain `issue` calls keep their order (the log takes its position when append is called).
   */
  async issue(input: SendInput): Promise<{ appended: Promise<AppendResult> }> {
    this.checkFields(input);
    let conversationId: string;
    try {
      conversationId = await this.resolveTarget(input);
    } catch (err) {
      // Refused for want of permission: a resend of a message stored before (its answer lost, the
      // sender removed or the group made admins-only since) still gets the original (§3), and one
      // whose first transmission through this process still waits for its seq gets that one's
      // answer, waited for after this send's turn, not in it (its caller's later sends go on).
      if (!refusesPermission(err)) throw err;
      const awaiting = this.awaitingFirst(input);
      if (awaiting) {
        input.beforeAppend?.();
        return { appended: awaiting.then(({ message }) => ({ message, duplicate: true })) };
      }
      // A resend whose first transmission went through another process may still be in the log,
      // unsequenced, and be stored at its place there: looked up once the log is sequenced up to
      // now, which is waited for out of this send's turn too.
      if (this.waitsForSequencing(input)) {
        input.beforeAppend?.();
        return {
          appended: this.storedOnceSequenced(input).then((original) => {
            if (!original) throw err;
            return { message: original, duplicate: true };
          }),
        };
      }
      const original = await this.storedBefore(input);
      if (!original) throw err;
      input.beforeAppend?.();
      return { appended: Promise.resolve({ message: original, duplicate: true }) };
    }
    const messageId = await this.ids.next();
    const draft = {
      conversationId,
      messageId,
      sender: input.sender,
      clientMsgId: input.clientMsgId,
      body: input.body,
      createdAtMs: Date.now(),
    };
    const resendsAfterMs = input.firstAttemptResendsAfterMs;
    input.beforeAppend?.();
    const appended = this.log.append(
      draft,
      resendsAfterMs === undefined ? undefined : { firstAttemptResendsAfterMs: resendsAfterMs },
    );
    return { appended };
  }

  /** The checks of a send's own fields, before its target's: sender, client_msg_id, body. */
  private checkFields(input: SendInput): void {
    // The sender is the caller's own identity, except from the server APIs, which name one.
    if (input.sender !== SYSTEM_SENDER && !isValidUserId(input.sender))
      throw errors.invalid("INVALID_SENDER", "sender is not a valid user id");
    if (!CLIENT_MSG_ID_PATTERN.test(input.clientMsgId)) {
      throw errors.invalid(
        "INVALID_CLIENT_MSG_ID",
        `client_msg_id must be 1-${CLIENT_MSG_ID_CHARS_MAX} printable ASCII characters`,
      );
    }
    if (input.body.length === 0) throw errors.invalid("EMPTY_BODY", "body must not be empty");
    if (exceedsChars(input.body, this.limits.bodyCharsMax)) {
      throw errors.invalid("BODY_TOO_LARGE", `body exceeds ${this.limits.bodyCharsMax} characters`);
    }
  }

  /**
   * The message a send refused for want of permission repeats: what its sender stored in its
   * conversation under its client_msg_id within the dedupe window (MessageLog.appended), or
   * undefined. Only for a send that would pass the checks of its fields, and only for a
   * `conversationId` target, which names its conversation without creating one (a `toUser` send
   * is not refused for permission). The lookup (its dedupe entry, then its message) is paid only
   * by refused sends: a send let through is deduplicated by its append as before. The caller answers the message with
   * duplicate=true, or its refusal when there is none. Whoever may use the sender may learn what
   * it stored under a key: a refusal of the sender itself (the server API's SENDER_NOT_ALLOWED)
   * must never come here.
   */
  async storedBefore(input: SendInput): Promise<StoredMessage | undefined> {
    const conversationId = this.lookupTarget(input);
    return conversationId === undefined
      ? undefined
      : this.log.appended(conversationId, input.sender, input.clientMsgId);
  }

  /**
   * `storedBefore`, and where the log may hold a draft with the key unsequenced (distributed: a
   * first transmission through another process, stored after all at its place in the log, ahead of
   * the change that refused its resend) and none is stored yet, asked again once every draft
   * appended before the call is sequenced; throws SEQUENCE_TIMEOUT (retryable) if that takes longer
   * than the log's append timeout. A send marked as a first attempt has no earlier transmission.
   */
  async storedOnceSequenced(input: SendInput): Promise<StoredMessage | undefined> {
    const stored = await this.storedBefore(input);
    const conversationId = this.waitsForSequencing(input) ? this.lookupTarget(input) : undefined;
    if (stored || conversationId === undefined) return stored;
    await this.log.sequencedUpToNow?.(conversationId);
    return this.storedBefore(input);
  }

  private waitsForSequencing(input: SendInput): boolean {
    return this.log.sequencedUpToNow !== undefined && input.firstAttemptResendsAfterMs === undefined;
  }

  /** The conversation a refused send's key is looked up in: none for a send that fails its own checks. */
  private lookupTarget(input: SendInput): string | undefined {
    if (input.toUser !== undefined || input.conversationId === undefined) return undefined;
    try {
      this.checkFields(input);
      return requireConversationId(input.conversationId);
    } catch {
      return undefined;
    }
  }

  /** The answer a first transmission of this send's key, through this process, still waits for. */
  private awaitingFirst(input: SendInput): Promise<AppendResult> | undefined {
    const conversationId = this.lookupTarget(input);
    return conversationId === undefined
      ? undefined
      : this.log.awaiting?.(conversationId, input.sender, input.clientMsgId);
  }

  private async resolveTarget(input: SendInput): Promise<string> {
    if (input.toUser !== undefined) {
      if (!isValidUserId(input.toUser))
        throw errors.invalid("INVALID_USER_ID", "to_user is not a valid user id");
      if (input.sender === SYSTEM_SENDER)
        throw errors.invalid("INVALID_SENDER", "system messages need a conversation_id");
      return this.directId(input.sender, input.toUser);
    }
    const id = requireConversationId(input.conversationId ?? "");
    if (input.sender === SYSTEM_SENDER) {
      if (!(await this.membership.getConversation(id)))
        throw errors.notFound("CONVERSATION_NOT_FOUND", `no conversation ${id}`);
      return id;
    }
    const pair = directMembers(id);
    if (pair?.includes(input.sender)) return this.directId(pair[0], pair[1]);
    const access = await this.membership.memberOf(id, input.sender);
    if (!access)
      throw errors.denied("NOT_MEMBER", `${input.sender} is not a member of ${id} (or it does not exist)`);
    if (access.record.postPolicy === "admins" && access.role === "member")
      throw errors.denied("POSTING_RESTRICTED", `only admins post in ${id}`);
    return id;
  }

  /**
   * The id of the direct conversation of a and b, created if needed. A direct conversation's members
   * never change, so once it is known to exist this process remembers it and a 1:1 send costs no
   * storage read (bounded: the memory is dropped when full and refilled on use).
   */
  private async directId(a: string, b: string): Promise<string> {
    const id = directConversationId(a, b);
    if (this.knownDirect.has(id)) return id;
    await this.ensureDirect(a, b);
    if (this.knownDirect.size >= KNOWN_DIRECT_MAX) this.knownDirect.clear();
    this.knownDirect.add(id);
    return id;
  }

  async ensureDirect(a: string, b: string): Promise<ConversationRecord> {
    const id = directConversationId(a, b);
    const existing = await this.membership.getConversation(id);
    if (existing) return existing;
    const { record } = await this.membership.createConversation(
      { id, kind: "direct", name: "", owner: "", open: false, createdAtMs: Date.now() },
      [a, b],
    );
    return record;
  }

  async createGroup(
    owner: string,
    name: string,
    members: string[],
    open: boolean,
    policies: GroupPolicies = {},
  ): Promise<ConversationRecord> {
    return (await this.storeGroup(undefined, owner, name, members, open, policies)).record;
  }

  /**
   * createGroup under an id the caller chose (a keyed group, `keyedGroupId`): a second call with the
   * same id, from this process or any other, stores nothing and answers the group as it is now, with
   * `created` false. Either way the group is announced: as with a retried add, a retry whose first
   * attempt stored the group but was cut off before telling the members is the one that tells them.
   */
  createGroupWithId(
    id: string,
    owner: string,
    name: string,
    members: string[],
    open: boolean,
    policies: GroupPolicies = {},
  ): Promise<{ record: ConversationRecord; created: boolean }> {
    if (!GROUP_ID_PATTERN.test(id)) throw new Error(`createGroupWithId: ${id} is not a group id`);
    return this.storeGroup(id, owner, name, members, open, policies);
  }

  /** Checks a new group, then stores it under `id` (a new snowflake when none) and announces it. */
  private async storeGroup(
    id: string | undefined,
    owner: string,
    name: string,
    members: string[],
    open: boolean,
    policies: GroupPolicies,
  ): Promise<{ record: ConversationRecord; created: boolean }> {
    this.checkGroupName(name);
    const all = [...new Set([owner, ...members])];
    const bad = all.find((u) => !isValidUserId(u));
    if (bad !== undefined)
      throw errors.invalid("INVALID_USER_ID", `invalid member id ${JSON.stringify(bad.slice(0, 130))}`);
    if (all.length > this.limits.membersMax) {
      throw errors.exhausted("GROUP_FULL", `a group may have at most ${this.limits.membersMax} members`);
    }
    const { record, created } = await this.membership.createConversation(
      {
        id: id ?? `g:${await this.ids.next()}`,
        kind: "group",
        name,
        owner,
        open,
        createdAtMs: Date.now(),
        delivery: all.length > this.limits.pullThreshold ? "pull" : "push",
        ...policies,
      },
      all,
    );
    this.changed(record);
    return { record, created };
  }

  /** Renames a group, opens or closes it, or changes its policies: admins and the owner only. */
  async updateGroup(
    caller: string | undefined,
    id: string,
    change: GroupChange,
  ): Promise<ConversationRecord> {
    if (change.name !== undefined) this.checkGroupName(change.name);
    if (Object.values(change).every((v) => v === undefined))
      throw errors.invalid("NOTHING_TO_CHANGE", "the request changes nothing");
    await this.group(id);
    if (caller !== undefined) await this.requireAdmin(caller, id, "change the group");
    return this.changed(await this.membership.updateGroup(id, change));
  }

  private checkGroupName(name: string): void {
    if (name.length === 0 || exceedsChars(name, this.limits.nameCharsMax)) {
      throw errors.invalid(
        "INVALID_GROUP_NAME",
        `group name must have 1-${this.limits.nameCharsMax} characters`,
      );
    }
  }

  /** Adds members: any member, or only admins and the owner when the group's addPolicy says so. */
  async addMembers(caller: string | undefined, id: string, users: string[]): Promise<ConversationRecord> {
    const before = await this.group(id);
    if (caller !== undefined) {
      const { record, role } = await this.memberAccess(caller, id);
      if (record.addPolicy === "admins" && role === "member")
        throw errors.denied("NOT_ADMIN", `only admins add members to ${id}`);
    }
    checkUserIds(users);
    const group = await this.membership.addMembers(
      id,
      users,
      this.limits.membersMax,
      this.limits.pullThreshold,
    );
    // Announced even when everyone named was a member already: a retry of an add whose first attempt
    // failed after storing it (distributed backend: the announcement to the sequencers failed) adds
    // nobody, yet is the only one that tells the members.
    return this.changed(group, Conversations.comings(group, users, before.delivery));
  }

  /**
   * Removes members. Removing others takes an admin or the owner, and nobody removes the owner;
   * naming yourself is leaving. Users who are not members are ignored, as add ignores those who are.
   */
  async removeMembers(caller: string | undefined, id: string, users: string[]): Promise<ConversationRecord> {
    let record = await this.group(id);
    checkUserIds(users);
    const targets = new Set(users);
    if (caller !== undefined) {
      const access = await this.memberAccess(caller, id);
      record = access.record;
      const others = [...targets].filter((u) => u !== caller);
      if (others.length > 0 && access.role === "member")
        throw errors.denied("NOT_ADMIN", `only admins remove members from ${id}`);
      if (record.owner !== "" && others.includes(record.owner))
        throw errors.denied("OWNER_PROTECTED", `the owner of ${id} cannot be removed`);
      if (targets.has(caller)) this.checkLeave(caller, access);
    }
    let removed = false;
    for (const user of targets) {
      if (!(await this.membership.isMember(id, user))) continue;
      try {
        record = await this.membership.removeMember(id, user);
        removed = true;
      } catch (err) {
        // Removed meanwhile by another request (two admins, a retry beside its first attempt): not a
        // member any more, like those skipped above.
        if (!(err instanceof SwitchboardError && err.reason === "NOT_MEMBER")) throw err;
      }
    }
    // Announced again when nobody named was a member any more: a retry of a removal whose first
    // attempt stored it but failed to announce it (distributed: LOG_UNAVAILABLE) is the only one that
    // can still tell the sequencers, which would otherwise address messages to the removed user, and
    // the members (as a retried add does).
    if (!removed) await this.membership.reannounce?.(id);
    return this.changed(record, Conversations.comings(record, []));
  }

  async join(caller: string, id: string): Promise<ConversationRecord> {
    const group = await this.group(id);
    if (await this.membership.isMember(id, caller)) {
      // A retried join whose first attempt stored it but failed to announce it (see removeMembers):
      // the sequencers learn of the new member, and the members of it, only now. The group as it is
      // now (the record read above may be from before that attempt).
      await this.membership.reannounce?.(id);
      const current = await this.group(id);
      return this.changed(current, Conversations.comings(current, [caller]));
    }
    if (!group.open) throw errors.denied("GROUP_CLOSED", `group ${id} is not open; a member must add you`);
    let joined = await this.membership.addMembers(
      id,
      [caller],
      this.limits.membersMax,
      this.limits.pullThreshold,
    );
    // A group its last member left has nobody to run it: whoever joins it first owns it (otherwise
    // nobody could ever change it again). Two joining at once: the later is owner, the earlier admin.
    if (group.memberCount === 0 && joined.owner === "") {
      try {
        joined = await this.membership.setRole(id, caller, "owner");
      } catch (err) {
        // Left again meanwhile (a leave sent with the join): the join happened; the group stays
        // without an owner until the next one joins it.
        if (!(err instanceof SwitchboardError && err.reason === "USER_NOT_MEMBER")) throw err;
      }
    }
    return this.changed(joined, Conversations.comings(joined, [caller], group.delivery));
  }

  /** Leaves a group; the owner of a group with other members must hand it over first. */
  async leave(caller: string, id: string): Promise<ConversationRecord> {
    requireUserId(caller);
    await this.group(id);
    let access: { record: ConversationRecord; role: MemberRole };
    try {
      access = await this.memberAccess(caller, id);
    } catch (err) {
      // A retried leave whose first attempt stored it but failed to announce it (see removeMembers).
      if (err instanceof SwitchboardError && err.reason === "NOT_MEMBER")
        await this.membership.reannounce?.(id);
      throw err;
    }
    this.checkLeave(caller, access);
    const left = await this.membership.removeMember(id, caller);
    return this.changed(left, Conversations.comings(left, []));
  }

  private checkLeave(caller: string, access: { record: ConversationRecord; role: MemberRole }): void {
    if (access.role === "owner" && access.record.memberCount > 1) {
      throw errors.precondition(
        "OWNER_MUST_TRANSFER",
        `${caller} owns ${access.record.id}: make another member owner (setMemberRole) before leaving`,
      );
    }
  }

  /**
   * Gives a member a role: only the owner does, to another member. Making someone owner hands the
   * group over (the former owner stays on as an admin).
   */
  async setRole(
    caller: string | undefined,
    id: string,
    user: string,
    role: MemberRole,
  ): Promise<ConversationRecord> {
    await this.group(id);
    requireUserId(user);
    if (caller !== undefined) {
      const { role: callerRole } = await this.memberAccess(caller, id);
      if (callerRole !== "owner") throw errors.denied("NOT_OWNER", `only the owner of ${id} gives roles`);
      if (user === caller)
        throw errors.invalid("INVALID_ROLE_CHANGE", "the owner hands over by making another member owner");
    }
    return this.changed(await this.membership.setRole(id, user, role));
  }

  /** Members of a conversation, for a caller who must belong to it (undefined: trusted backend). */
  async members(caller: string | undefined, id: string): Promise<string[]> {
    await this.requireMember(caller, id);
    return this.membership.members(id);
  }

  /**
   * A page of the members and their roles, sorted by user id, for a caller who must belong to the
   * conversation.
   */
  async roster(
    caller: string | undefined,
    id: string,
    page: { after?: string; limit: number },
  ): Promise<RosterPage> {
    await this.requireMember(caller, id);
    return this.membership.roster(id, page);
  }

  private async requireMember(caller: string | undefined, id: string): Promise<void> {
    requireConversationId(id);
    if (caller !== undefined && !(await this.membership.isMember(id, caller))) {
      throw errors.denied("NOT_MEMBER", `${caller} is not a member of ${id} (or it does not exist)`);
    }
  }

  /** The conversation and the caller's role in it; NOT_MEMBER unless the caller belongs to it. */
  async memberAccess(caller: string, id: string): Promise<{ record: ConversationRecord; role: MemberRole }> {
    requireConversationId(id);
    const access = await this.membership.memberOf(id, caller);
    if (!access) throw errors.denied("NOT_MEMBER", `${caller} is not a member of ${id}`);
    return access;
  }

  private async requireAdmin(caller: string, id: string, what: string): Promise<void> {
    const { role } = await this.memberAccess(caller, id);
    if (role === "member") throw errors.denied("NOT_ADMIN", `only admins ${what} (${id})`);
  }

  private async group(id: string): Promise<ConversationRecord> {
    requireGroupId(id);
    const record = await this.membership.getConversation(id);
    if (!record) throw errors.notFound("GROUP_NOT_FOUND", `group ${id} does not exist`);
    return record;
  }
}

function checkUserIds(users: string[]): void {
  if (users.length === 0 || users.some((u) => !isValidUserId(u)))
    throw errors.invalid("INVALID_USER_ID", "members must be valid user ids");
}
