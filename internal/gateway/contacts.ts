/** Who may watch whose presence: users who share a conversation (docs/protocol.md §4). */
import type { ConversationRecord, MembershipStore } from "../backends/types.js";
import { directConversationId } from "../conversations/index.js";

/**
 * The first of `others` who shares no conversation with `user`: neither their direct conversation
 * nor one of `user`'s `groupsScanned` most recent conversations. The user's conversations are listed
 * once per call (not once per other user), and only if a direct conversation does not settle it.
 */
export async function firstStranger(
  membership: Pick<MembershipStore, "isMember" | "conversationsOf">,
  user: string,
  others: readonly string[],
  groupsScanned: number,
): Promise<string | undefined> {
  let groups: ConversationRecord[] | undefined;
  for (const other of others) {
    if (await membership.isMember(directConversationId(user, other), other)) continue;
    groups ??= (await membership.conversationsOf(user, groupsScanned)).filter((c) => c.kind === "group");
    let shared = false;
    for (const c of groups) {
      if (await membership.isMember(c.id, other)) {
        shared = true;
        break;
      }
    }
    if (!shared) return other;
  }
  return undefined;
}
