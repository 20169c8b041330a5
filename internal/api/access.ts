/**
 * What one server-API caller may do beyond its method permissions (ADR 0007 decision 3): which
 * senders it may use and which conversations it may touch. The guard has already checked the
 * method; these checks need the request (and, for `member` grants, the membership store).
 */
import type { MembershipStore } from "../backends/types.js";
import { directMembers } from "../conversations/index.js";
import { botIdentity, type ClientGrant, type Policy } from "../grpc-auth/policy.js";
import { errors } from "../lib/errors.js";

export interface Access {
  /** Who is calling, for error messages and logs. */
  readonly caller: string;
  /** The sender a request names (or the caller's default); throws SENDER_NOT_ALLOWED otherwise. */
  sender(requested: string): string;
  /** Throws CONVERSATION_NOT_ALLOWED unless the caller may touch `conversationId`. */
  conversation(conversationId: string): Promise<void>;
  /** Whether the caller may see `conversationId` (the event stream filters by it). */
  sees(conversationId: string): Promise<boolean>;
  /**
   * Throws CONVERSATION_NOT_ALLOWED unless the group CreateGroup would make (`groupId`, when a key
   * names it beforehand) is one the caller may touch afterwards: a group its grant does not cover
   * could be neither managed nor retried by it.
   */
  creates(groupId: string | undefined, owner: string, members: readonly string[]): void;
}

/**
 * Anyone who reaches an unauthenticated port (only allowed in dev mode) may do everything; without a
 * sender named, it sends as "system".
 */
const UNRESTRICTED: Access = {
  caller: "anonymous",
  sender: (requested) => requested || "system",
  conversation: async () => undefined,
  sees: async () => true,
  creates: () => undefined,
};

/** The access of `principal` under `policy`; `membership` answers `member` grants. */
export function accessOf(principal: string | undefined, policy: Policy, membership: MembershipStore): Access {
  if (principal === undefined) return UNRESTRICTED;
  const name = principal.startsWith("client:") ? principal.slice("client:".length) : undefined;
  const grant = name === undefined ? undefined : policy.clients.get(name);
  // The guard admits only clients with a permission of the method, so a grant exists; a missing one
  // (policy re-read between the guard and here) is denied everything.
  if (name === undefined || grant === undefined)
    return {
      caller: principal,
      sender: () => {
        throw errors.denied("SENDER_NOT_ALLOWED", `${principal} has no server-API grant`);
      },
      conversation: async (id) => {
        throw errors.denied("CONVERSATION_NOT_ALLOWED", `${principal} may not touch ${id}`);
      },
      sees: async () => false,
      creates: () => {
        throw errors.denied("CONVERSATION_NOT_ALLOWED", `${principal} has no server-API grant`);
      },
    };
  return clientAccess(principal, name, grant, membership);
}

function clientAccess(
  principal: string,
  name: string,
  grant: ClientGrant,
  membership: MembershipStore,
): Access {
  const sees = async (id: string): Promise<boolean> => {
    const c = grant.conversations;
    if (c === "all") return true;
    // A direct conversation of one of its senders is its own, whatever else the grant names.
    const pair = directMembers(id);
    if (pair?.some((u) => grant.sendAs.has(u))) return true;
    if (c !== "member") return c.has(id);
    if (pair) return false;
    for (const sender of grant.sendAs) if (await membership.isMember(id, sender)) return true;
    return false;
  };
  // Unnamed, a client sends as its own bot identity, or as its only granted sender.
  const own = botIdentity(name);
  const defaultSender = grant.sendAs.has(own) || grant.sendAs.size !== 1 ? own : [...grant.sendAs][0]!;
  return {
    caller: principal,
    sender(requested) {
      const sender = requested || defaultSender;
      if (!grant.sendAs.has(sender))
        throw errors.denied(
          "SENDER_NOT_ALLOWED",
          `${principal} may not send as ${JSON.stringify(sender.slice(0, 130))} (it may send as ${[...grant.sendAs].join(", ")})`,
        );
      return sender;
    },
    async conversation(id) {
      if (!(await sees(id)))
        throw errors.denied(
          "CONVERSATION_NOT_ALLOWED",
          grant.conversations === "member"
            ? `${principal} may only touch conversations one of its senders (${[...grant.sendAs].join(", ")}) belongs to; ${id} is not one`
            : `${principal} was not granted ${id}`,
        );
    },
    sees,
    creates(groupId, owner, members) {
      const c = grant.conversations;
      if (c === "all") return;
      if (c === "member") {
        if (grant.sendAs.has(owner) || members.some((m) => grant.sendAs.has(m))) return;
        throw errors.denied(
          "CONVERSATION_NOT_ALLOWED",
          `${principal} may only touch conversations one of its senders (${[...grant.sendAs].join(", ")}) belongs to: make one of them the owner or a member of the group, else it could not manage the group it creates`,
        );
      }
      if (groupId !== undefined && c.has(groupId)) return;
      throw errors.denied(
        "CONVERSATION_NOT_ALLOWED",
        groupId === undefined
          ? `${principal} was granted a list of conversations, which a group created without an idempotency_key (a new id) is not in`
          : `${principal} was not granted ${groupId}, the group this idempotency_key names`,
      );
    },
  };
}
