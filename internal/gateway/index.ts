export { CloseCode, RECONNECT_CODES } from "./close-codes.js";
export { decodeClientFrame, encodeServerFrame, SUBPROTOCOL_BINARY, SUBPROTOCOL_JSON } from "./codec.js";
export { Gateway, type GatewayOptions, type GatewayStores } from "./gateway.js";
export { TokenBucket } from "./rate-limit.js";
