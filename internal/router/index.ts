export {
  CLIENT_MSG_ID_CHARS_MAX,
  Conversations,
  directConversationId,
  directMembers,
  exceedsChars,
  IdPool,
  isValidConversationId,
  SYSTEM_SENDER,
} from "./conversations.js";
export { Router, toWireMessage } from "./router.js";
export { routerServiceImpl, toWireConversation } from "./service.js";
