/** Stored records as the wire's protobuf shapes (common.v1 Message, Conversation, Member) and back. */
import {
  ConversationKind,
  DeliveryModel,
  GroupPolicy,
  MemberRole,
} from "../../gen/switchboard/common/v1/common_pb.js";
import type {
  ConversationRecord,
  GroupChange,
  GroupPolicy as GroupPolicyName,
  MemberEntry,
  MemberRole as MemberRoleName,
  StoredMessage,
} from "../backends/types.js";
import { errors } from "../lib/errors.js";

export function toWireMessage(m: StoredMessage) {
  return {
    conversationId: m.conversationId,
    seq: BigInt(m.seq),
    messageId: m.messageId,
    sender: m.sender,
    clientMsgId: m.clientMsgId,
    body: m.body,
    createdAtMs: BigInt(m.createdAtMs),
  };
}

const policyToWire = (p: GroupPolicyName) => (p === "admins" ? GroupPolicy.ADMINS : GroupPolicy.EVERYONE);

export function toWireConversation(c: ConversationRecord, lastSeq = 0, readSeq = 0) {
  return {
    id: c.id,
    kind: c.kind === "group" ? ConversationKind.GROUP : ConversationKind.DIRECT,
    name: c.name,
    owner: c.owner,
    memberCount: c.memberCount,
    open: c.open,
    lastSeq: BigInt(lastSeq),
    createdAtMs: BigInt(c.createdAtMs),
    readSeq: BigInt(readSeq),
    postPolicy: policyToWire(c.postPolicy),
    addPolicy: policyToWire(c.addPolicy),
    delivery: c.delivery === "pull" ? DeliveryModel.PULL : DeliveryModel.PUSH,
    version: BigInt(c.version),
  };
}

const ROLE_TO_WIRE: Record<MemberRoleName, MemberRole> = {
  owner: MemberRole.OWNER,
  admin: MemberRole.ADMIN,
  member: MemberRole.MEMBER,
};

export const toWireMember = (m: MemberEntry) => ({ userId: m.userId, role: ROLE_TO_WIRE[m.role] });

/** A policy of a request: unset is `undefined` (the default, or unchanged). */
export function policyFromWire(p: GroupPolicy): GroupPolicyName | undefined {
  switch (p) {
    case GroupPolicy.UNSPECIFIED:
      return undefined;
    case GroupPolicy.EVERYONE:
      return "everyone";
    case GroupPolicy.ADMINS:
      return "admins";
    default:
      throw errors.invalid("INVALID_POLICY", `unknown group policy ${p}`);
  }
}

/** Both policies of a request, leaving out the unset ones. */
export function policiesFromWire(req: { postPolicy: GroupPolicy; addPolicy: GroupPolicy }): {
  postPolicy?: GroupPolicyName;
  addPolicy?: GroupPolicyName;
} {
  const postPolicy = policyFromWire(req.postPolicy);
  const addPolicy = policyFromWire(req.addPolicy);
  return { ...(postPolicy ? { postPolicy } : {}), ...(addPolicy ? { addPolicy } : {}) };
}

/** An updateGroup request (client or server API) as a change: only what it sets. */
export function groupChangeFromWire(req: {
  name?: string | undefined;
  open?: boolean | undefined;
  postPolicy: GroupPolicy;
  addPolicy: GroupPolicy;
}): GroupChange {
  return {
    ...(req.name !== undefined ? { name: req.name } : {}),
    ...(req.open !== undefined ? { open: req.open } : {}),
    ...policiesFromWire(req),
  };
}

export function roleFromWire(r: MemberRole): MemberRoleName {
  switch (r) {
    case MemberRole.OWNER:
      return "owner";
    case MemberRole.ADMIN:
      return "admin";
    case MemberRole.MEMBER:
      return "member";
    default:
      throw errors.invalid("INVALID_ROLE", `role must be MEMBER_ROLE_MEMBER, _ADMIN or _OWNER, not ${r}`);
  }
}
