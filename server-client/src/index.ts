/**
 * @switchboard/server-client: Switchboard's server API for backend services (docs/server-api.md).
 */

export * from "../../gen/switchboard/api/v1/chat_pb.js";
export type { Conversation, Message, PresenceStatus } from "../../gen/switchboard/common/v1/common_pb.js";
export { type Device, Provider } from "../../gen/switchboard/push/v1/push_pb.js";
export {
  type ChatClient,
  type ChatClientOptions,
  createChatClient,
  reasonOf,
} from "./client.js";
export { type Credential, credentialFile } from "./credentials.js";
export { type ConsumeOptions, consumeEvents } from "./events.js";
