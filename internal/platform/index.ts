export { distributedOptions, type RunningPlatform, startPlatform } from "./platform.js";
