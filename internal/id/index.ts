export { HIGH_WATER_LEASE_MS, HighWaterMark, type HighWaterStore } from "./high-water.js";
export { ALLOCATE_COUNT_MAX, createIdService } from "./service.js";
export { ClockMovedBackwardsError, decodeSnowflake, EPOCH_MS, Snowflake, WORKER_MAX } from "./snowflake.js";
