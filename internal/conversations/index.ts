export {
  CLIENT_MSG_ID_CHARS_MAX,
  Conversations,
  directConversationId,
  directMembers,
  exceedsChars,
  isValidConversationId,
  keyedGroupId,
  requireConversationId,
  requireGroupId,
  rosterPageLimit,
  SYSTEM_SENDER,
} from "./conversations.js";
export { IdPool } from "./id-pool.js";
export {
  groupChangeFromWire,
  policiesFromWire,
  roleFromWire,
  toWireConversation,
  toWireMember,
  toWireMessage,
} from "./wire.js";
