/**
 * Conversation rules shared by the gateway (client requests) and the router's gRPC API (backends):
 * who may send where, direct-conversation ids, group lifecycle, and the durable append of a send.
 */
import type { AppendResult, ConversationRecord, MembershipStore, MessageLog } from "../backends/types.js";
import { isValidUserId } from "../lib/auth.js";
import { errors } from "../lib/errors.js";
import type { IdPool } from "./id-pool.js";

export const SYSTEM_SENDER = "system";
export const CLIENT_MSG_ID_CHARS_MAX = 64;
const CLIENT_MSG_ID_PATTERN = /^[\x21-\x7e]{1,64}$/;
const GROUP_ID_PATTERN = /^g:[0-9]{1,20}$/;
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
  nameCharsMax: number;
}

export interface SendInput {
  sender: string;
  conversationId?: string;
  toUser?: string;
  clientMsgId: string;
  body: string;
}

/** Direct conversations a process remembers as existing (see directId). */
const KNOWN_DIRECT_MAX = 200_000;

export class Conversations {
  private readonly knownDirect = new Set<string>();

  constructor(
    private readonly membership: MembershipStore,
    private readonly log: MessageLog,
    private readonly ids: IdPool,
    private readonly limits: ConversationLimits,
  ) {}

  /** Validates, authorises and durably appends a message. Resolves once durable. */
  async send(input: SendInput): Promise<AppendResult> {
    return (await this.issue(input)).appended;
  }

  /**
   * Validates and authorises, then issues the append and returns without waiting for durability.
   * Callers that chain `issue` calls keep their order (the log takes its position when append is called).
   */
  async issue(input: SendInput): Promise<{ appended: Promise<AppendResult> }> {
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
    const conversationId = await this.resolveTarget(input);
    const messageId = await this.ids.next();
    const appended = this.log.append({
      conversationId,
      messageId,
      sender: input.sender,
      clientMsgId: input.clientMsgId,
      body: input.body,
      createdAtMs: Date.now(),
    });
    return { appended };
  }

  private async resolveTarget(input: SendInput): Promise<string> {
    if (input.toUser !== undefined) {
      if (!isValidUserId(input.toUser))
        throw errors.invalid("INVALID_USER_ID", "to_user is not a valid user id");
      if (input.sender === SYSTEM_SENDER)
        throw errors.invalid("INVALID_SENDER", "system messages need a conversation_id");
      return this.directId(input.sender, input.toUser);
    }
    const id = input.conversationId ?? "";
    if (!isValidConversationId(id))
      throw errors.invalid("INVALID_CONVERSATION_ID", "conversation_id is malformed");
    if (input.sender === SYSTEM_SENDER) {
      if (!(await this.membership.getConversation(id)))
        throw errors.notFound("CONVERSATION_NOT_FOUND", `no conversation ${id}`);
      return id;
    }
    const pair = directMembers(id);
    if (pair?.includes(input.sender)) return this.directId(pair[0], pair[1]);
    if (await this.membership.isMember(id, input.sender)) return id;
    throw errors.denied("NOT_MEMBER", `${input.sender} is not a member of ${id} (or it does not exist)`);
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
  ): Promise<ConversationRecord> {
    this.checkGroupName(name);
    const all = [...new Set([owner, ...members])];
    const bad = all.find((u) => !isValidUserId(u));
    if (bad !== undefined)
      throw errors.invalid("INVALID_USER_ID", `invalid member id ${JSON.stringify(bad.slice(0, 130))}`);
    if (all.length > this.limits.membersMax) {
      throw errors.exhausted("GROUP_FULL", `a group may have at most ${this.limits.membersMax} members`);
    }
    const id = `g:${await this.ids.next()}`;
    const { record } = await this.membership.createConversation(
      { id, kind: "group", name, owner, open, createdAtMs: Date.now() },
      all,
    );
    return record;
  }

  /** Renames a group and/or opens or closes it (a trusted backend's change). */
  async updateGroup(id: string, change: { name?: string; open?: boolean }): Promise<ConversationRecord> {
    if (change.name !== undefined) this.checkGroupName(change.name);
    await this.group(id);
    return this.membership.updateGroup(id, change);
  }

  private checkGroupName(name: string): void {
    if (name.length === 0 || exceedsChars(name, this.limits.nameCharsMax)) {
      throw errors.invalid(
        "INVALID_GROUP_NAME",
        `group name must have 1-${this.limits.nameCharsMax} characters`,
      );
    }
  }

  /** Adds members on behalf of `caller` (undefined: a trusted backend). */
  async addMembers(caller: string | undefined, id: string, users: string[]): Promise<ConversationRecord> {
    await this.group(id);
    if (caller !== undefined && !(await this.membership.isMember(id, caller))) {
      throw errors.denied("NOT_MEMBER", `${caller} is not a member of ${id}`);
    }
    const bad = users.find((u) => !isValidUserId(u));
    if (bad !== undefined || users.length === 0)
      throw errors.invalid("INVALID_USER_ID", "members must be valid user ids");
    return this.membership.addMembers(id, users, this.limits.membersMax);
  }

  /**
   * Any member may remove others, as any member may add them (there are no owner privileges);
   * users who are not members are ignored, as add ignores those who already are.
   */
  async removeMembers(caller: string, id: string, users: string[]): Promise<ConversationRecord> {
    let record = await this.group(id);
    if (!(await this.membership.isMember(id, caller))) {
      throw errors.denied("NOT_MEMBER", `${caller} is not a member of ${id}`);
    }
    const bad = users.find((u) => !isValidUserId(u));
    if (bad !== undefined || users.length === 0)
      throw errors.invalid("INVALID_USER_ID", "members must be valid user ids");
    for (const user of new Set(users)) {
      if (await this.membership.isMember(id, user)) record = await this.membership.removeMember(id, user);
    }
    return record;
  }

  async join(caller: string, id: string): Promise<ConversationRecord> {
    const group = await this.group(id);
    if (await this.membership.isMember(id, caller)) return group;
    if (!group.open) throw errors.denied("GROUP_CLOSED", `group ${id} is not open; a member must add you`);
    return this.membership.addMembers(id, [caller], this.limits.membersMax);
  }

  async leave(caller: string, id: string): Promise<ConversationRecord> {
    await this.group(id);
    return this.membership.removeMember(id, caller);
  }

  /** Members of a conversation, for a caller who must belong to it (undefined: trusted backend). */
  async members(caller: string | undefined, id: string): Promise<string[]> {
    if (!isValidConversationId(id))
      throw errors.invalid("INVALID_CONVERSATION_ID", "conversation_id is malformed");
    if (caller !== undefined && !(await this.membership.isMember(id, caller))) {
      throw errors.denied("NOT_MEMBER", `${caller} is not a member of ${id} (or it does not exist)`);
    }
    return this.membership.members(id);
  }

  private async group(id: string): Promise<ConversationRecord> {
    if (!GROUP_ID_PATTERN.test(id)) throw errors.invalid("NOT_A_GROUP", `${id} is not a group id`);
    const record = await this.membership.getConversation(id);
    if (!record) throw errors.notFound("GROUP_NOT_FOUND", `group ${id} does not exist`);
    return record;
  }
}
