/**
 * @switchboard/sdk: the TypeScript client for Switchboard's WebSocket gateway (browsers and Node).
 *
 *   const client = new SwitchboardClient({ url, token: getToken, checkpoint: load() });
 *   client.on("message", ({ message }) => show(message));
 *   client.on("checkpoint", (checkpoint) => save(checkpoint)); // after the message listeners ran
 *   await client.connect();
 *   await client.send({ toUser: "bob" }, "hi");
 */
export { type BackoffOptions, backoffDelay, DEFAULT_BACKOFF } from "./backoff.js";
export {
  type ClientState,
  type CreateGroupInput,
  type GroupChangeInput,
  type HistoryQuery,
  type PushProviderName,
  type SendOptions,
  type SendTarget,
  SwitchboardClient,
  type SwitchboardClientEvents,
  type SwitchboardClientOptions,
  type TokenSource,
  type UrlSource,
} from "./client.js";
export {
  CLOSE_CODES,
  CloseCode,
  type CloseCodeInfo,
  classifyCloseCode,
  type KnownCloseCode,
} from "./close-codes.js";
export { type Listener, TypedEmitter } from "./emitter.js";
export { Code, LocalReason, SwitchboardClientError } from "./errors.js";
export { randomId } from "./ids.js";
export { DEFAULT_SEND_MAX_AGE_MS } from "./sends.js";
export { unverifiedClaims } from "./token-claims.js";
export { type AuthMode, type Encoding, SUBPROTOCOLS, type WebSocketConstructor } from "./transport.js";
export type {
  ChatMessage,
  Checkpoint,
  Conversation,
  ConversationKindName,
  DisconnectInfo,
  DoNotDisturbWindow,
  GroupPolicyName,
  HistoryPage,
  IncomingMessage,
  Limits,
  MemberList,
  MemberReceipts,
  MemberRoleName,
  NotificationSettings,
  PresenceStatus,
  ReceiptInfo,
  ReceiptKindName,
  SendAck,
  SyncedInfo,
  TypingInfo,
  WelcomeInfo,
} from "./types.js";
