export { type Access, accessOf } from "./access.js";
export { type ChatServiceDeps, chatServiceImpl, USERS_PER_CALL_MAX } from "./chat-service.js";
