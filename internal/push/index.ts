export { pushFromConfig } from "./from-config.js";
export {
  DEVICES_PER_USER_MAX,
  type Notification,
  PRIVATE_BODY,
  type ProviderSet,
  Push,
  pushServiceImpl,
} from "./service.js";
