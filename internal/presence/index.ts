export { Presence, presenceServiceImpl, WATCHES_PER_SESSION_MAX } from "./service.js";
