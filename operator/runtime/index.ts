export { Informer, type InformerEvent, type InformerOptions, type WatchFactory } from "./informer.js";
export { type LeaderElectionOptions, LeaderElector } from "./leader-election.js";
export {
  createOperatorRuntimeMetrics,
  type OperatorRuntimeMetrics,
  recordChatClusterReady,
} from "./metrics.js";
export { specOrMetadataChanged } from "./predicates.js";
export { type ReconcileResult, WorkQueue, type WorkQueueOptions } from "./workqueue.js";
