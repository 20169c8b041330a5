export { DEVICES_PER_USER_MAX, type Notification, Push, pushServiceImpl } from "./service.js";
