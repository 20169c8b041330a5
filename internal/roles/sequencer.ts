/**
 * Role sequencer: consumes the drafts topic, assigns each conversation's seqs under the fence of
 * ADR 0002, stores the messages and publishes them to their recipients' inbox partitions (and
 * answers senders on the replies topic). No gRPC service: only /healthz, /readyz and /metrics.
 */
import { openDistributed } from "../process/backends.js";
import type { RoleStarter } from "../process/runtime.js";
import { requireDistributed } from "./shared.js";

export const startSequencer: RoleStarter = async (ctx) => {
  requireDistributed(ctx.config, "sequencer", ctx.log);
  const backends = ctx.own(
    await ctx.retry("open storage", () =>
      openDistributed(ctx.config, ctx.log, ctx.metrics, {
        sequencer: true,
        appends: false,
        provision: false,
        role: "sequencer",
        httpPort: ctx.httpPort,
      }),
    ),
  );
  ctx.readiness(() => backends.unreachable());
  return {};
};
