/** Role push: the device registry and notifications of users with no device online. */
import { PushService } from "../../gen/switchboard/push/v1/push_pb.js";
import { addService } from "../lib/rpc.js";
import { openDistributed } from "../process/backends.js";
import type { RoleStarter } from "../process/runtime.js";
import { providersFromConfig } from "../push/from-config.js";
import { pushFromConfig, pushServiceImpl } from "../push/index.js";
import { requireDistributed } from "./shared.js";

export const startPush: RoleStarter = async (ctx) => {
  const { config, log, metrics } = ctx;
  requireDistributed(config, "push", log);
  // The providers' files and settings before storage, whose retry loop would wait on them for ever.
  providersFromConfig(config.push);
  const backends = ctx.own(
    await ctx.retry("open storage", () =>
      openDistributed(config, log, ctx.metrics, {
        sequencer: false,
        appends: false,
        provision: false,
        role: "push",
        httpPort: ctx.httpPort,
      }),
    ),
  );
  ctx.readiness(() => backends.unreachable());
  const push = ctx.own(
    pushFromConfig(
      config,
      backends.devices,
      backends.settings,
      { receipts: backends.receipts, queue: backends.pushQueue, deadLetters: backends.pushDeadLetters },
      log,
      metrics,
    ),
  );
  addService(ctx.grpc!, PushService, pushServiceImpl(push, backends.devices));
  // The jobs of the push-jobs partitions this process owns, left from before and new.
  await push.consumeQueue();
  return {};
};
