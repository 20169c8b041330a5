/** Role push: the device registry and notifications of users with no device online. */
import { PushService } from "../../gen/switchboard/push/v1/push_pb.js";
import { addService } from "../lib/rpc.js";
import type { RoleStarter } from "../process/runtime.js";
import { providersFromConfig } from "../push/from-config.js";
import { pushFromConfig, pushServiceImpl } from "../push/index.js";
import { openRoleStorage, requireDistributed } from "./shared.js";

export const startPush: RoleStarter = async (ctx) => {
  const { config, log, metrics } = ctx;
  requireDistributed(config, "push", log);
  // The providers' files and settings before storage, whose retry loop would wait on them for ever.
  providersFromConfig(config.push);
  const backends = await openRoleStorage(ctx, "push", { sequencer: false, appends: false });
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
