/**
 * Role sequencer: consumes the drafts topic, assigns each conversation's seqs under the fence of
 * ADR 0002, stores the messages and publishes them to their recipients' inbox partitions (and
 * answers senders on the replies topic). No gRPC service: only /healthz, /readyz and /metrics.
 */
import type { RoleStarter } from "../process/runtime.js";
import { openRoleStorage, requireDistributed } from "./shared.js";

export const startSequencer: RoleStarter = async (ctx) => {
  requireDistributed(ctx.config, "sequencer", ctx.log);
  // The sequencer runs within the storage it opens (its drafts consumer: `sequencer: true`).
  await openRoleStorage(ctx, "sequencer", { sequencer: true, appends: false });
  return {};
};
