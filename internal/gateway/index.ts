export { CloseCode, RECONNECT_CODES } from "./close-codes.js";
export { decodeClientFrame, encodeServerFrame, SUBPROTOCOL_BINARY, SUBPROTOCOL_JSON } from "./codec.js";
export { Gateway, type GatewayOptions } from "./gateway.js";
export { TokenBucket } from "./rate-limit.js";
export type { GatewayStores } from "./services.js";
