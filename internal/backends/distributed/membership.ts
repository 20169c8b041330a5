/**
 * The distributed backend's MembershipStore: Cassandra's, plus an announcement in the message log
 * after every change (ADR 0002). The sequencer keeps member lists in memory and addresses each message
 * to them; the announcement, in the drafts partition of the conversation, is what keeps that cache
 * true: a change is acknowledged to its caller only after the announcement is in Kafka, so every
 * message sent after it is addressed to the new list. If the announcement fails the change is stored
 * but the call fails (retryable: a retried add, remove or leave is a no-op that announces again; see
 * Conversations.removeMembers and leave).
 */
import type {
  ConversationRecord,
  GroupChange,
  MemberRole,
  MembershipStore,
  NewConversation,
  RosterPage,
} from "../types.js";

export class AnnouncingMembershipStore implements MembershipStore {
  constructor(
    private readonly store: MembershipStore,
    private readonly announce: (conversationId: string) => Promise<void>,
  ) {}

  async createConversation(
    record: NewConversation,
    members: string[],
  ): Promise<{ record: ConversationRecord; created: boolean }> {
    const result = await this.store.createConversation(record, members);
    await this.announce(record.id);
    return result;
  }

  async addMembers(
    id: string,
    users: string[],
    membersMax: number,
    pullAbove?: number,
  ): Promise<ConversationRecord> {
    const record = await this.store.addMembers(id, users, membersMax, pullAbove);
    await this.announce(id);
    return record;
  }

  async removeMember(id: string, user: string): Promise<ConversationRecord> {
    const record = await this.store.removeMember(id, user);
    await this.announce(id);
    return record;
  }

  reannounce(id: string): Promise<void> {
    return this.announce(id);
  }

  /** Members are untouched: the sequencer's member lists need no announcement. */
  updateGroup(id: string, change: GroupChange): Promise<ConversationRecord> {
    return this.store.updateGroup(id, change);
  }

  /** Roles do not change who gets a message: no announcement. */
  setRole(id: string, user: string, role: MemberRole): Promise<ConversationRecord> {
    return this.store.setRole(id, user, role);
  }

  memberOf(id: string, user: string): Promise<{ record: ConversationRecord; role: MemberRole } | undefined> {
    return this.store.memberOf(id, user);
  }

  roster(id: string, page: { after?: string; limit: number }): Promise<RosterPage> {
    return this.store.roster(id, page);
  }

  getConversation(id: string): Promise<ConversationRecord | undefined> {
    return this.store.getConversation(id);
  }

  isMember(id: string, user: string): Promise<boolean> {
    return this.store.isMember(id, user);
  }

  membersAmong(id: string, users: readonly string[]): Promise<Set<string>> {
    return this.store.membersAmong(id, users);
  }

  members(id: string): Promise<string[]> {
    return this.store.members(id);
  }

  conversationsOf(user: string, limit: number): Promise<ConversationRecord[]> {
    return this.store.conversationsOf(user, limit);
  }

  close(): Promise<void> {
    return this.store.close();
  }
}
